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

mod table;

use std::fmt;

pub use table::{Commands, Factor, Flags, Limits, Role, Table, TableError};

use crate::model::{Aggregate, Period, Quality, Timestamp};

/// The HJ 212 CRC of a data segment (Appendix A).
///
/// Unlike CRC-16/MODBUS, the register is shifted right by 8 bits *before* each byte is XORed in:
/// `crc = (crc >> 8) ^ b`, then eight reflected steps with polynomial 0xA001, starting from 0xFFFF.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc = (crc >> 8) ^ u16::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0xA001;
            }
        }
    }
    crc
}

/// Wrap a data segment into a packet: `##`, length, segment, CRC, CR LF.
///
/// Fails when the segment is longer than 9999 bytes (the length field has four digits); callers
/// that respect a [`Table`]'s limits never reach that.
pub fn frame(data_segment: &str) -> Result<String, EncodeError> {
    let len = data_segment.len();
    if len > 9999 {
        return Err(EncodeError::TooLong { len, max: 9999 });
    }
    Ok(format!(
        "##{len:04}{data_segment}{:04X}\r\n",
        crc16(data_segment.as_bytes())
    ))
}

/// A packet could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A data segment or a single data-area item is longer than the standard allows.
    #[error("{len} bytes where at most {max} are allowed")]
    TooLong {
        /// Length found.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// An aggregate's quantity has no factor code in the table.
    #[error("quantity {0:?} has no HJ 212 factor code in the table")]
    UnknownQuantity(String),
    /// Aggregates of different periods or windows were given for one packet.
    #[error("aggregates of one packet must share period and window start")]
    MixedWindows,
    /// No aggregate or value was given.
    #[error("nothing to encode")]
    Empty,
    /// A station field does not have the length or characters the standard requires.
    #[error("station field {field}: {reason}")]
    BadStation {
        /// Field name (`PW`, `MN`, `ST`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The CP data area: items separated by `;`, each a list of `key=value` pairs separated by `,`.
///
/// `DataTime=20250301090000;a21026-Avg=85.3,a21026-Flag=N` is two items, the second with two
/// pairs. Order is kept exactly, so printing a parsed data area gives back the same text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cp(pub Vec<Vec<(String, String)>>);

impl Cp {
    /// The value of the first pair with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .flatten()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parse a data area (the text between the `&&` delimiters).
    pub fn parse(text: &str) -> Result<Cp, ParseError> {
        if text.is_empty() {
            return Ok(Cp::default());
        }
        let mut items = Vec::new();
        for item in text.split(';') {
            let mut pairs = Vec::new();
            for pair in item.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| ParseError::DataArea(format!("{pair:?} is not key=value")))?;
                if k.is_empty() || k.contains('&') || v.contains('&') {
                    return Err(ParseError::DataArea(format!("bad pair {pair:?}")));
                }
                pairs.push((k.to_owned(), v.to_owned()));
            }
            items.push(pairs);
        }
        Ok(Cp(items))
    }
}

impl fmt::Display for Cp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            for (j, (k, v)) in item.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

/// One HJ 212 packet, parsed or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Request number `YYYYMMDDhhmmsszzz`; absent in some device notifications.
    pub qn: Option<String>,
    /// System code (2 digits).
    pub st: u16,
    /// Command code (4 digits).
    pub cn: u16,
    /// Access password.
    pub pw: String,
    /// Device unique ID.
    pub mn: String,
    /// Flag: version bits, D (split) and A (acknowledge).
    pub flag: u8,
    /// Total packet count and this packet's number (1-based), present when Flag bit D is set.
    pub split: Option<(u16, u16)>,
    /// The data area.
    pub cp: Cp,
}

impl Packet {
    /// Whether the sender asks for an acknowledgement (Flag bit A).
    pub fn wants_ack(&self) -> bool {
        self.flag & 1 == 1
    }

    /// The version bits V5..V0 of Flag.
    pub fn version_bits(&self) -> u8 {
        self.flag >> 2
    }

    /// The data segment text (what the length and CRC cover).
    pub fn data_segment(&self) -> String {
        let mut s = String::new();
        if let Some(qn) = &self.qn {
            s.push_str("QN=");
            s.push_str(qn);
            s.push(';');
        }
        s.push_str(&format!(
            "ST={:02};CN={:04};PW={};MN={};Flag={};",
            self.st, self.cn, self.pw, self.mn, self.flag
        ));
        if let Some((pnum, pno)) = self.split {
            s.push_str(&format!("PNUM={pnum};PNO={pno};"));
        }
        s.push_str(&format!("CP=&&{}&&", self.cp));
        s
    }

    /// The framed packet.
    pub fn encode(&self) -> Result<String, EncodeError> {
        frame(&self.data_segment())
    }
}

/// The data logger's identity and settings, the header of every packet it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Station {
    /// System code (31 for stacks).
    pub st: u16,
    /// Access password (6 characters).
    pub pw: String,
    /// Device unique ID (24 characters in HJ 212-2017).
    pub mn: String,
    /// Ask the platform to acknowledge data packets (Flag bit A, answered with 9014).
    pub ack: bool,
    /// Offset of local time from UTC in minutes (+480 for China): QN and DataTime are local.
    pub utc_offset_min: i32,
}

impl Station {
    fn check(&self, table: &Table) -> Result<(), EncodeError> {
        if self.st > 99 {
            return Err(EncodeError::BadStation {
                field: "ST",
                reason: format!("{} is not 2 digits", self.st),
            });
        }
        if self.pw.len() != table.limits.pw_len || !is_field_text(&self.pw) {
            return Err(EncodeError::BadStation {
                field: "PW",
                reason: format!("needs {} plain characters", table.limits.pw_len),
            });
        }
        if self.mn.is_empty() || self.mn.len() > table.limits.mn_len || !is_field_text(&self.mn) {
            return Err(EncodeError::BadStation {
                field: "MN",
                reason: format!("needs 1 to {} plain characters", table.limits.mn_len),
            });
        }
        Ok(())
    }
}

/// Characters allowed in header field values: printable ASCII without the separators.
fn is_field_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'=' | b'&' | b','))
}

/// `YYYYMMDDhhmmsszzz` (QN) of an instant in the station's local time.
pub fn qn_text(ts: Timestamp, utc_offset_min: i32) -> String {
    let (date, ms) = local_parts(ts, utc_offset_min);
    format!("{date}{ms:03}")
}

/// `YYYYMMDDhhmmss` (DataTime, BeginTime, SystemTime) of an instant in local time.
pub fn data_time_text(ts: Timestamp, utc_offset_min: i32) -> String {
    local_parts(ts, utc_offset_min).0
}

fn local_parts(ts: Timestamp, utc_offset_min: i32) -> (String, i64) {
    let local_ms = ts.0 + i64::from(utc_offset_min) * 60_000;
    let days = local_ms.div_euclid(86_400_000);
    let ms_of_day = local_ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    (
        format!(
            "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        ),
        ms_of_day % 1000,
    )
}

/// Parse `YYYYMMDDhhmmss` (14 digits) or `YYYYMMDDhhmmsszzz` (17 digits) local time back to an
/// instant. `None` when malformed or out of range.
pub fn parse_time_text(text: &str, utc_offset_min: i32) -> Option<Timestamp> {
    if !(text.len() == 14 || text.len() == 17) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(8..10)?,
        n(10..12)?,
        n(12..14)?,
    );
    let ms = if text.len() == 17 { n(14..17)? } else { 0 };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        return None;
    }
    let local = days * 86_400_000 + ((h * 60 + mi) * 60 + s) * 1000 + ms;
    Some(Timestamp(local - i64::from(utc_offset_min) * 60_000))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The command code of data packets for a period (minute 2051, hour 2061, day 2031); none for a
/// month, which the standard's tables have no data command for (monthly aggregates are not
/// uploaded over HJ 212).
pub fn period_command(table: &Table, period: Period) -> Option<u16> {
    match period {
        Period::Minute => Some(table.commands.minute),
        Period::Hour => Some(table.commands.hourly),
        Period::Day => Some(table.commands.daily),
        Period::Month => None,
    }
}

/// The data flag of a closed window: its quality's letter, or the table's `invalid_window` letter
/// when the quality is good but the window fails its validity rule.
pub fn window_flag(table: &Table, quality: Quality, valid: bool) -> char {
    if quality == Quality::Good && !valid {
        table.flags.invalid_window
    } else {
        table.flags.for_quality(quality)
    }
}

fn number(v: Option<f64>, decimals: usize) -> Option<String> {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.decimals$}"))
}

/// Packets for one closed window of one stack: 2051, 2061 or 2031 by the aggregates' period.
///
/// Every aggregate must share period and window start; `DataTime` is the window start (the
/// convention to confirm with the platform). The aggregates of one factor code make one item
/// `code-Avg,code-Min,code-Max[,code-ZsAvg,code-ZsMin,code-ZsMax][,code-Cou],code-Flag`, items in
/// the order their first aggregate is given: the measured concentration (a [`Role::Measured`]
/// quantity such as `so2_mg_m3`) gives Avg/Min/Max, the converted one (`so2_zs_mg_m3`) the Zs
/// values, and Cou is the measured aggregate's own `total` or else the mass flow's (`so2_kg_h`).
/// The flag is the measured aggregate's, or the first one's when there is none. A missing or
/// non-finite value is left out and its flag kept. Returns one packet, or several when the data
/// area exceeds the table's limits; none for a monthly window (no data command for it).
pub fn encode_window(
    table: &Table,
    station: &Station,
    qn: Timestamp,
    aggregates: &[Aggregate],
) -> Result<Vec<String>, EncodeError> {
    encode_window_qn(
        table,
        station,
        &qn_text(qn, station.utc_offset_min),
        aggregates,
    )
}

/// [`encode_window`] with a given QN text: the answer to a platform's history request carries the
/// request's QN.
pub fn encode_window_qn(
    table: &Table,
    station: &Station,
    qn: &str,
    aggregates: &[Aggregate],
) -> Result<Vec<String>, EncodeError> {
    let first = aggregates.first().ok_or(EncodeError::Empty)?;
    if aggregates
        .iter()
        .any(|a| a.period != first.period || a.start != first.start)
    {
        return Err(EncodeError::MixedWindows);
    }
    let Some(cn) = period_command(table, first.period) else {
        return Ok(Vec::new());
    };
    /// The aggregates of one factor code, by role.
    struct Item<'a> {
        factor: &'a Factor,
        measured: Option<&'a Aggregate>,
        converted: Option<&'a Aggregate>,
        amount: Option<&'a Aggregate>,
    }
    let mut grouped: Vec<Item<'_>> = Vec::with_capacity(aggregates.len());
    for a in aggregates {
        let (f, role) = table
            .factor_role(&a.quantity)
            .ok_or_else(|| EncodeError::UnknownQuantity(a.quantity.to_string()))?;
        let slot = |it: &mut Item<'_>| -> bool {
            let s = match role {
                Role::Measured => &mut it.measured,
                Role::Converted => &mut it.converted,
                Role::Amount => &mut it.amount,
            };
            s.is_none()
        };
        // A second aggregate of the same code and role (say `so2_mg_m3` and `a21026`) makes an
        // item of its own, as before.
        let i = match grouped
            .iter_mut()
            .position(|it| it.factor.code == f.code && slot(it))
        {
            Some(i) => i,
            None => {
                grouped.push(Item {
                    factor: f,
                    measured: None,
                    converted: None,
                    amount: None,
                });
                grouped.len() - 1
            }
        };
        let it = &mut grouped[i];
        match role {
            Role::Measured => it.measured = Some(a),
            Role::Converted => it.converted = Some(a),
            Role::Amount => it.amount = Some(a),
        }
    }
    let mut items = Vec::with_capacity(grouped.len());
    for it in grouped {
        let f = it.factor;
        let mut pairs = Vec::new();
        let values = |a: Option<&Aggregate>| a.map_or([None; 3], |a| [a.avg, a.min, a.max]);
        let measured = ["Avg", "Min", "Max"].into_iter().zip(values(it.measured));
        let converted = ["ZsAvg", "ZsMin", "ZsMax"]
            .into_iter()
            .zip(values(it.converted));
        for (suffix, v) in measured.chain(converted) {
            if let Some(text) = number(v, f.decimals) {
                pairs.push((format!("{}-{suffix}", f.code), text));
            }
        }
        let cou = it
            .measured
            .and_then(|a| a.total)
            .or_else(|| it.amount.and_then(|a| a.total));
        if let Some(text) = number(cou, f.cou_decimals) {
            pairs.push((format!("{}-Cou", f.code), text));
        }
        let flagged = it
            .measured
            .or(it.converted)
            .or(it.amount)
            .expect("an item holds at least one aggregate");
        pairs.push((
            format!("{}-Flag", f.code),
            window_flag(table, flagged.quality, flagged.valid).to_string(),
        ));
        items.push(pairs);
    }
    let data_time = vec![(
        "DataTime".to_owned(),
        data_time_text(first.start, station.utc_offset_min),
    )];
    build_packets(table, station, cn, qn.to_owned(), data_time, items)
}

/// One real-time value for a 2011 packet.
#[derive(Debug, Clone, PartialEq)]
pub struct RtdValue<'a> {
    /// smeltwatch quantity name or factor code.
    pub quantity: &'a str,
    /// The value, `None` when nothing could be read.
    pub value: Option<f64>,
    /// Its quality.
    pub quality: Quality,
}

/// Real-time (2011) packets: `DataTime` then `code-Rtd,code-Flag` per value in the order given.
pub fn encode_realtime(
    table: &Table,
    station: &Station,
    qn: Timestamp,
    data_time: Timestamp,
    values: &[RtdValue<'_>],
) -> Result<Vec<String>, EncodeError> {
    if values.is_empty() {
        return Err(EncodeError::Empty);
    }
    let mut items = Vec::with_capacity(values.len());
    for v in values {
        let f = table
            .factor(v.quantity)
            .ok_or_else(|| EncodeError::UnknownQuantity(v.quantity.to_owned()))?;
        let mut pairs = Vec::new();
        if let Some(text) = number(v.value, f.decimals) {
            pairs.push((format!("{}-Rtd", f.code), text));
        }
        pairs.push((
            format!("{}-Flag", f.code),
            table.flags.for_quality(v.quality).to_string(),
        ));
        items.push(pairs);
    }
    let head = vec![(
        "DataTime".to_owned(),
        data_time_text(data_time, station.utc_offset_min),
    )];
    build_packets(
        table,
        station,
        table.commands.realtime,
        qn_text(qn, station.utc_offset_min),
        head,
        items,
    )
}

/// Build one packet, or split the items over several (same QN, Flag D, PNUM/PNO, `head` repeated
/// first in each) when the data area or segment would exceed the table's limits.
fn build_packets(
    table: &Table,
    station: &Station,
    cn: u16,
    qn: String,
    head: Vec<(String, String)>,
    items: Vec<Vec<(String, String)>>,
) -> Result<Vec<String>, EncodeError> {
    station.check(table)?;
    let mut packet = Packet {
        qn: Some(qn),
        st: station.st,
        cn,
        pw: station.pw.clone(),
        mn: station.mn.clone(),
        flag: table.flag(false, station.ack),
        split: None,
        cp: Cp(std::iter::once(head.clone())
            .chain(items.iter().cloned())
            .collect()),
    };
    let cp_len = packet.cp.to_string().len();
    let seg_len = packet.data_segment().len();
    if cp_len <= table.limits.max_cp && seg_len <= table.limits.max_data_segment {
        return Ok(vec![packet.encode()?]);
    }

    // Budget for the data area of a split packet, with PNUM/PNO at their widest.
    packet.flag = table.flag(true, station.ack);
    packet.split = Some((9999, 9999));
    packet.cp = Cp::default();
    let overhead = packet.data_segment().len();
    let budget = table
        .limits
        .max_cp
        .min(table.limits.max_data_segment.saturating_sub(overhead));
    let head_len = Cp(vec![head.clone()]).to_string().len();

    let mut chunks: Vec<Vec<Vec<(String, String)>>> = Vec::new();
    let mut current: Vec<Vec<(String, String)>> = Vec::new();
    let mut current_len = head_len;
    for item in items {
        let item_len = Cp(vec![item.clone()]).to_string().len() + 1;
        if head_len + item_len > budget {
            return Err(EncodeError::TooLong {
                len: head_len + item_len,
                max: budget,
            });
        }
        if current_len + item_len > budget {
            chunks.push(std::mem::take(&mut current));
            current_len = head_len;
        }
        current_len += item_len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    let pnum = u16::try_from(chunks.len()).map_err(|_| EncodeError::TooLong {
        len: chunks.len(),
        max: 9999,
    })?;
    if pnum > 9999 {
        return Err(EncodeError::TooLong {
            len: usize::from(pnum),
            max: 9999,
        });
    }
    chunks
        .into_iter()
        .zip(1..)
        .map(|(chunk, pno)| {
            packet.split = Some((pnum, pno));
            packet.cp = Cp(std::iter::once(head.clone()).chain(chunk).collect());
            packet.encode()
        })
        .collect()
}

/// HJ 212 text for one spooled record, e.g. as an MQTT payload for platforms that take HJ 212
/// over MQTT: an aggregate becomes its window packet (2051/2061/2031, one factor), a poll batch a
/// 2011 packet of the readings whose point names have factor codes. Other records, and batches
/// without such readings, give no packet.
pub fn encode_record(
    table: &Table,
    station: &Station,
    qn: Timestamp,
    record: &crate::model::Record,
) -> Result<Vec<String>, EncodeError> {
    use crate::model::Record;
    match record {
        Record::Aggregate(a) => encode_window(table, station, qn, std::slice::from_ref(a)),
        Record::Batch(batch) => {
            let values: Vec<RtdValue<'_>> = batch
                .readings
                .iter()
                .filter(|r| table.factor(&r.point).is_some())
                .map(|r| RtdValue {
                    quantity: &r.point,
                    value: r.value.as_ref().and_then(|v| v.as_f64()),
                    quality: r.quality,
                })
                .collect();
            if values.is_empty() {
                return Ok(Vec::new());
            }
            let ts = batch.readings.first().map_or(batch.scheduled, |r| r.ts);
            encode_realtime(table, station, qn, ts, &values)
        }
        Record::Metrics(_) | Record::Event(_) => Ok(Vec::new()),
    }
}

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

/// Why an incoming packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Missing `##`, CR LF, or a non-numeric length or CRC field.
    #[error("framing: {0}")]
    Framing(String),
    /// The length field does not match the data segment.
    #[error("length field says {declared} but the data segment has {actual} bytes")]
    Length {
        /// Length in the header.
        declared: usize,
        /// Bytes between the length field and the CRC.
        actual: usize,
    },
    /// The CRC does not match the data segment.
    #[error("CRC {received:04X} does not match the data segment (computed {computed:04X})")]
    Crc {
        /// CRC in the packet.
        received: u16,
        /// CRC of the data segment.
        computed: u16,
    },
    /// The data segment is not UTF-8 or not a sequence of `KEY=VALUE;` fields.
    #[error("data segment: {0}")]
    Segment(String),
    /// A bad QN.
    #[error("QN: {0}")]
    Qn(String),
    /// A bad or unknown ST.
    #[error("ST: {0}")]
    St(String),
    /// A bad CN.
    #[error("CN: {0}")]
    Cn(String),
    /// A bad or wrong PW.
    #[error("PW: {0}")]
    Pw(String),
    /// A bad or wrong MN.
    #[error("MN: {0}")]
    Mn(String),
    /// A bad Flag, or PNUM/PNO that do not agree with Flag bit D.
    #[error("Flag: {0}")]
    Flag(String),
    /// A malformed data area.
    #[error("data area: {0}")]
    DataArea(String),
}

impl ParseError {
    /// The QnRtn to answer this rejection with. The standard has no code of its own for framing,
    /// length and syntax errors; those are answered 2 (rejected).
    pub fn qn_rtn(&self) -> u16 {
        match self {
            ParseError::Framing(_)
            | ParseError::Length { .. }
            | ParseError::Segment(_)
            | ParseError::DataArea(_) => qn_rtn::REJECTED,
            ParseError::Crc { .. } => qn_rtn::CRC,
            ParseError::Qn(_) => qn_rtn::WRONG_QN,
            ParseError::St(_) => qn_rtn::WRONG_ST,
            ParseError::Cn(_) => qn_rtn::WRONG_CN,
            ParseError::Pw(_) => qn_rtn::WRONG_PW,
            ParseError::Mn(_) => qn_rtn::WRONG_MN,
            ParseError::Flag(_) => qn_rtn::WRONG_FLAG,
        }
    }
}

/// What the parser checks beyond the syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Also accept a CRC whose two bytes are swapped (some field devices send it so). Off by
    /// default: strict.
    pub accept_swapped_crc: bool,
    /// Reject a packet whose PW differs (QnRtn 3).
    pub expected_pw: Option<String>,
    /// Reject a packet whose MN differs (QnRtn 4).
    pub expected_mn: Option<String>,
}

/// Length of the fixed parts around the data segment: `##`, LLLL, CCCC, CR LF.
const FRAME_OVERHEAD: usize = 2 + 4 + 4 + 2;

/// Parse one complete packet (`##` … CR LF).
pub fn parse(bytes: &[u8], table: &Table, opts: &ParseOptions) -> Result<Packet, ParseError> {
    if bytes.len() < FRAME_OVERHEAD {
        return Err(ParseError::Framing(format!(
            "{} bytes is shorter than any packet",
            bytes.len()
        )));
    }
    if &bytes[..2] != b"##" {
        return Err(ParseError::Framing("does not start with ##".into()));
    }
    if !bytes.ends_with(b"\r\n") {
        return Err(ParseError::Framing("does not end with CR LF".into()));
    }
    let declared = digits(&bytes[2..6])
        .ok_or_else(|| ParseError::Framing("length field is not 4 decimal digits".into()))?;
    let actual = bytes.len() - FRAME_OVERHEAD;
    if declared != actual {
        return Err(ParseError::Length { declared, actual });
    }
    let segment = &bytes[6..6 + actual];
    let crc_text = &bytes[6 + actual..6 + actual + 4];
    let received = std::str::from_utf8(crc_text)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|t| u16::from_str_radix(t, 16).ok())
        .ok_or_else(|| ParseError::Framing("CRC field is not 4 hex digits".into()))?;
    let computed = crc16(segment);
    if received != computed && !(opts.accept_swapped_crc && received == computed.swap_bytes()) {
        return Err(ParseError::Crc { received, computed });
    }
    if declared > table.limits.max_data_segment {
        return Err(ParseError::Framing(format!(
            "data segment of {declared} bytes exceeds {}",
            table.limits.max_data_segment
        )));
    }
    let segment =
        std::str::from_utf8(segment).map_err(|_| ParseError::Segment("not UTF-8".into()))?;
    parse_segment(segment, table, opts)
}

fn digits(b: &[u8]) -> Option<usize> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parse a data segment (no framing): the header fields, then `CP=&&…&&`.
pub fn parse_segment(
    segment: &str,
    table: &Table,
    opts: &ParseOptions,
) -> Result<Packet, ParseError> {
    let cp_at = segment
        .find("CP=&&")
        .ok_or_else(|| ParseError::Segment("no CP=&& data area".into()))?;
    let (head, cp) = segment.split_at(cp_at);
    let cp = &cp["CP=&&".len()..];
    let cp = cp
        .strip_suffix("&&")
        .ok_or_else(|| ParseError::DataArea("data area not closed with &&".into()))?;
    if cp.len() > table.limits.max_cp {
        return Err(ParseError::DataArea(format!(
            "{} characters, more than {}",
            cp.len(),
            table.limits.max_cp
        )));
    }
    let cp = Cp::parse(cp)?;

    let mut qn = None;
    let mut fields: [Option<&str>; 7] = [None; 7];
    const KEYS: [&str; 7] = ["ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO"];
    let head = head
        .strip_suffix(';')
        .ok_or_else(|| ParseError::Segment("header does not end with ;".into()))?;
    for field in head.split(';') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| ParseError::Segment(format!("{field:?} is not KEY=VALUE")))?;
        if k == "QN" {
            if qn.replace(v).is_some() {
                return Err(ParseError::Qn("given twice".into()));
            }
            continue;
        }
        let i = KEYS
            .iter()
            .position(|key| *key == k)
            .ok_or_else(|| ParseError::Segment(format!("unknown field {k:?}")))?;
        if fields[i].replace(v).is_some() {
            return Err(ParseError::Segment(format!("{k} given twice")));
        }
    }
    let [st, cn, pw, mn, flag, pnum, pno] = fields;

    let qn = match qn {
        Some(q) if q.len() == 17 && parse_time_text(q, 0).is_some() => Some(q.to_owned()),
        Some(q) => return Err(ParseError::Qn(format!("{q:?} is not YYYYMMDDhhmmsszzz"))),
        None => None,
    };
    let st = st.ok_or_else(|| ParseError::St("missing".into()))?;
    let st = fixed_digits(st, 2)
        .filter(|n| table.systems.contains_key(n))
        .ok_or_else(|| ParseError::St(format!("{st:?} is not a known system code")))?;
    let cn = cn.ok_or_else(|| ParseError::Cn("missing".into()))?;
    let cn =
        fixed_digits(cn, 4).ok_or_else(|| ParseError::Cn(format!("{cn:?} is not 4 digits")))?;
    let pw = pw.ok_or_else(|| ParseError::Pw("missing".into()))?;
    if pw.len() != table.limits.pw_len || !is_field_text(pw) {
        return Err(ParseError::Pw(format!(
            "{pw:?} is not {} characters",
            table.limits.pw_len
        )));
    }
    if opts.expected_pw.as_deref().is_some_and(|e| e != pw) {
        return Err(ParseError::Pw("wrong password".into()));
    }
    let mn = mn.ok_or_else(|| ParseError::Mn("missing".into()))?;
    if mn.is_empty() || mn.len() > table.limits.mn_len || !is_field_text(mn) {
        return Err(ParseError::Mn(format!(
            "{mn:?} is not 1 to {} characters",
            table.limits.mn_len
        )));
    }
    if opts.expected_mn.as_deref().is_some_and(|e| e != mn) {
        return Err(ParseError::Mn(format!("{mn:?} is not this station")));
    }
    let flag_text = flag.ok_or_else(|| ParseError::Flag("missing".into()))?;
    let flag = Some(flag_text)
        .filter(|t| (1..=3).contains(&t.len()))
        .and_then(|t| digits(t.as_bytes()))
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| ParseError::Flag(format!("{flag_text:?} is not 0 to 255")))?;
    let split = match (flag & 2 != 0, pnum, pno) {
        (true, Some(pnum), Some(pno)) => {
            let n = |t: &str| {
                Some(t)
                    .filter(|t| (1..=4).contains(&t.len()))
                    .and_then(|t| digits(t.as_bytes()))
                    .and_then(|n| u16::try_from(n).ok())
            };
            match (n(pnum), n(pno)) {
                (Some(total), Some(no)) if no >= 1 && no <= total => Some((total, no)),
                _ => {
                    return Err(ParseError::Flag(format!(
                        "PNUM={pnum};PNO={pno} is not a packet of a split"
                    )));
                }
            }
        }
        (false, None, None) => None,
        (true, ..) => return Err(ParseError::Flag("bit D set without PNUM and PNO".into())),
        (false, ..) => return Err(ParseError::Flag("PNUM/PNO without bit D".into())),
    };
    Ok(Packet {
        qn,
        st,
        cn,
        pw: pw.to_owned(),
        mn: mn.to_owned(),
        flag,
        split,
        cp,
    })
}

fn fixed_digits(text: &str, len: usize) -> Option<u16> {
    if text.len() != len {
        return None;
    }
    digits(text.as_bytes()).and_then(|n| u16::try_from(n).ok())
}

/// Result of looking for one packet at the start of a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Incomplete,
    /// A whole frame of this many bytes starts the buffer (parse it with [`parse`]).
    Frame(usize),
    /// Garbage: drop this many bytes and scan again.
    Skip(usize),
}

/// Find the packet at the start of a byte stream: resynchronises on `##`, trusts the length field
/// only when it is 4 digits, and leaves CRC and syntax to [`parse`].
pub fn scan(buf: &[u8]) -> Scan {
    let Some(start) = buf.windows(2).position(|w| w == b"##") else {
        // Keep a trailing '#' that may begin the next header.
        let keep = usize::from(buf.last() == Some(&b'#'));
        return if buf.len() > keep {
            Scan::Skip(buf.len() - keep)
        } else {
            Scan::Incomplete
        };
    };
    if start > 0 {
        return Scan::Skip(start);
    }
    if buf.len() < 6 {
        return Scan::Incomplete;
    }
    match digits(&buf[2..6]) {
        Some(len) => {
            let total = len + FRAME_OVERHEAD;
            if buf.len() < total {
                Scan::Incomplete
            } else {
                Scan::Frame(total)
            }
        }
        None => Scan::Skip(2),
    }
}
