//! Kernel boot-time nanoseconds to wall-clock RFC 3339 strings.

/// Boot-time ns now (the clock of bpf_ktime_get_boot_ns and of the container records).
pub use podmap_bpf::maps::boot_ns;

/// Converts boot-time stamps to wall-clock time. The offset is refreshed per batch, so a clock
/// step shows up in the next batch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: u64,
}

impl WallClock {
    pub fn now() -> Self {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
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
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let diff = w.wall_ns(boot_ns()).abs_diff(real);
        assert!(diff < 1_000_000_000, "{diff}");
    }
}
