//! The policy maps: which containers each policy selects (written by the runtime plugins at
//! creation and kept right by podmapd), the exec and open rule tries, and whether any rules and
//! the LSM programs are live (written by podmapd).

use std::collections::HashSet;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};

use crate::layout::{
    self, podmap_member_key, podmap_policy_state, podmap_rule_ref, podmap_rule_set, Counter,
};
use crate::maps::{
    check_map, MapsError, SharedMaps, EXEC_RULES_MAP, MEMBERS_MAP, OPEN_RULES_MAP, POLICY_STATE_MAP,
};
use crate::record::{CgroupIds, CgroupKey};

type PathKey = Key<[u8; layout::POLICY_PATH_MAX]>;

pub(crate) struct PolicyMaps {
    members: HashMap<MapData, podmap_member_key, u32>,
    exec_rules: LpmTrie<MapData, [u8; layout::POLICY_PATH_MAX], podmap_rule_set>,
    open_rules: LpmTrie<MapData, [u8; layout::POLICY_PATH_MAX], podmap_rule_set>,
    state: Array<MapData, podmap_policy_state>,
}

impl PolicyMaps {
    pub(crate) fn take(
        source: &mut impl FnMut(&'static str) -> Result<aya::maps::Map, MapsError>,
        dir: &Path,
    ) -> Result<Self, MapsError> {
        let mut take = |name: &'static str, key: usize, value: usize| {
            let m = source(name)?;
            check_map(&m, dir, name, key, value)?;
            Ok::<_, MapsError>(m)
        };
        let path_key = size_of::<layout::podmap_path_key>();
        let set = size_of::<podmap_rule_set>();
        let members = take(MEMBERS_MAP, size_of::<podmap_member_key>(), 4)?;
        let exec_rules = take(EXEC_RULES_MAP, path_key, set)?;
        let open_rules = take(OPEN_RULES_MAP, path_key, set)?;
        let state = take(POLICY_STATE_MAP, 4, size_of::<podmap_policy_state>())?;
        let err = |name| move |source| MapsError::Map { name, source };
        Ok(PolicyMaps {
            members: HashMap::try_from(members).map_err(err(MEMBERS_MAP))?,
            exec_rules: LpmTrie::try_from(exec_rules).map_err(err(EXEC_RULES_MAP))?,
            open_rules: LpmTrie::try_from(open_rules).map_err(err(OPEN_RULES_MAP))?,
            state: Array::try_from(state).map_err(err(POLICY_STATE_MAP))?,
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
    let mut set = podmap_rule_set {
        count: refs.len().min(layout::RULE_REFS) as u32,
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
    #[error("path {path:?} is matched by {n} rules; at most {max} fit one entry", max = layout::RULE_REFS)]
    TooManyRefs { path: String, n: usize },
    #[error("{0}")]
    Maps(#[from] MapsError),
}

impl SharedMaps {
    /// Adds `ids` to each policy of `policy_ids` (at container creation, before it runs).
    pub fn add_memberships(
        &mut self,
        ids: &CgroupIds,
        policy_ids: &[u32],
    ) -> Result<(), MapsError> {
        for key in ids.keys() {
            for &policy_id in policy_ids {
                let k = member_key(policy_id, key);
                if let Err(source) = self.policy.members.insert(k, 1, 0) {
                    self.counters().add(Counter::MembershipErrors, 1);
                    return Err(MapsError::Map {
                        name: MEMBERS_MAP,
                        source,
                    });
                }
                self.counters().add(Counter::MembershipWrites, 1);
            }
        }
        Ok(())
    }

    pub fn remove_membership(&mut self, policy_id: u32, key: CgroupKey) -> Result<(), MapsError> {
        match self.policy.members.remove(&member_key(policy_id, key)) {
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
        self.policy
            .members
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let key = CgroupKey::from_raw(layout::podmap_cgroup_key {
                    id: k.cgroup_id,
                    hierarchy: k.hierarchy,
                    _pad: 0,
                });
                (k.policy_id, key)
            })
            .collect()
    }

    /// Replaces a rule table with `rules`: new entries first, then stale ones go, so a path that
    /// stays covered is never uncovered in between.
    pub fn replace_rules(
        &mut self,
        table: RuleTable,
        rules: &[PathRule],
    ) -> Result<(), RulesError> {
        let mut keep = Vec::with_capacity(rules.len());
        for r in rules {
            if r.refs.len() > layout::RULE_REFS {
                return Err(RulesError::TooManyRefs {
                    path: r.path.clone(),
                    n: r.refs.len(),
                });
            }
            let key =
                path_key(&r.path, r.exact).ok_or_else(|| RulesError::BadPath(r.path.clone()))?;
            keep.push((key, rule_set(&r.refs)));
        }
        let (trie, name) = match table {
            RuleTable::Exec => (&mut self.policy.exec_rules, EXEC_RULES_MAP),
            RuleTable::Open => (&mut self.policy.open_rules, OPEN_RULES_MAP),
        };
        for (key, set) in &keep {
            trie.insert(key, set, 0)
                .map_err(|source| MapsError::Map { name, source })?;
        }
        let wanted: HashSet<(u32, [u8; layout::POLICY_PATH_MAX])> = keep
            .iter()
            .map(|(k, _)| (k.prefix_len(), k.data()))
            .collect();
        let stale: Vec<PathKey> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
        Ok(())
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
        self.policy
            .state
            .set(0, st, 0)
            .map_err(|source| MapsError::Map {
                name: POLICY_STATE_MAP,
                source,
            })
    }
}

fn member_key(policy_id: u32, key: CgroupKey) -> podmap_member_key {
    let raw = key.to_raw();
    podmap_member_key {
        policy_id,
        hierarchy: raw.hierarchy,
        cgroup_id: raw.id,
    }
}
