//! Policies in podmapd: reads the policy directory (reloading on change), writes the kernel's
//! rule tables, and keeps membership right for running containers — the runtime plugins decide
//! it at creation; podmapd applies policies added, changed or removed later, and containers
//! mapped by a plugin that did not know a policy yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
use podmap_bpf::maps::{KernelAction, PathRule, RuleRef, RuleTable};
use podmap_bpf::open_tracepoints::OpenTracepoints;
use podmap_bpf::SharedMaps;
use podmap_cgroup::CgroupKey;
use podmap_pod_cache::PodCache;
use podmap_policy::{Access, Action, KernelRule, PolicyDir, Table, Target, ACTIVE_FILE};
use podmap_proto::status::PolicyStatus;

/// Policy names by id, for policy events (read by the pipeline, written on reload).
pub type PolicyNames = Arc<RwLock<HashMap<u32, Arc<str>>>>;

pub struct PolicyManager {
    maps: SharedMaps,
    lsm_active: bool,
    policies: PolicyDir,
    names: PolicyNames,
    /// Containers as last reconciled.
    known: HashMap<CgroupKey, Known>,
    status: PolicyStatus,
    /// Current pod labels from the API server, when podmapd runs in a cluster.
    pods: Option<PodCache>,
    pod_seq: u64,
    /// The record map's generation at the last walk (see `SharedMaps::records_generation`).
    walked_generation: Option<u64>,
    /// Memberships without a record, with when they were first seen so; see `sweep_orphans`.
    orphans: HashMap<(u32, CgroupKey), Instant>,
    last_orphan_sweep: Option<Instant>,
    /// The record map's generation and the memberships written when the last walk for orphans
    /// began, and when it was: see `sweep_orphans`.
    orphan_walk: Option<((u64, u64), Instant)>,
    /// podmap's own namespace: no policy selects its pods.
    own_namespace: Option<String>,
    open: OpenPrograms,
}

/// The open rules' programs, attached while open rules are in force.
#[derive(Default)]
struct OpenPrograms {
    /// None: this manager writes the tables only (tests without programs).
    tracepoints: Option<OpenTracepoints>,
    /// Open rule entries in the kernel's table now.
    entries: usize,
    /// Why the programs could not be attached or detached, while that lasts (also in the
    /// status's errors).
    error: Option<String>,
}

/// What a tick looks at besides membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The policy directory: reloaded if its listing changed.
    pub dir: bool,
    /// The shared maps' pins: put back where they went missing.
    pub pins: bool,
}

impl OpenPrograms {
    /// Attaches the open rules' programs when open rules are in force and any of them is not
    /// attached, detaches them when none are. A failure is logged once, kept in the status's
    /// errors and counted in `open_tracepoint_failures`, and tried again at every tick; a
    /// success takes it out of the errors.
    fn sync(&mut self, status: &mut PolicyStatus) {
        let Some(t) = &mut self.tracepoints else {
            return;
        };
        let want = self.entries > 0;
        let result = match (want, t.attached().is_empty()) {
            (true, _) if !t.complete() => t
                .attach()
                .map_err(|e| format!("open rules cannot act: attaching their tracepoints: {e}")),
            (false, false) => t.detach().map_err(|e| {
                format!("no open rule is in force but their tracepoints stay attached: {e}")
            }),
            _ => Ok(()),
        };
        status.open_tracepoints = names(t.attached());
        match result {
            Ok(()) => {
                if let Some(e) = self.error.take() {
                    status.errors.retain(|x| *x != e);
                }
            }
            Err(e) => {
                if self.error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "the open rules' tracepoints");
                    status.open_tracepoint_failures += 1;
                    if let Some(old) = self.error.replace(e.clone()) {
                        status.errors.retain(|x| *x != old);
                    }
                    status.errors.push(e);
                }
            }
        }
    }
}

fn names(programs: &[&str]) -> Vec<String> {
    programs.iter().map(|p| p.to_string()).collect()
}

/// How often memberships are checked against the record map: a walk of the membership map.
const ORPHAN_SWEEP: Duration = Duration::from_secs(10);
/// The longest the orphan sweep goes without walking the maps, whatever the counters say.
const ORPHAN_FULL_SWEEP: Duration = Duration::from_secs(60);
/// How long a membership may lack its record before it goes: a plugin writes the membership
/// just before the record (so not even the first exec escapes), and that must not be undone.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// What selectors look at, per container.
struct Known {
    pod_uid: Option<String>,
    namespace: String,
    labels: BTreeMap<String, String>,
    name: String,
    sandbox: bool,
}

fn kernel_action(a: Action, fallback_kill: bool) -> KernelAction {
    match a {
        Action::Audit => KernelAction::Audit,
        Action::Kill => KernelAction::Kill,
        Action::Deny => KernelAction::Deny { fallback_kill },
    }
}

/// The compiled rules as the kernel tables take them.
fn tables(rules: &[KernelRule]) -> (Vec<PathRule>, Vec<PathRule>) {
    let (mut exec, mut open) = (Vec::new(), Vec::new());
    for r in rules {
        let refs = r
            .refs
            .iter()
            .map(|x| {
                let (read, write) = match x.access {
                    None => (false, false),
                    Some(Access::Read) => (true, false),
                    Some(Access::Write) => (false, true),
                    Some(Access::Any) => (true, true),
                };
                RuleRef {
                    policy_id: x.policy_id,
                    rule_index: x.rule_index,
                    action: kernel_action(x.action, x.fallback_kill),
                    read,
                    write,
                }
            })
            .collect();
        let entry = PathRule {
            path: r.path.clone(),
            exact: r.exact,
            refs,
        };
        match r.table {
            Table::Exec => exec.push(entry),
            Table::Open => open.push(entry),
        }
    }
    (exec, open)
}

impl PolicyManager {
    /// `names` is filled on every reload, for whoever shares it (events, the containers table).
    pub fn new(
        dir: &Path,
        maps: SharedMaps,
        lsm_active: bool,
        pods: Option<PodCache>,
        names: PolicyNames,
    ) -> Self {
        PolicyManager {
            maps,
            lsm_active,
            policies: PolicyDir::new(dir),
            names,
            known: HashMap::new(),
            status: PolicyStatus {
                dir: dir.display().to_string(),
                ..Default::default()
            },
            pods,
            pod_seq: 0,
            walked_generation: None,
            orphans: HashMap::new(),
            last_orphan_sweep: None,
            orphan_walk: None,
            own_namespace: None,
            open: OpenPrograms::default(),
        }
    }

    /// Attaches `open` while open rules are in force and detaches it when none are.
    pub fn with_open_tracepoints(mut self, open: OpenTracepoints) -> Self {
        self.status.open_tracepoints = names(open.attached());
        self.open.tracepoints = Some(open);
        self
    }

    /// Never selects pods of `namespace` (podmap's own), whatever a policy says.
    pub fn with_own_namespace(mut self, namespace: Option<String>) -> Self {
        self.own_namespace = namespace.filter(|ns| !ns.is_empty());
        self
    }

    pub fn status(&self) -> PolicyStatus {
        self.status.clone()
    }

    /// The directory the policies are read from.
    pub fn dir(&self) -> &Path {
        self.policies.dir()
    }

    /// Whether the last look at the directory failed to read it or one of its files: it must
    /// be looked at again whether or not anything says it changed.
    pub fn dir_failing(&self) -> bool {
        self.policies.needs_look()
    }

    /// Looks at the directory and the pins, reloads on a change of the directory, then
    /// reconciles membership.
    pub fn tick(&mut self) {
        self.tick_looking(Look {
            dir: true,
            pins: true,
        });
    }

    /// Reconciles membership (cheap when nothing changed: a look at the record map's generation
    /// and the pod cache's changes); first, as `look` says, puts back removed pins and reloads
    /// on a change of the directory (a listing and a `stat` per entry each).
    pub fn tick_looking(&mut self, look: Look) {
        if look.pins {
            // The pins of the maps the programs read stay where the plugins open them
            // (podmap-bpf's PinWatch).
            self.maps.keep_pins();
            if let Some(t) = &mut self.open.tracepoints {
                t.keep_pins(&self.maps.counters);
            }
        }
        if self.open.error.is_some() {
            // Tried again at every tick until the programs follow the rules.
            self.open.sync(&mut self.status);
        }
        let mut reloaded = false;
        // A directory or file that could not be read is looked at again at every tick until it
        // can: no event need say when that changes.
        if look.dir || self.policies.needs_look() {
            reloaded = self.policies.refresh();
            if reloaded {
                self.apply();
            }
        }
        // A directory that stays unreadable fails every look without changing the set.
        self.status.read_failures = self.policies.read_failures();
        self.reconcile(reloaded);
        if self
            .last_orphan_sweep
            .is_none_or(|t| t.elapsed() >= ORPHAN_SWEEP / 2)
        {
            self.sweep_orphans(Instant::now());
        }
    }

    /// Removes memberships whose container has no record (any more): reconciliation only
    /// follows records it saw go, so without this the memberships of containers removed while
    /// podmapd was down would stay, and fill the membership map until new containers could
    /// not join their policies. A membership goes only once it has lacked its record for
    /// [`ORPHAN_GRACE`] on two looks.
    fn sweep_orphans(&mut self, now: Instant) {
        self.last_orphan_sweep = Some(now);
        // A membership loses its record only when a record goes (the generation moves) or a
        // membership is written (counted): after a walk that left no candidate, with neither,
        // there is nothing to find, and two map walks are saved (each a look at every bucket
        // of the preallocated maps). Walked every ORPHAN_FULL_SWEEP all the same.
        let stamp = (
            self.maps.records.records_generation(),
            self.maps.counters.get(Counter::MembershipWrites),
        );
        if self.orphans.is_empty()
            && self.orphan_walk.is_some_and(|(seen, at)| {
                seen == stamp && now.duration_since(at) < ORPHAN_FULL_SWEEP
            })
        {
            return;
        }
        self.orphan_walk = Some((stamp, now));
        let records: HashSet<CgroupKey> = self.maps.records.keys().into_iter().collect();
        let orphaned: HashSet<(u32, CgroupKey)> = self
            .maps
            .policy
            .memberships()
            .into_iter()
            .filter(|(_, k)| !records.contains(k))
            .collect();
        // Forget those that found their record (or went) since the last look.
        self.orphans.retain(|m, _| orphaned.contains(m));
        let mut removed = 0;
        for m in orphaned {
            let since = *self.orphans.entry(m).or_insert(now);
            if now.duration_since(since) < ORPHAN_GRACE {
                continue;
            }
            match self.maps.policy.remove_membership(m.0, m.1) {
                Ok(()) => {
                    self.orphans.remove(&m);
                    removed += 1;
                }
                Err(e) => tracing::warn!(error = %e, "removing an orphaned policy membership"),
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed policy memberships of containers that have no record any more"
            );
            self.status.orphan_memberships_removed += removed;
            self.status.memberships = self.maps.policy.memberships().len() as u64;
        }
    }

    /// Writes the kernel tables and names for the freshly loaded policies. Never gives up part
    /// way: an entry that cannot be written as asked is reported and counted, and everything
    /// else (the other entries, the other table, names, status) still goes out.
    fn apply(&mut self) {
        let next = self.policies.set();
        let mut errors: Vec<String> = next.errors.iter().map(ToString::to_string).collect();
        for e in &errors {
            // Only what is new: a directory that stays unreadable is looked at every tick.
            if !self.status.errors.contains(e) {
                tracing::warn!(error = %e, "policy refused");
            }
        }
        let (exec, open) = tables(&next.compile());
        // The programs before their first rule and after their last: an open rule never sits
        // in the table with nothing attached to read it.
        if !open.is_empty() {
            self.open.entries = open.len();
            self.open.sync(&mut self.status);
        }
        for (table, rules) in [(RuleTable::Exec, &exec), (RuleTable::Open, &open)] {
            for e in self.maps.policy.replace_rules(table, rules) {
                tracing::error!(error = %e, "writing the policy rule tables");
                self.status.rule_write_failures += 1;
                errors.push(format!("rule tables: {e}"));
            }
        }
        if let Err(e) =
            self.maps
                .policy
                .set_policy_state(exec.len() as u32, open.len() as u32, self.lsm_active)
        {
            tracing::error!(error = %e, "writing the policy state");
            self.status.rule_write_failures += 1;
            errors.push(format!("policy state: {e}"));
        }
        // The plugins decide new containers' memberships from this set too (proto's
        // `PluginPolicies`). A directory that does not exist has nothing to publish.
        let dir = self.policies.dir();
        if dir.is_dir() {
            if let Err(e) = next.publish(dir) {
                // Not a stale set either: without the file the plugins read the directory.
                let _ = std::fs::remove_file(dir.join(ACTIVE_FILE));
                let e = format!(
                    "publishing the policies in force to {}: {e}; the runtime plugins read the \
                     directory themselves (a broken file there is not carried for them)",
                    dir.join(ACTIVE_FILE).display()
                );
                tracing::warn!("{e}");
                errors.push(e);
            }
        }
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = next
            .policies
            .iter()
            .map(|l| (l.policy.id(), Arc::from(l.policy.name())))
            .collect();
        self.status.loaded = next
            .policies
            .iter()
            .map(|l| format!("{} ({})", l.policy.name(), l.source))
            .collect();
        if open.is_empty() {
            self.open.entries = 0;
            self.open.sync(&mut self.status);
        }
        errors.extend(self.open.error.clone());
        self.status.errors = errors;
        self.status.reloads = self.policies.reloads();
        self.status.read_failures = self.policies.read_failures();
        tracing::info!(
            policies = next.policies.len(),
            refused = next.errors.len(),
            exec_entries = exec.len(),
            open_entries = open.len(),
            "policies loaded"
        );
    }

    /// Makes membership match the policies for every mapped container. With `full`, every
    /// container is re-evaluated; otherwise only containers that appeared, went, or changed.
    fn reconcile(&mut self, full: bool) {
        // Pods relabelled through the API server: their containers are evaluated again.
        let relabelled: HashSet<String> = match &self.pods {
            Some(p) => {
                let (seq, uids) = p.changes_since(self.pod_seq);
                self.pod_seq = seq;
                uids.into_iter().collect()
            }
            None => HashSet::new(),
        };
        // Read before the walk: a record written during it moves the generation again, so
        // the next tick walks once more.
        let generation = self.maps.records.records_generation();
        if !full && relabelled.is_empty() && self.walked_generation == Some(generation) {
            return;
        }
        self.walked_generation = Some(generation);
        let keys: HashSet<CgroupKey> = self.maps.records.keys().into_iter().collect();
        let mut changed: Vec<CgroupKey> = Vec::new();
        let gone: Vec<CgroupKey> = self
            .known
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for k in &gone {
            self.known.remove(k);
        }
        for k in &keys {
            let stale = self
                .known
                .get(k)
                .is_none_or(|c| c.pod_uid.as_ref().is_some_and(|u| relabelled.contains(u)));
            if full || stale {
                match self.maps.records.meta(*k) {
                    Ok(Some(m)) => {
                        let pod_uid = m.pod_uid.map(|u| u.0);
                        let labels = pod_uid
                            .as_deref()
                            .and_then(|u| self.pods.as_ref()?.get(u))
                            .map(|p| p.labels.to_map())
                            .unwrap_or(m.labels);
                        self.known.insert(
                            *k,
                            Known {
                                pod_uid,
                                namespace: m.namespace,
                                labels,
                                name: m.name,
                                sandbox: m.sandbox,
                            },
                        );
                        changed.push(*k);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "reading container metadata for policies"),
                }
            }
        }
        if changed.is_empty() && gone.is_empty() {
            return;
        }
        let current = self.maps.policy.memberships();
        // Only containers that changed or went are touched: a plugin may write a membership
        // just before the record it belongs to, and that must not be undone here.
        let changed_set: HashSet<CgroupKey> = changed.iter().copied().collect();
        let gone_set: HashSet<CgroupKey> = gone.iter().copied().collect();
        let mut wanted: HashSet<(u32, CgroupKey)> = HashSet::new();
        for k in &changed {
            let c = &self.known[k];
            let t = Target::container(
                &c.namespace,
                &c.labels,
                &c.name,
                c.sandbox,
                self.own_namespace.as_deref(),
            );
            for id in self.policies.set().selecting(&t) {
                wanted.insert((id, *k));
            }
        }
        for (id, k) in &current {
            if gone_set.contains(k) || (changed_set.contains(k) && !wanted.contains(&(*id, *k))) {
                if let Err(e) = self.maps.policy.remove_membership(*id, *k) {
                    tracing::warn!(error = %e, "removing a policy membership");
                }
            }
        }
        let mut by_key: HashMap<CgroupKey, Vec<u32>> = HashMap::new();
        for (id, k) in wanted.difference(&current) {
            by_key.entry(*k).or_default().push(*id);
        }
        for (k, ids) in by_key {
            let cg = podmap_cgroup::CgroupIds {
                v2: (k.hierarchy == podmap_cgroup::Hierarchy::V2).then_some(k.id),
                v1: (k.hierarchy == podmap_cgroup::Hierarchy::V1).then_some(k.id),
            };
            if let Err(e) = self.maps.policy.add_memberships(&cg, &ids) {
                tracing::warn!(error = %e, "adding a policy membership");
            }
        }
        self.status.memberships = self.maps.policy.memberships().len() as u64;
    }
}

#[cfg(test)]
mod tests {
    /// proto refuses what would not fit the kernel's tables; it keeps its own copy of their
    /// sizes (it does not depend on the bpf crate).
    #[test]
    fn the_compilers_limits_are_the_kernels() {
        use podmap_bpf::layout::{MAX_RULES, POLICY_PATH_MAX, RULE_REFS};
        use podmap_policy::{KERNEL_MAX_ENTRIES, KERNEL_PATH_MAX, KERNEL_RULE_REFS};
        assert_eq!(KERNEL_RULE_REFS, RULE_REFS);
        assert_eq!(KERNEL_MAX_ENTRIES, MAX_RULES as usize);
        assert_eq!(KERNEL_PATH_MAX, POLICY_PATH_MAX);
    }

    /// A tick told not to look at the directory keeps the set it has; one that looks loads the
    /// change. A directory that cannot be read keeps the set and asks to be looked at again
    /// until it can (no event says when it becomes readable).
    #[test]
    fn the_directory_is_read_when_a_tick_looks_and_again_while_it_fails() {
        if podmap_bpf::testing::requires_root() {
            return;
        }
        use super::{Look, PolicyManager};
        let pins = podmap_bpf::testing::PinDir::new("podmap-test-look");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        let maps = podmap_bpf::SharedMaps::open(&pins.path).unwrap();
        let mut m = PolicyManager::new(&dir, maps, false, None, Default::default());
        m.tick();
        assert!(m.status().loaded.is_empty());
        std::fs::write(
            dir.join("p.yaml"),
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: p}\nspec: {rules: [{exec: {paths: [/bin/x]}, action: audit}]}\n",
        )
        .unwrap();
        let without_dir = Look {
            dir: false,
            pins: false,
        };
        let with_dir = Look {
            dir: true,
            pins: false,
        };
        m.tick_looking(without_dir);
        assert!(m.status().loaded.is_empty(), "not looked at");
        m.tick_looking(with_dir);
        assert_eq!(m.status().loaded.len(), 1, "{:?}", m.status());
        assert!(!m.dir_failing());

        // The directory replaced by a file: unreadable, the set stays, looked at again.
        let aside = tmp.path().join("aside");
        std::fs::rename(&dir, &aside).unwrap();
        std::fs::write(&dir, "not a directory").unwrap();
        m.tick_looking(with_dir);
        assert!(m.dir_failing());
        assert_eq!(m.status().loaded.len(), 1, "{:?}", m.status());
        // Looked at again with no event saying so: a failed look is retried at every tick.
        m.tick_looking(without_dir);
        assert!(m.dir_failing(), "still failing");
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
        m.tick_looking(without_dir);
        assert!(!m.dir_failing());
        assert_eq!(m.status().loaded.len(), 1, "{:?}", m.status());
        assert!(m.status().errors.is_empty(), "{:?}", m.status());
    }

    /// What the kernel's own longest-prefix lookup finds in the tables podmapd writes is what
    /// the compiler's model says (proto/tests/policy_compiler.rs checks the compiler against
    /// that model): exact keys end with the NUL, prefixes are component-wise, open rules of
    /// every access kind share an entry.
    #[test]
    fn the_kernel_finds_every_rule_that_names_a_path() {
        if podmap_bpf::testing::requires_root() {
            return;
        }
        use podmap_bpf::maps::RuleTable;
        use podmap_policy::{policy_id, Candidates, Limits};
        let mut c = Candidates::default();
        let doc = |name: &str, rules: &str| {
            format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec: {{rules: [{rules}]}}\n")
        };
        c.add(
            &doc("sh", "{exec: {paths: [/bin/sh, /tmp/x/]}, action: kill}"),
            "a.yaml",
        );
        c.add(
            &doc("tmp", "{exec: {prefixes: [/tmp]}, action: audit}"),
            "b.yaml",
        );
        c.add(
            &doc(
                "tmpx",
                "{exec: {prefixes: [/tmp/x/]}, action: deny, fallback: kill}",
            ),
            "c.yaml",
        );
        c.add(
            &doc(
                "etc-read",
                "{open: {prefixes: [/etc/], access: read}, action: audit}",
            ),
            "d.yaml",
        );
        c.add(
            &doc(
                "shadow-write",
                "{open: {paths: [/etc/shadow], access: write}, action: kill, acceptKillAfterOpen: true}",
            ),
            "e.yaml",
        );
        let set = c.resolve(&Default::default(), Limits::KERNEL);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        let (exec, open) = super::tables(&set.compile());
        let pins = podmap_bpf::testing::PinDir::new("podmap-test-tables");
        let mut maps = podmap_bpf::SharedMaps::open(&pins.path).unwrap();
        assert!(maps.policy.replace_rules(RuleTable::Exec, &exec).is_empty());
        assert!(maps.policy.replace_rules(RuleTable::Open, &open).is_empty());
        let found = |table, path: &str, read: bool, write: bool| -> Vec<u32> {
            let mut ids: Vec<u32> = maps
                .policy
                .match_rules(table, path)
                .unwrap()
                .map(|m| m.refs)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| table == RuleTable::Exec || (read && r.read) || (write && r.write))
                .map(|r| r.policy_id)
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let ids = |names: &[&str]| {
            let mut v: Vec<u32> = names.iter().map(|n| policy_id(n)).collect();
            v.sort();
            v
        };
        let exec = |p| found(RuleTable::Exec, p, false, false);
        assert_eq!(exec("/bin/sh"), ids(&["sh"]));
        assert_eq!(exec("/bin/shx"), ids(&[]));
        assert_eq!(exec("/tmp"), ids(&["tmp"]));
        assert_eq!(exec("/tmpx"), ids(&[]), "prefixes are component-wise");
        assert_eq!(exec("/tmp/y"), ids(&["tmp"]));
        assert_eq!(
            exec("/tmp/x"),
            ids(&["tmp"]),
            "/tmp/x/ does not cover /tmp/x"
        );
        assert_eq!(exec("/tmp/x/"), ids(&["sh", "tmp", "tmpx"]));
        assert_eq!(exec("/tmp/x/y"), ids(&["tmp", "tmpx"]));
        let read = |p| found(RuleTable::Open, p, true, false);
        let write = |p| found(RuleTable::Open, p, false, true);
        assert_eq!(
            read("/etc/shadow"),
            ids(&["etc-read"]),
            "the write entry keeps the read prefix"
        );
        assert_eq!(write("/etc/shadow"), ids(&["shadow-write"]));
        assert_eq!(read("/etc/passwd"), ids(&["etc-read"]));
        assert_eq!(write("/etc/passwd"), ids(&[]));
        assert_eq!(read("/etc"), ids(&[]));
    }
}
