//! FHIR date, dateTime and instant values as half-open ranges `[low, high)` of microseconds since
//! the Unix epoch (UTC). A partial date is the whole period it names: `2024-03` is all of March.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// The lowest and highest instants the index stores for open-ended periods.
pub const MIN: i64 = i64::MIN / 2;
pub const MAX: i64 = i64::MAX / 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub low: i64,
    /// Exclusive.
    pub high: i64,
}

fn micros(dt: DateTime<Utc>) -> i64 {
    dt.timestamp_micros()
}

fn day_start(d: NaiveDate) -> i64 {
    micros(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()))
}

/// Parses a FHIR date, dateTime or instant into the range it covers, or `None` if malformed.
pub fn parse_range(s: &str) -> Option<Range> {
    let s = s.trim();
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            let a = NaiveDate::from_ymd_opt(y, 1, 1)?;
            let b = NaiveDate::from_ymd_opt(y + 1, 1, 1)?;
            Some(Range {
                low: day_start(a),
                high: day_start(b),
            })
        }
        7 => {
            let (y, m) = s.split_once('-')?;
            let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
            let a = NaiveDate::from_ymd_opt(y, m, 1)?;
            let b = if m == 12 {
                NaiveDate::from_ymd_opt(y + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(y, m + 1, 1)?
            };
            Some(Range {
                low: day_start(a),
                high: day_start(b),
            })
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let next = d.succ_opt()?;
            Some(Range {
                low: day_start(d),
                high: day_start(next),
            })
        }
        _ => parse_instant_range(s),
    }
}

fn parse_instant_range(s: &str) -> Option<Range> {
    // With a zone: exact to the precision given.
    if let Ok(dt) = DateTime::<FixedOffset>::parse_from_rfc3339(s) {
        let utc = dt.with_timezone(&Utc);
        let has_fraction = s.contains('.');
        let step = if has_fraction { 1 } else { 1_000_000 };
        return Some(Range {
            low: micros(utc),
            high: micros(utc) + step,
        });
    }
    // hh:mm with a zone, no seconds (allowed in search values).
    if let Some(with_secs) = insert_seconds(s) {
        if let Ok(dt) = DateTime::<FixedOffset>::parse_from_rfc3339(&with_secs) {
            let utc = dt.with_timezone(&Utc);
            return Some(Range {
                low: micros(utc),
                high: micros(utc) + 60_000_000,
            });
        }
    }
    // No zone: taken as UTC.
    for (fmt, step) in [
        ("%Y-%m-%dT%H:%M:%S%.f", 1),
        ("%Y-%m-%dT%H:%M:%S", 1_000_000),
        ("%Y-%m-%dT%H:%M", 60_000_000),
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            let low = micros(Utc.from_utc_datetime(&n));
            let step = if fmt.ends_with("%.f") && !s.contains('.') {
                1_000_000
            } else {
                step
            };
            return Some(Range {
                low,
                high: low + step,
            });
        }
    }
    None
}

fn insert_seconds(s: &str) -> Option<String> {
    // 2024-03-01T10:00Z or 2024-03-01T10:00+01:00
    let t = s.find('T')?;
    let rest = &s[t + 1..];
    if rest.len() >= 5 && rest.as_bytes().get(2) == Some(&b':') {
        let after = &rest[5..];
        if after.starts_with('Z') || after.starts_with('+') || after.starts_with('-') {
            return Some(format!("{}T{}:00{}", &s[..t], &rest[..5], after));
        }
    }
    None
}

/// Is this a valid FHIR `date` (year, year-month or full date)?
pub fn is_date(s: &str) -> bool {
    matches!(s.len(), 4 | 7 | 10) && parse_range(s).is_some()
}

/// Formats microseconds since the epoch as a FHIR instant.
pub fn format_instant(micros: i64) -> String {
    Utc.timestamp_micros(micros)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// Formats microseconds as an HTTP date (for `Last-Modified`).
pub fn format_http_date(micros: i64) -> String {
    let Ok(secs) = u64::try_from(micros.div_euclid(1_000_000)) else {
        return String::new();
    };
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// The number of whole months from `a` to `b` (negative if b is before a), ignoring days.
pub fn months_between(a: NaiveDate, b: NaiveDate) -> i32 {
    (b.year() - a.year()) * 12 + b.month() as i32 - a.month() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate_in_whole_seconds() {
        assert_eq!(
            format_http_date(1_795_380_887_123_456),
            "Sun, 22 Nov 2026 20:54:47 GMT"
        );
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn ranges() {
        let y = parse_range("2024").expect("year");
        let m = parse_range("2024-02").expect("month");
        let d = parse_range("2024-02-29").expect("day");
        assert!(y.low <= m.low && m.high <= y.high);
        assert!(m.low <= d.low && d.high <= m.high);
        assert_eq!(d.high - d.low, 86_400_000_000);
        let t = parse_range("2024-02-29T10:00:00Z").expect("instant");
        assert_eq!(t.high - t.low, 1_000_000);
        let tz = parse_range("2024-02-29T11:00:00+01:00").expect("offset");
        assert_eq!(t, tz);
        assert!(parse_range("2024-13").is_none());
        assert!(parse_range("2023-02-29").is_none());
        assert!(parse_range("yesterday").is_none());
        assert!(parse_range("2024-02-29T10:00Z").is_some());
        assert!(is_date("2024-02-29") && !is_date("2024-02-29T10:00:00Z"));
    }
}
