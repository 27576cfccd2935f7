//! Dates without chrono: RFC 3339 timestamps out, HTTP dates (`Retry-After`) in.
//!
//! Civil-date conversion follows the proleptic Gregorian calendar (days from 1970-01-01),
//! as chrono does; the algorithms are the well-known "days from civil" ones.

#[allow(unused_imports)]
use crate::prelude::*;

/// Milliseconds of 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the range an
/// RFC 3339 timestamp can write with a four-digit year. Times outside are clamped to it.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (days since 1970-01-01).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_digits(out: &mut String, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    for i in (0..width).rev() {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.push_str(core::str::from_utf8(&buf[..width]).unwrap_or(""));
}

/// RFC 3339 UTC with millisecond precision, `2026-01-01T12:00:00.123Z` (chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` for years 0000–9999).
pub fn format_millis(unix_ms: i64) -> String {
    let ms = unix_ms.clamp(MIN_MS, MAX_MS);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000) as u64;
    let (year, month, day) = civil_from_days(days);
    let mut s = String::with_capacity(24);
    push_digits(&mut s, year as u64, 4);
    s.push('-');
    push_digits(&mut s, u64::from(month), 2);
    s.push('-');
    push_digits(&mut s, u64::from(day), 2);
    s.push('T');
    push_digits(&mut s, in_day / 3_600_000, 2);
    s.push(':');
    push_digits(&mut s, in_day / 60_000 % 60, 2);
    s.push(':');
    push_digits(&mut s, in_day / 1000 % 60, 2);
    s.push('.');
    push_digits(&mut s, in_day % 1000, 3);
    s.push('Z');
    s
}

fn number(text: &str, min_len: usize, max_len: usize) -> Option<i64> {
    if text.len() < min_len || text.len() > max_len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0, |n, b| n * 10 + i64::from(b - b'0')))
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses an RFC 2822 / HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, the weekday optional, the
/// zone `GMT`, `UT`, `UTC`, `Z` or `±hhmm`, seconds optional) to Unix milliseconds.
pub fn parse_http_date(value: &str) -> Option<i64> {
    let mut text = value.trim();
    if let Some((weekday, rest)) = text.split_once(',') {
        if !WEEKDAYS.iter().any(|w| weekday.trim().eq_ignore_ascii_case(w)) {
            return None;
        }
        text = rest;
    }
    let mut parts = text.split_ascii_whitespace();
    let day = number(parts.next()?, 1, 2)?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| month_name.eq_ignore_ascii_case(m))? as u32 + 1;
    let year_text = parts.next()?;
    let mut year = number(year_text, 2, 4)?;
    if year_text.len() == 2 {
        // RFC 2822's obsolete two-digit years.
        year += if year < 50 { 2000 } else { 1900 };
    } else if year_text.len() == 3 {
        year += 1900;
    }
    let mut clock = parts.next()?.split(':');
    let hour = number(clock.next()?, 2, 2)?;
    let minute = number(clock.next()?, 2, 2)?;
    let second = match clock.next() {
        Some(s) => number(s, 2, 2)?,
        None => 0,
    };
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let zone = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let offset_minutes = match zone.as_bytes() {
        [sign @ (b'+' | b'-'), ..] if zone.len() == 5 && zone.is_ascii() => {
            let hh = number(&zone[1..3], 2, 2)?;
            let mm = number(&zone[3..5], 2, 2)?;
            if mm > 59 {
                return None;
            }
            let m = hh * 60 + mm;
            if *sign == b'-' { -m } else { m }
        }
        _ if ["gmt", "ut", "utc", "z"].iter().any(|z| zone.eq_ignore_ascii_case(z)) => 0,
        _ => return None,
    };
    let days_in_month = match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day < 1 || day > days_in_month {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    // A leap second (60) counts as the next second, as chrono's parser does.
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_millis(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_millis(MIN_MS), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777_000));
        assert_eq!(parse_http_date("06 Nov 1994 08:49:37 GMT"), Some(784_111_777_000));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 09:49:37 +0100"), Some(784_111_777_000));
        assert_eq!(parse_http_date("Sun, 6 Nov 94 08:49 UT"), Some(784_111_740_000));
        for bad in [
            "",
            "tomorrow",
            "Sun, 31 Feb 2026 00:00:00 GMT",
            "Fun, 06 Nov 1994 08:49:37 GMT",
            "06 Nov 1994 25:00:00 GMT",
            // Non-ASCII where byte offsets are sliced (a Latin-1 header byte arrives as U+00C3).
            "Sun, 06 Nov 1994 08:49:37 +1\u{c3}1",
            "Sun, 06 Nov 1994 08:49:37 -\u{e9}\u{e9}",
            "Sun, \u{e9}6 Nov 1994 08:\u{e9}9:37 GMT",
            "Sun, 06 Nov 1994 \u{e9}8:49:37 GMT",
            "\u{e9}\u{e9}\u{e9}, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
