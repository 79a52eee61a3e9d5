//! The platform's requests and the answers to them: history requests (2051/2061/2031 with
//! `BeginTime`/`EndTime`), the time answer (1011), and the responses 9014, 9011 and 9012 with the
//! standard's QnRtn codes.

use super::frame::{Cp, EncodeError, Packet};
use super::parse::ParseError;
use super::time::{data_time_text, parse_time_text};
use crate::config::hj212_table::Station;
use crate::config::hj212_table::Table;
use crate::model::{Period, Timestamp};

/// A platform's request for stored data (2051/2061/2031 with `BeginTime` and `EndTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The period asked for, from the command code.
    pub period: Period,
    /// `BeginTime`: the first window start wanted (inclusive).
    pub begin: Timestamp,
    /// `EndTime`: the last window start wanted (inclusive).
    pub end: Timestamp,
}

/// The history request in a packet: `Ok(None)` when its command is not 2051/2061/2031 or it has
/// no `BeginTime` (an upload, not a request); an error (QnRtn 2) when a time is malformed or the
/// range is reversed.
pub fn history_request(
    table: &Table,
    packet: &Packet,
    utc_offset_min: i32,
) -> Result<Option<HistoryRequest>, ParseError> {
    let period = match packet.cn {
        cn if cn == table.commands.minute => Period::Minute,
        cn if cn == table.commands.hourly => Period::Hour,
        cn if cn == table.commands.daily => Period::Day,
        _ => return Ok(None),
    };
    let Some(begin) = packet.cp.get("BeginTime") else {
        return Ok(None);
    };
    let time = |key: &str, text: Option<&str>| {
        text.and_then(|t| parse_time_text(t, utc_offset_min))
            .ok_or_else(|| ParseError::DataArea(format!("{key} missing or not YYYYMMDDhhmmss")))
    };
    let begin = time("BeginTime", Some(begin))?;
    let end = time("EndTime", packet.cp.get("EndTime"))?;
    if end < begin {
        return Err(ParseError::DataArea("EndTime before BeginTime".into()));
    }
    Ok(Some(HistoryRequest { period, begin, end }))
}

/// The answer to a time request (1011): `SystemTime` in local time, the request's QN, no
/// acknowledgement asked.
pub fn system_time(
    table: &Table,
    station: &Station,
    qn: &str,
    now: Timestamp,
) -> Result<String, EncodeError> {
    station.check(table)?;
    Packet {
        qn: Some(qn.to_owned()),
        st: station.st,
        cn: table.commands.get_time,
        pw: station.pw.clone(),
        mn: station.mn.clone(),
        flag: table.flag(false, false),
        split: None,
        cp: Cp(vec![vec![(
            "SystemTime".to_owned(),
            data_time_text(now, station.utc_offset_min),
        )]]),
    }
    .encode()
}

/// The data response (9014) to an uploaded data packet: ST 91, same QN, PW and MN, empty data
/// area, Flag with only the version bits.
pub fn data_response(table: &Table, to: &Packet) -> Result<String, EncodeError> {
    response(table, to, table.commands.data_response, Cp::default())
}

/// The request response (9011) with a QnRtn.
pub fn request_response(table: &Table, to: &Packet, qn_rtn: u16) -> Result<String, EncodeError> {
    let cp = Cp(vec![vec![("QnRtn".to_owned(), qn_rtn.to_string())]]);
    response(table, to, table.commands.request_response, cp)
}

/// The execution result (9012) with an ExeRtn.
pub fn execution_result(table: &Table, to: &Packet, exe_rtn: u16) -> Result<String, EncodeError> {
    let cp = Cp(vec![vec![("ExeRtn".to_owned(), exe_rtn.to_string())]]);
    response(table, to, table.commands.execution_result, cp)
}

fn response(table: &Table, to: &Packet, cn: u16, cp: Cp) -> Result<String, EncodeError> {
    Packet {
        qn: to.qn.clone(),
        st: 91,
        cn,
        pw: to.pw.clone(),
        mn: to.mn.clone(),
        flag: table.flag(false, false),
        split: None,
        cp,
    }
    .encode()
}

/// QnRtn codes of the standard.
pub mod qn_rtn {
    /// Ready to execute.
    pub const READY: u16 = 1;
    /// Rejected.
    pub const REJECTED: u16 = 2;
    /// Wrong password.
    pub const WRONG_PW: u16 = 3;
    /// Wrong MN.
    pub const WRONG_MN: u16 = 4;
    /// Wrong ST.
    pub const WRONG_ST: u16 = 5;
    /// Wrong Flag.
    pub const WRONG_FLAG: u16 = 6;
    /// Wrong QN.
    pub const WRONG_QN: u16 = 7;
    /// Wrong CN.
    pub const WRONG_CN: u16 = 8;
    /// CRC error.
    pub const CRC: u16 = 9;
    /// Unknown error.
    pub const UNKNOWN: u16 = 100;
}
