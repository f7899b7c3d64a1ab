//! Linux capabilities by name, as events and the mapping table show them: the kernel's bit
//! numbers (include/uapi/linux/capability.h) and the names `capsh` and the OCI runtime spec use,
//! upper case with the `CAP_` prefix. A bit this table does not know (a kernel newer than it) is
//! named `CAP_<n>`, so no bit is ever dropped from a set.

/// `CAP_NAMES[n]` is capability n, up to CAP_CHECKPOINT_RESTORE (40, Linux 5.9), the last the
/// kernels of this writing know.
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability that makes a process privileged whatever its uid (see
/// [`Process::is_privileged`](crate::Process::is_privileged)).
pub const CAP_SYS_ADMIN: &str = "CAP_SYS_ADMIN";

/// The name of capability `bit`: its kernel name, or `CAP_<bit>` for one this table lacks.
pub fn capability_name(bit: u32) -> String {
    match CAP_NAMES.get(bit as usize) {
        Some(n) => (*n).to_string(),
        None => format!("CAP_{bit}"),
    }
}

/// The names of the bits set in `mask`, lowest bit first.
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(capability_name)
        .collect()
}

/// The bit of a capability named as the kernel, `capsh` or an OCI spec names it: `CAP_SYS_ADMIN`,
/// `cap_sys_admin`, or `CAP_<n>` as [`capability_name`] writes a bit it does not know. None for
/// a name it cannot place.
pub fn capability_bit(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    if let Some(i) = CAP_NAMES.iter().position(|n| *n == upper) {
        return Some(i as u32);
    }
    let n: u32 = upper.strip_prefix("CAP_")?.parse().ok()?;
    (n < 64).then_some(n)
}

/// The mask of every capability a kernel whose last is `last_cap` (/proc/sys/kernel/cap_last_cap)
/// knows: what a process with all of them holds.
pub fn full_set(last_cap: u32) -> u64 {
    if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bits_round_trip() {
        for (i, n) in CAP_NAMES.iter().enumerate() {
            assert_eq!(capability_bit(n), Some(i as u32), "{n}");
            assert_eq!(capability_name(i as u32), *n);
        }
        assert_eq!(capability_bit("cap_net_raw"), Some(13));
        assert_eq!(capability_bit("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_bit("CAP_45"), Some(45));
        assert_eq!(capability_name(45), "CAP_45");
        assert_eq!(capability_bit("CAP_64"), None);
        assert_eq!(capability_bit("SYS_ADMIN"), None);
        assert_eq!(capability_bit("CAP_NONSENSE"), None);
    }

    #[test]
    fn masks_become_names_in_bit_order_with_unknown_bits_kept() {
        assert!(capability_names(0).is_empty());
        assert_eq!(
            capability_names((1 << 21) | (1 << 0) | (1 << 45)),
            ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_45"]
        );
        // What `capsh --decode=1ffffffffff` prints on a 6.x kernel, in this spelling.
        assert_eq!(capability_names(0x1ff_ffff_ffff), CAP_NAMES);
        assert_eq!(full_set(40), 0x1ff_ffff_ffff);
        assert_eq!(full_set(63), u64::MAX);
    }
}
