//! UTC calendar arithmetic for the ledger and budgets: hours, days and months from
//! Unix time, and RFC 3339 timestamps in and out. No time zones but UTC (and fixed
//! offsets on input); no leap seconds (Unix time has none).
//!
//! Day arithmetic follows Howard Hinnant's `days_from_civil` / `civil_from_days`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1-12, day 1-31) of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// The start of the hour holding `ms`, in ms.
pub fn hour_start(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

/// The start of the UTC day holding `ms`, and of the next one.
pub fn day_bounds(ms: u64) -> (u64, u64) {
    let start = ms - ms % DAY_MS;
    (start, start + DAY_MS)
}

/// The start of the UTC month holding `ms`, and of the next one.
pub fn month_bounds(ms: u64) -> (u64, u64) {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    let start = days_from_civil(y, m, 1) as u64 * DAY_MS;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = days_from_civil(ny, nm, 1) as u64 * DAY_MS;
    (start, next)
}

/// `ms` as RFC 3339 in UTC, to the second: `2026-12-02T22:05:00Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn num(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Read an RFC 3339 timestamp (`2026-12-02T22:05:00Z`, fractional seconds and
/// `±hh:mm` offsets allowed) or a bare UTC date (`2026-12-02`, its midnight) as ms
/// since the epoch. `None` for anything else or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    // the day must exist (no 2026-02-30)
    if civil_from_days(days) != (i64::from(y), m, d) {
        return None;
    }
    let mut ms = days * 86_400_000;
    if let Some(t) = time {
        let (clock, offset_min) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else {
            let at = t.rfind(['+', '-'])?;
            let (c, off) = t.split_at(at);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':')?;
            let (oh, om) = (num(oh)?, num(om)?);
            if oh > 23 || om > 59 {
                return None;
            }
            (c, sign * i64::from(oh * 60 + om))
        };
        let (whole, frac) = match clock.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (clock, None),
        };
        let mut hms = whole.splitn(3, ':');
        let (h, mi, se) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let frac_ms = match frac {
            Some(f) => {
                num(f)?;
                let digits: String = f.chars().chain("000".chars()).take(3).collect();
                i64::from(num(&digits)?)
            }
            None => 0,
        };
        ms += i64::from(h * 3600 + mi * 60 + se) * 1000 + frac_ms - offset_min * 60_000;
    }
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in (-1000..80_000).step_by(7) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn formats_and_reads_rfc3339() {
        let ms = parse_rfc3339("2026-12-02T22:05:07Z").unwrap();
        assert_eq!(rfc3339(ms), "2026-12-02T22:05:07Z");
        assert_eq!(
            parse_rfc3339("2026-12-02T23:05:07.250+01:00"),
            Some(ms + 250)
        );
        assert_eq!(
            parse_rfc3339("2026-12-02"),
            Some(ms - (22 * 3600 + 5 * 60 + 7) * 1000)
        );
        for bad in [
            "",
            "2026-02-30",
            "2026-13-01",
            "yesterday",
            "2026-12-02T25:00:00Z",
            "2026-12-02T10:00:00",
            "1969-12-31",
            "2026-12-02T10:00:00+1:00x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_and_days_bound_their_time() {
        let ms = parse_rfc3339("2024-02-29T12:00:00Z").unwrap();
        let (ms0, ms1) = month_bounds(ms);
        assert_eq!(rfc3339(ms0), "2024-02-01T00:00:00Z");
        assert_eq!(rfc3339(ms1), "2024-03-01T00:00:00Z");
        let (d0, d1) = day_bounds(ms);
        assert_eq!(rfc3339(d0), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(d1), "2024-03-01T00:00:00Z");
        let dec = parse_rfc3339("2026-12-31T23:59:59Z").unwrap();
        assert_eq!(rfc3339(month_bounds(dec).1), "2027-01-01T00:00:00Z");
        assert_eq!(rfc3339(hour_start(dec)), "2026-12-31T23:00:00Z");
    }
}
