//! HJ 212 time texts: QN (`YYYYMMDDhhmmsszzz`) and DataTime (`YYYYMMDDhhmmss`) in the station's
//! local time, and their parsing back to instants (proleptic Gregorian calendar).

use crate::model::Timestamp;

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
