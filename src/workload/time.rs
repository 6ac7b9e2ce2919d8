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

/// `2026-11-25T17:23:03Z` for a unix time in seconds.
pub fn rfc3339(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let s = unix_secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Unix seconds of an RFC 3339 time (`2026-11-25T17:23:03Z`, `...T17:23:03.5+01:00`; a space
/// may replace the `T`; fractions of a second are dropped), or of plain unix seconds.
pub fn parse_instant(text: &str) -> Option<i64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    let b = t.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = t.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if b.len() < 20 || !sep(4, b"-") || !sep(7, b"-") || !sep(10, b"Tt ") {
        return None;
    }
    if !sep(13, b":") || !sep(16, b":") {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(t.len() - 5, 2)?, num(t.len() - 2, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None; // 2026-02-30
    }
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_format_and_parse_rfc3339() {
        assert_eq!(rfc3339(1_795_627_383), "2026-11-25T17:23:03Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        for t in [0, 1_709_251_199, 1_795_627_383] {
            assert_eq!(parse_instant(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_instant("1795627383"), Some(1_795_627_383));
        assert_eq!(
            parse_instant("2026-11-25T18:23:03.250+01:00"),
            Some(1_795_627_383)
        );
        assert_eq!(parse_instant("2026-11-25 17:23:03z"), Some(1_795_627_383));
        assert_eq!(
            parse_instant("2026-11-25T12:23:03-05:00"),
            Some(1_795_627_383)
        );
        for bad in [
            "",
            "yesterday",
            "-5",
            "2026-11-25",
            "2026-11-25T17:23:03",
            "2026-13-25T17:23:03Z",
            "2026-02-30T00:00:00Z",
            "2026-11-25T17:23:03.Z",
            "2026-11-25T17:23:03+1:00",
            "2026-11-25T24:00:00Z",
            "2026-11-25T17:23:03Zjunk",
            "２０２６-11-25T17:23:03Z",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }

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
