//! Event times on the wire: RFC 3339 in UTC with nanoseconds (`2026-11-25T12:00:00.123456789Z`).
//! Formatting for podmapd, parsing for clients that measure or compare times.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01: the inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u64, d as u64)
}

/// Formats Unix-epoch nanoseconds.
pub fn format_rfc3339(unix_ns: u64) -> String {
    format_with_fraction(unix_ns, 9)
}

/// Formats Unix-epoch nanoseconds to the millisecond (log lines).
pub fn format_rfc3339_millis(unix_ns: u64) -> String {
    format_with_fraction(unix_ns, 3)
}

fn format_with_fraction(unix_ns: u64, digits: u32) -> String {
    let secs = unix_ns / 1_000_000_000;
    let fraction = unix_ns % 1_000_000_000 / 10u64.pow(9 - digits);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Two of these per exec event: digits written directly, not through `fmt`'s machinery.
    let mut s = String::with_capacity(30);
    push_padded(&mut s, y.max(0) as u64, 4);
    s.push('-');
    push_padded(&mut s, m, 2);
    s.push('-');
    push_padded(&mut s, d, 2);
    s.push('T');
    push_padded(&mut s, rem / 3600, 2);
    s.push(':');
    push_padded(&mut s, rem / 60 % 60, 2);
    s.push(':');
    push_padded(&mut s, rem % 60, 2);
    s.push('.');
    push_padded(&mut s, fraction, digits as usize);
    s.push('Z');
    s
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn push_padded(s: &mut String, v: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(v);
    for _ in digits.len()..width {
        s.push('0');
    }
    s.push_str(digits);
}

/// Parses a UTC time as podmapd writes it (fraction optional, up to 9 digits) to Unix-epoch
/// nanoseconds; None for anything else.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(y, mo, da);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + se;
    Some(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits written by hand are what `format!` writes, for instants spread over the
    /// whole range (a multiplicative walk) and the edges of each field.
    #[test]
    fn formats_as_the_formatting_machinery_would() {
        let reference = |ns: u64, digits: u32| {
            let secs = ns / 1_000_000_000;
            let fraction = ns % 1_000_000_000 / 10u64.pow(9 - digits);
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{fraction:0width$}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
                width = digits as usize
            )
        };
        let mut ns: u64 = 1;
        let mut instants = vec![0, 999_999_999, 1_000_000_000, u64::MAX];
        for _ in 0..20_000 {
            ns = ns.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            instants.push(ns);
            instants.push(ns % 4_102_444_800_000_000_000); // before 2100
        }
        for ns in instants {
            assert_eq!(format_rfc3339(ns), reference(ns, 9), "{ns}");
            assert_eq!(format_rfc3339_millis(ns), reference(ns, 3), "{ns}");
        }
    }

    #[test]
    fn formats_and_parses_known_instants() {
        for (ns, text) in [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (1_795_608_000_123_456_789, "2026-11-25T12:00:00.123456789Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000000Z"),
        ] {
            assert_eq!(format_rfc3339(ns), text);
            assert_eq!(parse_rfc3339(text), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-25 12:00:00"), None);
    }
}
