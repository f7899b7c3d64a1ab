//! What both plugins record of a container's privilege: its capability bounding set and whether
//! it is privileged (docs/decisions.md #36). The hook takes the set from the OCI spec; podmap-nri,
//! whose NRI messages carry no capabilities, reads it from the container's init in /proc. Both
//! judge "privileged" against the same set, [`node_capabilities`], through
//! [`ContainerMeta::set_capabilities`](podmap_bpf::ContainerMeta::set_capabilities).

use std::path::Path;
use std::sync::OnceLock;

use podmap_proto::caps::full_set;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has no {field} line")]
    Missing { path: String, field: &'static str },
    #[error("{path}: {field} is not a number: {value:?}")]
    Parse {
        path: String,
        field: &'static str,
        value: String,
    },
}

/// A process's capability sets as /proc/<pid>/status shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcCaps {
    pub bounding: u64,
    pub effective: u64,
}

fn read(path: &Path) -> Result<String, PrivilegeError> {
    std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The kernel's last capability (/proc/sys/kernel/cap_last_cap), read once per process: it is
/// fixed when the kernel is built.
pub fn cap_last_cap() -> Result<u32, PrivilegeError> {
    static LAST: OnceLock<u32> = OnceLock::new();
    if let Some(v) = LAST.get() {
        return Ok(*v);
    }
    let path = Path::new("/proc/sys/kernel/cap_last_cap");
    let text = read(path)?;
    let v = text.trim().parse().map_err(|_| PrivilegeError::Parse {
        path: path.display().to_string(),
        field: "cap_last_cap",
        value: text.trim().to_string(),
    })?;
    Ok(*LAST.get_or_init(|| v))
}

/// Every capability this node can give a container: each the kernel knows (up to
/// [`cap_last_cap`]) that the host's init (pid 1) holds in its bounding set. A runtime cannot
/// hand out what its ancestors dropped (a node, or a VM, booted with a narrowed bounding set),
/// so CRI's `privileged: true` gives exactly this; a container holding all of it is
/// privileged. pid 1 unreadable: every capability the kernel knows. Read once per process.
pub fn node_capabilities() -> Result<u64, PrivilegeError> {
    static NODE: OnceLock<u64> = OnceLock::new();
    if let Some(v) = NODE.get() {
        return Ok(*v);
    }
    let known = full_set(cap_last_cap()?);
    let init = proc_caps(Path::new("/proc"), 1).map_or(u64::MAX, |c| c.bounding);
    Ok(*NODE.get_or_init(|| known & init))
}

/// The bounding and effective sets of process `pid`, from /proc/<pid>/status under `proc_root`
/// (`/proc` on a host).
pub fn proc_caps(proc_root: &Path, pid: u32) -> Result<ProcCaps, PrivilegeError> {
    let path = proc_root.join(pid.to_string()).join("status");
    parse_status(&read(&path)?, &path.display().to_string())
}

/// The CapBnd and CapEff lines of a /proc/<pid>/status text (hexadecimal masks).
pub fn parse_status(text: &str, path: &str) -> Result<ProcCaps, PrivilegeError> {
    let field = |name: &'static str| -> Result<u64, PrivilegeError> {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| PrivilegeError::Missing {
                path: path.to_string(),
                field: name,
            })?
            .trim();
        u64::from_str_radix(value, 16).map_err(|_| PrivilegeError::Parse {
            path: path.to_string(),
            field: name,
            value: value.to_string(),
        })
    };
    Ok(ProcCaps {
        bounding: field("CapBnd")?,
        effective: field("CapEff")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_and_their_absence_told() {
        let text = "Name:\tsleep\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n\
                    CapEff:\t00000000a80425fb\nCapBnd:\t000001ffffffffff\nCapAmb:\t0\n";
        assert_eq!(
            parse_status(text, "s").unwrap(),
            ProcCaps {
                bounding: 0x1ff_ffff_ffff,
                effective: 0xa804_25fb
            }
        );
        assert!(matches!(
            parse_status("Name:\tx\nCapEff:\t0\n", "s"),
            Err(PrivilegeError::Missing {
                field: "CapBnd",
                ..
            })
        ));
        assert!(matches!(
            parse_status("CapEff:\tzz\nCapBnd:\t0\n", "s"),
            Err(PrivilegeError::Parse {
                field: "CapEff",
                ..
            })
        ));
    }

    /// This very process, read as the plugin reads a container's init.
    #[test]
    fn a_live_processs_sets_are_read() {
        let me = proc_caps(Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(me.effective & !me.bounding, 0, "effective within bounding");
        let last = cap_last_cap().unwrap();
        assert!((36..64).contains(&last), "{last}");
        let node = node_capabilities().unwrap();
        assert_eq!(node & !full_set(last), 0, "only what the kernel knows");
        assert_eq!(
            node,
            full_set(last) & proc_caps(Path::new("/proc"), 1).unwrap().bounding
        );
        assert!(matches!(
            proc_caps(Path::new("/nonexistent"), 1),
            Err(PrivilegeError::Read { .. })
        ));
    }
}
