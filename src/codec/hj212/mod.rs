//! HJ 212 (污染物在线监控（监测）系统数据传输标准) packets: framing, CRC, data segment, CP data area,
//! the data packets built from aggregates (2011, 2051, 2061, 2031), responses, and a strict parser.
//!
//! A packet on the wire is
//!
//! ```text
//! "##" + LLLL + <data segment> + CCCC + "\r\n"
//! data segment = QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&<data area>&&
//! ```
//!
//! where `LLLL` is the byte length of the data segment (4 decimal digits) and `CCCC` the
//! standard's CRC ([`crc16`], Appendix A: not CRC-16/MODBUS) of the data segment only, 4 upper-case
//! hex digits.
//!
//! Invariants:
//! - Everything here is pure: no I/O, no clocks; timestamps come in as arguments and are printed
//!   in the station's local time (`utc_offset_min`, +480 for China).
//! - Every packet produced has a data segment of at most `limits.max_data_segment` bytes and a data
//!   area of at most `limits.max_cp`; a longer data area is split over several packets with the
//!   same QN, Flag bit D set and `PNUM`/`PNO`, each repeating `DataTime`.
//! - The parser accepts exactly what the encoder produces and what the standard's worked examples
//!   show; each rejection carries the QnRtn a platform expects ([`ParseError::qn_rtn`]).
//! - Code tables (version bits, command codes, factor codes, flag letters, limits) are data
//!   ([`Table`]), so a later edition is a new table, not new code.
//!
//! Split by job: `frame` (CRC, framing, the CP data area, the packet, the station header), `time`
//! (the local-time texts), `data` (the packets built from aggregates and readings), `request` (the
//! platform's requests and the responses to them), `parse` (the strict parser) and `table`.

mod data;
mod frame;
mod parse;
mod request;
mod time;

pub use crate::config::hj212_table::{
    Commands, Factor, Flags, Limits, Role, Station, Table, TableError,
};
pub use data::{
    RtdValue, encode_realtime, encode_record, encode_window, encode_window_qn, period_command,
    window_flag,
};
pub use frame::{Cp, EncodeError, Packet, crc16, frame};
pub use parse::{ParseError, ParseOptions, Scan, parse, parse_segment, scan};
pub use request::{
    HistoryRequest, data_response, execution_result, history_request, qn_rtn, request_response,
    system_time,
};
pub use time::{data_time_text, parse_time_text, qn_text};
