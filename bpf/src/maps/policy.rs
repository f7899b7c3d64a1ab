//! The policy maps: which containers each policy selects (written by the runtime plugins at
//! creation and kept right by podmapd), the exec and open rule tries, and whether any rules and
//! the LSM programs are live (written by podmapd).

use std::collections::HashSet;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};

use std::sync::Arc;

use crate::keys::{self, RawKey};
use crate::layout::{
    self, podmap_member_key, podmap_policy_state, podmap_rule_ref, podmap_rule_set, Counter,
};
use crate::maps::batch;
use crate::maps::counters::Counters;
use crate::maps::pins::{
    check_map, MapsError, Shape, EXEC_RULES_MAP, MEMBERS_MAP, OPEN_RULES_MAP, POLICY_STATE_MAP,
};
use podmap_cgroup::{CgroupIds, CgroupKey};

type PathKey = Key<[u8; layout::POLICY_PATH_MAX]>;

/// Handles on the policy maps, and the shared counters membership writes are counted in.
pub struct PolicyMaps {
    members: HashMap<MapData, podmap_member_key, u32>,
    exec_rules: LpmTrie<MapData, [u8; layout::POLICY_PATH_MAX], podmap_rule_set>,
    open_rules: LpmTrie<MapData, [u8; layout::POLICY_PATH_MAX], podmap_rule_set>,
    state: Array<MapData, podmap_policy_state>,
    counters: Arc<Counters>,
}

impl PolicyMaps {
    pub(crate) fn take(
        source: &mut impl FnMut(&'static str) -> Result<aya::maps::Map, MapsError>,
        counters: Arc<Counters>,
        dir: &Path,
    ) -> Result<Self, MapsError> {
        let mut take = |name: &'static str, key: usize, value: usize, max_entries: u32| {
            let m = source(name)?;
            let shape = Shape {
                key,
                value,
                max_entries,
                flags: 0,
            };
            check_map(&m, dir, name, shape)?;
            Ok::<_, MapsError>(m)
        };
        let path_key = size_of::<layout::podmap_path_key>();
        let set = size_of::<podmap_rule_set>();
        let members = take(
            MEMBERS_MAP,
            size_of::<podmap_member_key>(),
            4,
            layout::MAX_MEMBERS,
        )?;
        let exec_rules = take(EXEC_RULES_MAP, path_key, set, layout::MAX_RULES)?;
        let open_rules = take(OPEN_RULES_MAP, path_key, set, layout::MAX_RULES)?;
        let state = take(POLICY_STATE_MAP, 4, size_of::<podmap_policy_state>(), 1)?;
        let err = |name| move |source| MapsError::Map { name, source };
        Ok(PolicyMaps {
            members: HashMap::try_from(members).map_err(err(MEMBERS_MAP))?,
            exec_rules: LpmTrie::try_from(exec_rules).map_err(err(EXEC_RULES_MAP))?,
            open_rules: LpmTrie::try_from(open_rules).map_err(err(OPEN_RULES_MAP))?,
            state: Array::try_from(state).map_err(err(POLICY_STATE_MAP))?,
            counters,
        })
    }

    /// Adds `ids` to each policy of `policy_ids` (at container creation, before it runs).
    pub fn add_memberships(
        &mut self,
        ids: &CgroupIds,
        policy_ids: &[u32],
    ) -> Result<(), MapsError> {
        for key in ids.keys() {
            for &policy_id in policy_ids {
                let k = member_key(policy_id, key);
                if let Err(source) = self.members.insert(k, 1, 0) {
                    self.counters.add(Counter::MembershipErrors, 1);
                    return Err(MapsError::Map {
                        name: MEMBERS_MAP,
                        source,
                    });
                }
                self.counters.add(Counter::MembershipWrites, 1);
            }
        }
        Ok(())
    }

    pub fn remove_membership(&mut self, policy_id: u32, key: CgroupKey) -> Result<(), MapsError> {
        match self.members.remove(&member_key(policy_id, key)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(MapsError::Map {
                name: MEMBERS_MAP,
                source,
            }),
        }
    }

    /// Every (policy id, container cgroup) membership.
    pub fn memberships(&self) -> HashSet<(u32, CgroupKey)> {
        // In batches (docs/decisions.md #43).
        batch::entries(&self.members)
            .into_iter()
            .map(|(k, _)| {
                let key = keys::from_raw(layout::podmap_cgroup_key {
                    id: k.cgroup_id,
                    hierarchy: k.hierarchy,
                    _pad: 0,
                });
                (k.policy_id, key)
            })
            .collect()
    }

    /// Replaces a rule table with `rules`: new entries first, then stale ones go, so a path that
    /// stays covered is never uncovered in between. Never gives up on the table: an entry with
    /// more references than fit is written with the first [`layout::RULE_REFS`] and its true
    /// count (the programs count every hit on it, `kernel_policy_refs_truncated`); a path that
    /// cannot be a key is left out; when the table is full, stale entries go first and the
    /// entries that did not fit are tried again. Returns what could not be written as asked,
    /// one problem per entry (the policy compiler keeps within the limits, so these are the
    /// exception, reported by the caller).
    pub fn replace_rules(&mut self, table: RuleTable, rules: &[PathRule]) -> Vec<RulesError> {
        let mut problems = Vec::new();
        let mut keep = Vec::with_capacity(rules.len());
        for r in rules {
            let Some(key) = path_key(&r.path, r.exact) else {
                problems.push(RulesError::BadPath(r.path.clone()));
                continue;
            };
            if r.refs.len() > layout::RULE_REFS {
                problems.push(RulesError::TooManyRefs {
                    path: r.path.clone(),
                    n: r.refs.len(),
                });
            }
            keep.push((key, rule_set(&r.refs), &r.path));
        }
        let (trie, name) = match table {
            RuleTable::Exec => (&mut self.exec_rules, EXEC_RULES_MAP),
            RuleTable::Open => (&mut self.open_rules, OPEN_RULES_MAP),
        };
        let mut missed = Vec::new();
        for (i, (key, set, _)) in keep.iter().enumerate() {
            if trie.insert(key, set, 0).is_err() {
                missed.push(i);
            }
        }
        let wanted: HashSet<(u32, [u8; layout::POLICY_PATH_MAX])> = keep
            .iter()
            .map(|(k, _, _)| (k.prefix_len(), k.data()))
            .collect();
        let stale: Vec<PathKey> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            // Already gone (a racing delete) is what was wanted.
            let _ = trie.remove(&k);
        }
        // A full table has room now that the stale entries are gone.
        for i in missed {
            let (key, set, path) = &keep[i];
            if let Err(source) = trie.insert(key, set, 0) {
                problems.push(RulesError::Write {
                    path: (*path).clone(),
                    source: MapsError::Map { name, source },
                });
            }
        }
        problems
    }

    /// Looks `path` up as the programs do (the path and its NUL, longest prefix wins).
    pub fn match_rules(
        &self,
        table: RuleTable,
        path: &str,
    ) -> Result<Option<MatchedRules>, MapsError> {
        let Some(key) = path_key(path, true) else {
            return Ok(None);
        };
        let key = Key::new((layout::POLICY_PATH_MAX * 8) as u32, key.data());
        let (trie, name) = match table {
            RuleTable::Exec => (&self.exec_rules, EXEC_RULES_MAP),
            RuleTable::Open => (&self.open_rules, OPEN_RULES_MAP),
        };
        match trie.get(&key, 0) {
            Ok(set) => Ok(Some(decode(&set))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(source) => Err(MapsError::Map { name, source }),
        }
    }

    /// Tells the programs whether there are rules to match and whether LSM enforces deny.
    pub fn set_policy_state(
        &mut self,
        exec_rules: u32,
        open_rules: u32,
        lsm_active: bool,
    ) -> Result<(), MapsError> {
        let st = podmap_policy_state {
            exec_rules,
            open_rules,
            lsm_active: u32::from(lsm_active),
            _pad: 0,
        };
        self.state.set(0, st, 0).map_err(|source| MapsError::Map {
            name: POLICY_STATE_MAP,
            source,
        })
    }
}

/// Which rule table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTable {
    Exec,
    Open,
}

/// What a rule does, as the kernel tables store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelAction {
    Audit,
    Kill,
    Deny { fallback_kill: bool },
}

/// One policy rule referenced from a path entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: KernelAction,
    /// Open rules: applies to opens for reading / for writing.
    pub read: bool,
    pub write: bool,
}

/// One path entry: an exact path, or a prefix (which should end in '/').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: String,
    pub exact: bool,
    pub refs: Vec<RuleRef>,
}

/// What the kernel's lookup of a path finds in a rule table: the entry's references, and its
/// count (more than the references when the entry was cut to fit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRules {
    pub count: u32,
    pub refs: Vec<RuleRef>,
}

fn decode(set: &podmap_rule_set) -> MatchedRules {
    let n = (set.count as usize).min(layout::RULE_REFS);
    let refs = set.refs[..n]
        .iter()
        .map(|r| RuleRef {
            policy_id: r.policy_id,
            rule_index: r.rule_index,
            action: match r.action {
                layout::ACT_KILL => KernelAction::Kill,
                layout::ACT_DENY => KernelAction::Deny {
                    fallback_kill: r.flags & layout::RF_FALLBACK_KILL != 0,
                },
                _ => KernelAction::Audit,
            },
            read: r.flags & layout::RF_READ != 0,
            write: r.flags & layout::RF_WRITE != 0,
        })
        .collect();
    MatchedRules {
        count: set.count,
        refs,
    }
}

fn path_key(path: &str, exact: bool) -> Option<PathKey> {
    let b = path.as_bytes();
    // An exact key includes the NUL, so it only matches the whole string.
    let len = b.len() + usize::from(exact);
    if len > layout::POLICY_PATH_MAX || b.contains(&0) {
        return None;
    }
    let mut data = [0u8; layout::POLICY_PATH_MAX];
    data[..b.len()].copy_from_slice(b);
    Some(Key::new((len * 8) as u32, data))
}

fn rule_set(refs: &[RuleRef]) -> podmap_rule_set {
    // The true count, even past what fits: the programs count hits on a cut entry.
    let mut set = podmap_rule_set {
        count: u32::try_from(refs.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    for (slot, r) in set.refs.iter_mut().zip(refs) {
        let (action, mut flags) = match r.action {
            KernelAction::Audit => (layout::ACT_AUDIT, 0),
            KernelAction::Kill => (layout::ACT_KILL, 0),
            KernelAction::Deny { fallback_kill } => (
                layout::ACT_DENY,
                if fallback_kill {
                    layout::RF_FALLBACK_KILL
                } else {
                    0
                },
            ),
        };
        if r.read {
            flags |= layout::RF_READ;
        }
        if r.write {
            flags |= layout::RF_WRITE;
        }
        *slot = podmap_rule_ref {
            policy_id: r.policy_id,
            rule_index: r.rule_index,
            action,
            flags,
        };
    }
    set
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("path {0:?} is too long or holds a NUL")]
    BadPath(String),
    #[error("path {path:?} is matched by {n} rules; at most {max} fit one entry: written with the first {max}, hits counted as kernel_policy_refs_truncated", max = layout::RULE_REFS)]
    TooManyRefs { path: String, n: usize },
    #[error("writing the entry of {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: MapsError,
    },
}

fn member_key(policy_id: u32, key: CgroupKey) -> podmap_member_key {
    let raw = key.to_raw();
    podmap_member_key {
        policy_id,
        hierarchy: raw.hierarchy,
        cgroup_id: raw.id,
    }
}
