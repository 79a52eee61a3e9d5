//! Calendar arithmetic on [`Timestamp`]s in the site's fixed UTC offset: minute, hour and day
//! boundaries and civil dates, without a time-zone database (China has one offset, no DST).

use crate::model::Timestamp;

/// Milliseconds in a minute.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Start of the window of length `len_ms` containing `ts`, aligned in local time.
pub fn floor(ts: Timestamp, len_ms: i64, offset_ms: i64) -> Timestamp {
    Timestamp((ts.0 + offset_ms).div_euclid(len_ms) * len_ms - offset_ms)
}

/// Local day number (days since 1970-01-01 local).
pub fn local_day(ts: Timestamp, offset_ms: i64) -> i64 {
    (ts.0 + offset_ms).div_euclid(DAY_MS)
}

/// Civil date (year, month 1–12, day 1–31) of a day number (H. Hinnant's algorithm).
pub fn civil(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Day number of a civil date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days in a month.
pub fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
}
