//! The kernel's rule tables: one entry per distinct (table, path, exact or prefix), each listing
//! every rule that applies there, prefixes closed over because the kernel's longest-prefix lookup
//! finds one entry.

use std::collections::{BTreeMap, BTreeSet};

use crate::format::{Access, Action, PodPolicy};

/// How many rule references one kernel entry holds, and how many entries each rule table holds:
/// bpf/c/podmap.h's PODMAP_RULE_REFS and PODMAP_MAX_RULES (podmapd's tests check they agree;
/// this crate does not depend on the kernel crate, so that the OCI hook's policy code stays
/// small).
pub const KERNEL_RULE_REFS: usize = 16;
pub const KERNEL_MAX_ENTRIES: usize = 8192;
/// The bytes of a path key, its NUL included: PODMAP_POLICY_PATH_MAX (checked the same way).
pub const KERNEL_PATH_MAX: usize = 256;

/// What one kernel rule table can hold. A policy that would not fit is refused whole, so a
/// loaded policy always acts on every path it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub refs_per_entry: usize,
    pub entries_per_table: usize,
}

impl Limits {
    pub const KERNEL: Limits = Limits {
        refs_per_entry: KERNEL_RULE_REFS,
        entries_per_table: KERNEL_MAX_ENTRIES,
    };
}

pub(crate) type EntryKey = (Table, String, bool);

/// Every rule reference `p` puts straight on an entry (before prefixes are closed over).
pub(crate) fn direct_refs(p: &PodPolicy) -> Vec<(EntryKey, RuleRef)> {
    let mut out = Vec::new();
    for (idx, r) in p.spec.rules.iter().enumerate() {
        let (table, access, paths, prefixes) = match (&r.exec, &r.open) {
            (Some(m), _) => (Table::Exec, None, &m.paths, &m.prefixes),
            (None, Some(o)) => (Table::Open, Some(o.access), &o.paths, &o.prefixes),
            (None, None) => continue,
        };
        let rr = RuleRef {
            policy_id: p.id(),
            rule_index: idx as u16,
            action: r.action,
            fallback_kill: r.fallback == Some(Action::Kill),
            access,
        };
        for path in paths {
            out.push(((table, path.clone(), true), rr));
        }
        for prefix in prefixes {
            // Component prefixes: "/etc/ssl" covers "/etc/ssl" itself and "/etc/ssl/...".
            let trimmed = prefix.trim_end_matches('/');
            if !trimmed.is_empty() && !prefix.ends_with('/') {
                out.push(((table, trimmed.to_string(), true), rr));
            }
            out.push(((table, format!("{trimmed}/"), false), rr));
        }
    }
    out
}

pub(crate) type Direct = BTreeMap<EntryKey, BTreeSet<RuleRef>>;

/// The references the kernel must find at `key`: its own, and those of every prefix entry it
/// lies under (the longest-prefix lookup finds only the one entry). Prefix entries end in '/',
/// so they are the path up to each of its '/'.
pub(crate) fn closure(key: &EntryKey, layers: &[&Direct]) -> BTreeSet<RuleRef> {
    let (table, path, _) = key;
    let mut refs = BTreeSet::new();
    let mut add = |k: &EntryKey| {
        for d in layers {
            if let Some(r) = d.get(k) {
                refs.extend(r.iter().copied());
            }
        }
    };
    add(key);
    for (i, _) in path.match_indices('/') {
        add(&(*table, path[..=i].to_string(), false));
    }
    refs
}

/// Which kernel rule table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Exec,
    Open,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Exec => "exec",
            Table::Open => "open",
        }
    }
}

/// One policy rule, as the kernel tables reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: Action,
    pub fallback_kill: bool,
    /// Open rules: which opens the rule is for; none for exec rules.
    pub access: Option<Access>,
}

/// One entry of the kernel's rule tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub table: Table,
    /// An exact path, or a prefix ending in '/'.
    pub path: String,
    pub exact: bool,
    pub refs: Vec<RuleRef>,
}
