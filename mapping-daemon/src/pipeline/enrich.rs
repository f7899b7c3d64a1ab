//! Builds the user-facing event from a kernel record and its owner.

use std::sync::Arc;

use podmap_cgroup::LayoutKind;
use podmap_proto::{
    ContainerInfo, Event, EventType, ExitInfo, PodInfo, PolicyInfo, Process, ProcessFlag, Shared,
};

use super::decode::{Enforcement, KernelEvent, PolicyHit, TaskIds};
use super::Owner;
use crate::clock::WallClock;
use crate::hub::Wanted;
use crate::policies::PolicyNames;
use crate::procs::{
    exec_id, is_runtime_init, is_runtime_init_comm, Credentials, ProcEntry, ProcTable,
};

/// The event's container and pod, from what attributed it.
fn owner_parts(owner: &Owner) -> (Option<Shared<ContainerInfo>>, Option<Shared<PodInfo>>) {
    match owner {
        Owner::Container(m) => (Some(m.container.clone()), m.pod.clone()),
        Owner::Host => (None, None),
        Owner::Unknown(_, Some(m)) => (Some(m.container.clone()), m.pod.clone()),
        // What the cgroup path says; everything else is unknown.
        Owner::Unknown(shape, None) => (
            Some(Shared::new(ContainerInfo {
                id: shape.container_id.clone(),
                ..ContainerInfo::default()
            })),
            shape.pod_uid.as_ref().map(|uid| {
                Shared::new(PodInfo {
                    uid: uid.clone(),
                    name: String::new(),
                    namespace: String::new(),
                    labels: Default::default(),
                    workload: None,
                    workload_kind: None,
                })
            }),
        ),
    }
}

/// Names are looked up only for the rare policy events: the lock is not on the exec path.
fn policy_info(names: &PolicyNames, hit: &PolicyHit, rule: &str, path: &str) -> PolicyInfo {
    let names = names.read().unwrap_or_else(|p| p.into_inner());
    let name = names
        .get(&hit.policy_id)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("policy-{:08x}", hit.policy_id));
    PolicyInfo {
        name,
        rule: rule.to_string(),
        path: path.to_string(),
        action: hit.action.as_str().to_string(),
        mode: hit.mode.as_str().to_string(),
    }
}

/// What turns a decoded record and its owner into the events clients see: the node's name, the
/// process table (exec data outlives the exec record), the host's cgroup layout kind and the
/// policies' names.
pub(super) struct Enricher {
    pub node: Arc<str>,
    pub procs: ProcTable,
    pub layout: LayoutKind,
    pub names: PolicyNames,
}

impl Enricher {
    /// The events one record becomes, handed to `emit` in order: an exec a policy acted on gives
    /// a policy event, then the exec event unless the exec was killed (it never ran); an open
    /// gives a policy event.
    pub fn events(
        &mut self,
        ev: KernelEvent,
        owner: Owner,
        clock: &WallClock,
        wanted: Wanted,
        mut emit: impl FnMut(Event),
    ) {
        let Enricher {
            node,
            procs,
            layout,
            names,
        } = self;
        let (node, layout) = (&*node, *layout);
        match ev {
            KernelEvent::PolicyOpen(o) => {
                let (container, pod) = owner_parts(&owner);
                let entry = procs.get(o.ids.pid).cloned();
                let mut process =
                    process_of(node, entry.as_deref(), &o.ids, o.ktime, layout, clock);
                process.tid = o.ids.tid;
                emit(Event {
                    schema_version: podmap_proto::SCHEMA_VERSION,
                    kind: EventType::Policy,
                    time: clock.format(o.ktime),
                    node: node.clone(),
                    process,
                    container,
                    pod,
                    attribution: owner.attribution(),
                    path_derived: owner.path_derived(),
                    exit: None,
                    policy: Some(policy_info(names, &o.policy, "open", &o.path)),
                });
            }
            KernelEvent::Exec(ref e) if e.policy.is_some() => {
                let hit = e.policy.expect("checked");
                let killed = hit.mode == Enforcement::Kill;
                // Always built: the policy event is the exec's, and policy events are counted.
                let Some(exec) = event(node, procs, layout, ev, owner, clock, Wanted::ALL) else {
                    return;
                };
                let mut policy = exec.clone();
                policy.kind = EventType::Policy;
                policy.policy = Some(policy_info(names, &hit, "exec", &exec.process.binary));
                emit(policy);
                if !killed && wanted.has(EventType::Exec) {
                    emit(exec);
                }
            }
            other => {
                if let Some(e) = event(node, procs, layout, other, owner, clock, wanted) {
                    emit(e);
                }
            }
        }
    }
}

/// The process of a record that carries only ids, completed from the process table.
fn process_of(
    node: &Arc<str>,
    entry: Option<&ProcEntry>,
    ids: &TaskIds,
    ktime: u64,
    layout: LayoutKind,
    clock: &WallClock,
) -> Process {
    let creds = entry.and_then(|p| p.creds.as_ref());
    let (binary, args, cwd, exec_id_s, start_time, flags) = match entry {
        Some(p) => (
            p.binary.clone(),
            p.args.clone(),
            p.cwd.clone(),
            p.exec_id.clone(),
            p.start_time,
            p.flags(),
        ),
        None => (
            Arc::from(""),
            Arc::from(Vec::new()),
            Arc::from(""),
            Arc::from(exec_id(node, ktime, ids.pid)),
            0,
            Vec::new(),
        ),
    };
    let mut p = Process {
        pid: ids.pid,
        tid: ids.tid,
        ppid: ids.ppid,
        uid: ids.uid,
        binary,
        args,
        cwd,
        exec_id: exec_id_s,
        parent_exec_id: None,
        start_time: if start_time != 0 {
            clock.format(start_time)
        } else {
            String::new()
        },
        cgroup_id: ids.own_cgroup(layout).0,
        flags,
        entered_via_exec: None,
        euid: None,
        gid: None,
        egid: None,
        cap_effective: None,
    };
    // The credentials of the exec the process runs (it may have changed them since).
    if let Some(c) = creds {
        c.apply(&mut p);
    }
    p
}

/// Whether a process came into its container through the runtime's exec: its line's entry is
/// not the container's init (docs/decisions.md #35). None when either is unknown, and for an
/// owner that rests on a cgroup's name alone (no record vouches for an init).
fn entered_via_exec(owner: &Owner, entry_pid: Option<u32>) -> Option<bool> {
    let Owner::Container(mapped) = owner else {
        return None;
    };
    Some(entry_pid? != mapped.meta.init_pid?)
}

/// None for records that are not process events, and for events no client wants (`wanted`):
/// their bookkeeping, the process table's, is done all the same.
fn event(
    node: &Arc<str>,
    procs: &mut ProcTable,
    layout: LayoutKind,
    ev: KernelEvent,
    owner: Owner,
    clock: &WallClock,
    wanted: Wanted,
) -> Option<Event> {
    let attribution = owner.attribution();
    let path_derived = owner.path_derived();
    let (container, pod) = owner_parts(&owner);
    match ev {
        KernelEvent::Exec(e) => {
            let pid = e.ids.pid;
            let id: Arc<str> = exec_id(node, e.ktime, pid).into();
            let (args, binary, cwd) = (e.args, e.filename, e.cwd);
            let runtime_init = is_runtime_init(&binary, &args);
            let mut flags = e.flags;
            if runtime_init {
                flags.push(ProcessFlag::RuntimeInit);
            }
            let creds = e.creds.map(|c| Credentials {
                euid: c.euid,
                gid: c.gid,
                egid: c.egid,
                cap_effective: procs.cap_names.get(c.cap_effective),
            });
            procs.insert(
                pid,
                Arc::new(ProcEntry {
                    exec_id: id.clone(),
                    exec_ktime: e.ktime,
                    binary: binary.clone(),
                    args: args.clone(),
                    cwd: cwd.clone(),
                    uid: e.ids.uid,
                    creds: creds.clone(),
                    start_time: e.start_time,
                    procfs_scan: false,
                    runtime_init,
                }),
            );
            if !wanted.has(EventType::Exec) {
                return None;
            }
            // The parent's exec id is usually in the table already: shared, not encoded again.
            let parent_exec_id = (e.parent_exec_ktime != 0).then(|| {
                procs
                    .get(e.ids.ppid)
                    .filter(|p| p.exec_ktime == e.parent_exec_ktime)
                    .map(|p| p.exec_id.clone())
                    .unwrap_or_else(|| exec_id(node, e.parent_exec_ktime, e.ids.ppid).into())
            });
            let mut process = Process {
                pid,
                tid: e.ids.tid,
                ppid: e.ids.ppid,
                uid: e.ids.uid,
                binary,
                args,
                cwd,
                exec_id: id,
                parent_exec_id,
                start_time: clock.format(e.start_time),
                cgroup_id: e.ids.own_cgroup(layout).0,
                flags,
                entered_via_exec: entered_via_exec(&owner, e.entry_pid),
                euid: None,
                gid: None,
                egid: None,
                cap_effective: None,
            };
            if let Some(c) = &creds {
                c.apply(&mut process);
            }
            Some(Event {
                schema_version: podmap_proto::SCHEMA_VERSION,
                kind: EventType::Exec,
                time: clock.format(e.ktime),
                node: node.clone(),
                process,
                container,
                pod,
                attribution,
                path_derived,
                exit: None,
                policy: None,
            })
        }
        KernelEvent::Exit(e) => {
            // A process that never exec'd runs the program of the parent it was forked from:
            // the parent's entry counts only if its exec is the one the kernel copied at fork
            // (after a reparent, the new parent's is another program).
            let entry = procs.remove(e.ids.pid).or_else(|| {
                procs
                    .get(e.ids.ppid)
                    .filter(|p| e.exec_ktime != 0 && p.exec_ktime == e.exec_ktime)
                    .cloned()
            });
            if !wanted.has(EventType::Exit) {
                return None;
            }
            let mut process =
                process_of(node, entry.as_deref(), &e.ids, e.exec_ktime, layout, clock);
            for f in e.flags {
                if !process.flags.contains(&f) {
                    process.flags.push(f);
                }
            }
            process.parent_exec_id = procs.get(e.ids.ppid).map(|p| p.exec_id.clone());
            process.entered_via_exec = entered_via_exec(&owner, e.entry_pid);
            if process.binary.is_empty() && !e.comm.is_empty() {
                // Never seen exec'ing (forked before podmapd, or a runtime's own helper such as
                // runc's init stages): name it like ps does.
                let comm = e.comm.to_str();
                process.binary = Arc::from(format!("[{comm}]"));
                if is_runtime_init_comm(&comm) && !process.flags.contains(&ProcessFlag::RuntimeInit)
                {
                    process.flags.push(ProcessFlag::RuntimeInit);
                }
            }
            Some(Event {
                schema_version: podmap_proto::SCHEMA_VERSION,
                kind: EventType::Exit,
                time: clock.format(e.ktime),
                node: node.clone(),
                process,
                container,
                pod,
                attribution,
                path_derived,
                exit: Some(ExitInfo::from_wait_status(e.exit_code)),
                policy: None,
            })
        }
        KernelEvent::CgroupMkdir(_) | KernelEvent::CgroupRmdir(_) | KernelEvent::PolicyOpen(_) => {
            None
        }
    }
}
