//! Kernel boot-time nanoseconds to wall-clock RFC 3339 strings.

use std::fmt::Write;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Boot-time ns now (the clock of bpf_ktime_get_boot_ns).
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// Converts boot-time stamps to wall-clock time. The offset is refreshed per batch, so a clock
/// step shows up in the next batch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: u64,
}

impl WallClock {
    pub fn now() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = boot_ns();
        WallClock {
            offset_ns: real.saturating_sub(boot),
        }
    }

    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        self.offset_ns + boot_ns
    }

    pub fn format(&self, boot_ns: u64) -> String {
        format_rfc3339(self.wall_ns(boot_ns))
    }
}

/// `2026-11-25T12:00:00.123456789Z`
pub fn format_rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = String::with_capacity(30);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-25T12:00:00.123456789Z
        assert_eq!(
            format_rfc3339(1_795_608_000_123_456_789),
            "2026-11-25T12:00:00.123456789Z"
        );
        // Leap day.
        assert_eq!(
            format_rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn wall_clock_is_near_now() {
        let w = WallClock::now();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let diff = w.wall_ns(boot_ns()).abs_diff(real);
        assert!(diff < 1_000_000_000, "{diff}");
    }
}
