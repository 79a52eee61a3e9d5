//! The strict HJ 212 parser: a receive buffer scanned for whole frames, a frame checked (length,
//! CRC, size), and its data segment read into a [`Packet`], each rejection with its QnRtn.

use super::frame::{Cp, Packet, crc16, is_field_text};
use super::request::qn_rtn;
use super::time::parse_time_text;
use crate::config::hj212_table::Table;

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

    let (qn, fields) = header_fields(head)?;
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
    let split = split_fields(flag, pnum, pno)?;
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

/// The header's fields before `CP=`: the QN, if any, and ST, CN, PW, MN, Flag, PNUM, PNO.
fn header_fields(head: &str) -> Result<(Option<&str>, [Option<&str>; 7]), ParseError> {
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
    Ok((qn, fields))
}

/// PNUM and PNO, which Flag bit D requires and forbids.
fn split_fields(
    flag: u8,
    pnum: Option<&str>,
    pno: Option<&str>,
) -> Result<Option<(u16, u16)>, ParseError> {
    Ok(match (flag & 2 != 0, pnum, pno) {
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
