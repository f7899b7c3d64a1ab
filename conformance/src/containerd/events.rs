//! Reading podmapd's event lines in the containerd suites: which container an event names, its
//! arguments, and its time as wall-clock nanoseconds (to compare with a record's creation).

use serde_json::Value;

/// The container id an event names: the mapped container's, or for an `unknown` event the one
/// read from its cgroup path.
pub fn container_id(ev: &Value) -> Option<&str> {
    ev["container"]["id"].as_str()
}

pub fn is(ev: &Value, kind: &str) -> bool {
    ev["type"] == kind
}

pub fn binary(ev: &Value) -> &str {
    ev["process"]["binary"].as_str().unwrap_or("")
}

pub fn pid(ev: &Value) -> u64 {
    ev["process"]["pid"].as_u64().unwrap_or(0)
}

pub fn args_contain(ev: &Value, needle: &str) -> bool {
    ev["process"]["args"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains(needle)))
    })
}

/// The event's `time` (RFC 3339, UTC, `Z`) as nanoseconds since the epoch.
pub fn time_ns(ev: &Value) -> Option<u64> {
    parse_rfc3339_utc(ev["time"].as_str()?)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2026-11-25T12:00:00.123456789Z"),
            Some(1_795_608_000_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(parse_rfc3339_utc("2026-11-25 12:00:00"), None);
    }
}
