//! HJ 212 data packets: a closed window's aggregates as 2051/2061/2031, real-time values as 2011,
//! a spooled record as its packets, each split over PNUM/PNO when it exceeds the table's limits.

use super::frame::{Cp, EncodeError, Packet};
use super::time::{data_time_text, qn_text};
use crate::config::hj212_table::Station;
use crate::config::hj212_table::{Factor, Role, Table};
use crate::model::{Aggregate, Period, Quality, Timestamp};

/// Data-area items: each a list of `key=value` pairs.
type Items = Vec<Vec<(String, String)>>;

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
    let items = group_by_factor(table, aggregates)?
        .iter()
        .map(|it| item_pairs(table, it))
        .collect();
    let data_time = vec![(
        "DataTime".to_owned(),
        data_time_text(first.start, station.utc_offset_min),
    )];
    build_packets(table, station, cn, qn.to_owned(), data_time, items)
}

/// The aggregates of one factor code, by role.
struct Item<'a> {
    factor: &'a Factor,
    measured: Option<&'a Aggregate>,
    converted: Option<&'a Aggregate>,
    amount: Option<&'a Aggregate>,
}

/// The aggregates of a window grouped into items by factor code, in the order of each item's
/// first aggregate.
fn group_by_factor<'a>(
    table: &'a Table,
    aggregates: &'a [Aggregate],
) -> Result<Vec<Item<'a>>, EncodeError> {
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
        // item of its own.
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
    Ok(grouped)
}

/// One item's pairs: Avg/Min/Max, the Zs values, Cou, and the flag.
fn item_pairs(table: &Table, it: &Item<'_>) -> Vec<(String, String)> {
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
    pairs
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

    let chunks = chunk_items(items, head_len, budget)?;
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

/// The items split into chunks whose data area, `head` (of `head_len`) first, fits `budget`.
fn chunk_items(items: Items, head_len: usize, budget: usize) -> Result<Vec<Items>, EncodeError> {
    let mut chunks: Vec<Items> = Vec::new();
    let mut current: Items = Vec::new();
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
    Ok(chunks)
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
