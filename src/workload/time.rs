//! Hour buckets: counters are keyed by the UTC hour as `YYYYMMDDHH` (e.g. 2026112517).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn unix_micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Civil date (y, m, d) of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The bucket (`YYYYMMDDHH`) holding a unix time in seconds.
pub fn bucket_of(unix_secs: i64) -> i32 {
    let days = unix_secs.div_euclid(86_400);
    let hour = unix_secs.rem_euclid(86_400) / 3600;
    let (y, m, d) = civil_from_days(days);
    (y * 1_000_000 + i64::from(m) * 10_000 + i64::from(d) * 100 + hour) as i32
}

/// Unix seconds at which a bucket starts; None for a malformed bucket.
pub fn bucket_start(bucket: i32) -> Option<i64> {
    let b = i64::from(bucket);
    let (y, m, d, h) = (b / 1_000_000, (b / 10_000) % 100, (b / 100) % 100, b % 100);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 {
        return None;
    }
    Some(days_from_civil(y, m as u32, d as u32) * 86_400 + h * 3600)
}

/// The bucket `hours` before the one holding `unix_secs`.
pub fn bucket_hours_ago(unix_secs: i64, hours: u32) -> i32 {
    bucket_of(unix_secs - i64::from(hours) * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_format_known_instants() {
        assert_eq!(bucket_of(0), 1970010100);
        // 2026-11-25T17:23:03Z
        assert_eq!(bucket_of(1_795_627_383), 2026112517);
        // 2024-02-29T23:59:59Z (leap day)
        assert_eq!(bucket_of(1_709_251_199), 2024022923);
        assert_eq!(bucket_of(1_709_251_200), 2024030100);
    }

    #[test]
    fn should_round_trip_every_hour_for_years() {
        let mut t = 1_600_000_000i64 - 1_600_000_000 % 3600;
        for _ in 0..(24 * 366 * 3) {
            let b = bucket_of(t);
            assert_eq!(bucket_start(b), Some(t), "{b}");
            assert_eq!(bucket_of(t + 3599), b);
            t += 3600;
        }
    }

    #[test]
    fn should_reject_malformed_buckets() {
        assert_eq!(bucket_start(2026131201), None);
        assert_eq!(bucket_start(2026110124), None);
    }
}
