//! The programs' links, pinned under `<bpffs dir>/links`, so that kill, deny and attribution in
//! the kernel keep acting while podmapd is down: a crash, an OOM kill, a liveness restart, an
//! upgrade (docs/decisions.md #30). Removing the pin directory once podmapd has stopped detaches
//! everything; while it runs, it holds the links and pins them again (`pin_watch`).
//!
//! At start podmapd has loaded its programs (not attached them) and then either
//!
//! - **adopts** the pinned links, when they run the very programs it has just loaded: the same
//!   kernel tag, the same pinned maps, the same read-only configuration (`.rodata`: the tag does
//!   not cover it). Nothing is detached or attached, so there is no gap and no overlap. This is the
//!   common case: the same binary after a crash or a restart. A program the previous podmapd
//!   could not attach is attached now, beside them.
//! - **replaces** them otherwise (another version or configuration): it attaches its own first,
//!   pins them in `links_new`, swaps the two directories in one `renameat2(RENAME_EXCHANGE)`, and
//!   only then removes the old set. At every moment one generation or both are attached, never
//!   none. The price is the overlap, from the first new attach to the old set's removal (pinning
//!   up to ten links and two directory operations: typically well under a millisecond): an event
//!   in it runs both generations, so it may be queued twice, and an exec a kill rule names gets
//!   two SIGKILLs (harmless). It is not deduplicated (the two records differ in their timestamps);
//!   the replacement is logged and shown in `podmap status` with the overlap's length.
//!
//! The open rules' programs are in the set only while open rules are in force
//! (`open_tracepoints`): a start that finds none in force detaches their pinned links.
//!
//! An interrupted swap leaves `links_new` behind: with `links` present it is the half that lost
//! (a new set never swapped in, or the old one not yet removed) and is removed; alone, it is the
//! only set there is and becomes `links`.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{MapData, MapInfo};
use aya::programs::links::FdLink;
use aya::programs::links::PinnedLink;
use aya::programs::ProgramInfo;
use aya::Ebpf;

use crate::attach::{attach_one, Need, Prog, ProgramsError, When, PROGRAMS};

/// The directory of the pinned links, under the pin directory.
pub const LINKS_DIR: &str = "links";
/// Where a replacement set is pinned before the swap (bpffs refuses dots in names).
pub const LINKS_NEW_DIR: &str = "links_new";

/// How podmapd took over the links at start (sent by podmapd's loader process as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// "adopted" (the pinned links ran these programs and were kept), "replaced" (they ran
    /// other programs and were swapped for these) or "attached" (there were none).
    pub mode: std::borrow::Cow<'static, str>,
    /// Why the pinned links were replaced, when they were.
    pub reason: Option<String>,
    /// The programs attached now, by name.
    pub programs: Vec<String>,
    /// Replaced: how long both generations were attached.
    pub overlap: Option<Duration>,
    /// BPF-LSM did not attach: why.
    pub lsm_error: Option<String>,
}

/// Adopts or replaces the pinned links. `candidates` are the programs loaded; of those that
/// attach only while open rules are in force, `open_rules` says whether they are now (the rule
/// tables the running programs read say so).
pub(crate) fn install(
    ebpf: &mut Ebpf,
    dir: &Path,
    candidates: &[Prog],
    open_rules: bool,
) -> Result<LinkStatus, ProgramsError> {
    let wanted: Vec<Prog> = candidates
        .iter()
        .filter(|p| p.when == When::Always || open_rules)
        .copied()
        .collect();
    let err = |detail: String| ProgramsError::Links {
        dir: dir.to_owned(),
        detail,
    };
    let cur = dir.join(LINKS_DIR);
    let new = dir.join(LINKS_NEW_DIR);
    if new.exists() {
        if cur.exists() {
            std::fs::remove_dir_all(&new)
        } else {
            std::fs::rename(&new, &cur)
        }
        .map_err(|e| err(format!("finishing an interrupted swap: {e}")))?;
    }
    let pinned = pinned_programs(&cur);
    if pinned.is_empty() {
        // An empty `links` (an uninstall that removed only the pins) has nothing to swap out.
        let _ = std::fs::remove_dir(&cur);
        return replace(ebpf, dir, &wanted, None);
    }
    match adoptable(ebpf, dir, candidates, &pinned) {
        Ok(()) => adopt(ebpf, dir, &wanted, &pinned),
        Err(reason) => {
            tracing::warn!(%reason, "the pinned programs differ from this podmapd's: replacing them (both run for a moment)");
            replace(ebpf, dir, &wanted, Some(reason))
        }
    }
}

/// The pinned links by name, each with the program it runs (or why that cannot be told).
fn pinned_programs(cur: &Path) -> Vec<(String, Result<ProgramInfo, String>)> {
    let Ok(entries) = std::fs::read_dir(cur) else {
        return vec![];
    };
    let mut by_id: Option<HashMap<u32, ProgramInfo>> = None;
    let mut out = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let info = PinnedLink::from_pin(e.path())
            .map_err(|e| e.to_string())
            .and_then(|l| FdLink::from(l).info().map_err(|e| e.to_string()))
            .and_then(|link| {
                let all = by_id.get_or_insert_with(|| {
                    aya::programs::loaded_programs()
                        .flatten()
                        .map(|p| (p.id(), p))
                        .collect()
                });
                all.remove(&link.program_id())
                    .ok_or_else(|| format!("program {} not found", link.program_id()))
            });
        out.push((name, info));
    }
    out
}

/// Whether the pinned links run exactly the programs this process loaded; if not, why.
fn adoptable(
    ebpf: &Ebpf,
    dir: &Path,
    candidates: &[Prog],
    pinned: &[(String, Result<ProgramInfo, String>)],
) -> Result<(), String> {
    for p in PROGRAMS
        .iter()
        .filter(|p| p.need == Need::Required && p.when == When::Always)
    {
        if !pinned.iter().any(|(n, _)| n == p.name) {
            return Err(format!("{} is not pinned", p.name));
        }
    }
    let lsm_pinned = pinned
        .iter()
        .filter(|(n, _)| PROGRAMS.iter().any(|p| p.name == n && p.need == Need::Lsm))
        .count();
    if lsm_pinned == 1 {
        return Err("only one of the two LSM programs is pinned".into());
    }
    let pinned_maps = pinned_map_ids(dir);
    for (name, old) in pinned {
        if !candidates.iter().any(|p| p.name == name) {
            return Err(format!("{name} is not a program this podmapd attaches"));
        }
        let old = old.as_ref().map_err(|e| format!("{name}: {e}"))?;
        let new = ebpf
            .program(name)
            .ok_or_else(|| format!("{name} missing"))?
            .info()
            .map_err(|e| format!("{name}: {e}"))?;
        same_program(&new, old, &pinned_maps).map_err(|why| format!("{name}: {why}"))?;
    }
    Ok(())
}

/// The ids of the maps pinned in the pin directory (shared and podmapd's own).
fn pinned_map_ids(dir: &Path) -> HashSet<u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| MapData::from_pin(e.path()).ok()?.info().ok())
        .map(|i| i.id())
        .collect()
}

fn maps_of(p: &ProgramInfo) -> Result<Vec<(u32, String)>, String> {
    let ids = p
        .map_ids()
        .map_err(|e| e.to_string())?
        .ok_or("the kernel does not tell a program's maps")?;
    ids.into_iter()
        .map(|id| {
            let info = MapInfo::from_id(id).map_err(|e| e.to_string())?;
            Ok((id, info.name_as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// Same instructions (the tag), the same pinned maps, and private maps of the same names with
/// the same read-only data.
fn same_program(new: &ProgramInfo, old: &ProgramInfo, pinned: &HashSet<u32>) -> Result<(), String> {
    if new.tag() != old.tag() {
        return Err(format!(
            "tag {:016x}, this podmapd's {:016x}",
            old.tag(),
            new.tag()
        ));
    }
    let (new_maps, old_maps) = (maps_of(new)?, maps_of(old)?);
    if new_maps.len() != old_maps.len() {
        return Err("another set of maps".into());
    }
    for (id, name) in &new_maps {
        if pinned.contains(id) {
            if !old_maps.iter().any(|(o, _)| o == id) {
                return Err(format!("uses another {name} than the one pinned"));
            }
            continue;
        }
        let Some((old_id, _)) = old_maps
            .iter()
            .find(|(o, n)| n == name && !pinned.contains(o))
        else {
            return Err(format!("has no map {name}"));
        };
        // The loader's settings (v1 controller, wake-up threshold) live here, not in the tag.
        if name.contains("rodata") && map_value(*id) != map_value(*old_id) {
            return Err("loaded with other settings (.rodata differs)".into());
        }
    }
    Ok(())
}

/// Element 0 of a (non-per-CPU) array map, as bytes.
fn map_value(id: u32) -> Option<Vec<u8>> {
    use std::os::fd::{AsFd, AsRawFd};
    let map = MapData::from_id(id).ok()?;
    let size = map.info().ok()?.value_size() as usize;
    let mut value = vec![0u8; size];
    let key = 0u32;
    // `union bpf_attr` as BPF_MAP_LOOKUP_ELEM reads it.
    #[repr(C)]
    struct Lookup {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Lookup {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: BPF_MAP_LOOKUP_ELEM reads a 4-byte key and writes value_size bytes, both buffers
    // live and that large for the call; aya 0.14 has no untyped lookup.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            1, // BPF_MAP_LOOKUP_ELEM
            &attr as *const Lookup,
            size_of::<Lookup>(),
        )
    };
    (r == 0).then_some(value)
}

fn pin(link: FdLink, path: &Path) -> Result<(), String> {
    // The pin holds the link; our fd closes when the PinnedLink drops.
    link.pin(path)
        .map(drop)
        .map_err(|e| format!("pinning {}: {e}", path.display()))
}

/// Keeps the pinned links of the `wanted` programs; attaches and pins beside them what they
/// lack, and detaches the pinned ones no longer wanted (the open rules' programs once no open
/// rule is in force).
fn adopt(
    ebpf: &mut Ebpf,
    dir: &Path,
    wanted: &[Prog],
    pinned: &[(String, Result<ProgramInfo, String>)],
) -> Result<LinkStatus, ProgramsError> {
    let err = |detail: String| ProgramsError::Links {
        dir: dir.to_owned(),
        detail,
    };
    let cur = dir.join(LINKS_DIR);
    let missing: Vec<Prog> = wanted
        .iter()
        .filter(|p| !pinned.iter().any(|(n, _)| n == p.name))
        .copied()
        .collect();
    let mut kept = vec![];
    for (name, _) in pinned {
        if wanted.iter().any(|p| p.name == name) {
            kept.push(name.clone());
            continue;
        }
        // Nothing else holds it: the pin gone, the link detaches.
        let path = cur.join(name);
        std::fs::remove_file(&path)
            .map_err(|e| err(format!("detaching {name} ({}): {e}", path.display())))?;
        tracing::info!(program = %name, "detached: no open rule is in force");
    }
    let mut status = attach_all(ebpf, &cur, &missing).map_err(err)?;
    status.mode = "adopted".into();
    status.programs.extend(kept);
    status.programs.sort();
    tracing::info!(
        programs = status.programs.len(),
        "adopted the pinned links: the programs never stopped"
    );
    Ok(status)
}

/// Attaches `progs` and pins them in `into`. A required program that fails is an error; an
/// optional one is skipped; the LSM pair is pinned both or neither.
fn attach_all(ebpf: &mut Ebpf, into: &Path, progs: &[Prog]) -> Result<LinkStatus, String> {
    let mut status = LinkStatus::default();
    let mut lsm = vec![];
    for p in progs {
        match (attach_one(ebpf, *p), p.need) {
            (Ok(link), Need::Lsm) => lsm.push((p.name, link)),
            (Ok(link), _) => {
                pin(link, &into.join(p.name))?;
                status.programs.push(p.name.to_string());
            }
            (Err(e), Need::Required) => return Err(e),
            (Err(e), Need::Optional) => {
                tracing::debug!(error = %e, "optional tracepoint not attached")
            }
            (Err(e), Need::Lsm) => {
                status.lsm_error.get_or_insert(e);
            }
        }
    }
    let lsm_wanted = progs.iter().filter(|p| p.need == Need::Lsm).count();
    if status.lsm_error.is_none() && lsm.len() == lsm_wanted {
        for (name, link) in lsm {
            pin(link, &into.join(name))?;
            status.programs.push(name.to_string());
        }
    }
    Ok(status)
}

/// Attaches this podmapd's programs in `links_new`, swaps the directories, removes the old set.
fn replace(
    ebpf: &mut Ebpf,
    dir: &Path,
    candidates: &[Prog],
    reason: Option<String>,
) -> Result<LinkStatus, ProgramsError> {
    let err = |detail: String| ProgramsError::Links {
        dir: dir.to_owned(),
        detail,
    };
    let cur = dir.join(LINKS_DIR);
    let new = dir.join(LINKS_NEW_DIR);
    std::fs::create_dir(&new).map_err(|e| err(format!("creating {}: {e}", new.display())))?;
    let started = Instant::now();
    let mut status = match attach_all(ebpf, &new, candidates) {
        Ok(s) => s,
        Err(e) => {
            // The old set, if any, stays in force.
            let _ = std::fs::remove_dir_all(&new);
            return Err(err(e));
        }
    };
    if !cur.exists() {
        std::fs::rename(&new, &cur).map_err(|e| {
            let _ = std::fs::remove_dir_all(&new);
            err(format!(
                "renaming {} to {}: {e}",
                new.display(),
                cur.display()
            ))
        })?;
        status.mode = "attached".into();
        return Ok(status);
    }
    exchange(&new, &cur).map_err(|e| {
        let _ = std::fs::remove_dir_all(&new);
        err(format!(
            "swapping {} and {}: {e}",
            new.display(),
            cur.display()
        ))
    })?;
    // `links_new` now holds the old set: removing its pins detaches it.
    std::fs::remove_dir_all(&new).map_err(|e| {
        err(format!(
            "removing the replaced links in {}: {e}",
            new.display()
        ))
    })?;
    let overlap = started.elapsed();
    tracing::info!(
        overlap_us = overlap.as_micros() as u64,
        "replaced the pinned links"
    );
    status.mode = "replaced".into();
    status.reason = reason;
    status.overlap = Some(overlap);
    Ok(status)
}

/// Swaps two directories atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
