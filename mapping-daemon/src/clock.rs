//! Kernel boot-time nanoseconds to wall-clock RFC 3339 strings.

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

pub use podmap_proto::time::format_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_is_near_now() {
        let w = WallClock::now();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let diff = w.wall_ns(boot_ns()).abs_diff(real);
        assert!(diff < 1_000_000_000, "{diff}");
    }
}
