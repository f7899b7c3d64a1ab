//! Workload and workload kind of a pod, derived from its controller owner reference alone.
//!
//! No extra API call (and no extra RBAC): a Deployment's pods are owned by a ReplicaSet named
//! `<deployment>-<pod-template-hash>`, and that hash is also a label on the pod; a CronJob's pods
//! are owned by a Job named `<cronjob>-<scheduled time in minutes>`. Other controllers are
//! reported as they are.

/// The label the Deployment controller puts on its ReplicaSets' pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The CronJob controller names its Jobs `<cronjob>-<minutes since the epoch>`: 8 digits until
/// the year 2160. Fewer digits is more likely a hand-made Job such as `backup-2`.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

/// A pod's workload: its name and kind (`Deployment`, `StatefulSet`, `Pod`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload<'a> {
    pub name: &'a str,
    pub kind: &'a str,
}

/// The controller owner reference as far as workload derivation needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Owner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
}

/// Derives the workload of pod `pod_name` from its controller owner reference and its
/// `pod-template-hash` label.
pub fn derive<'a>(
    pod_name: &'a str,
    controller: Option<Owner<'a>>,
    template_hash: Option<&str>,
) -> Workload<'a> {
    let Some(owner) = controller.filter(|o| !o.name.is_empty() && !o.kind.is_empty()) else {
        return Workload {
            name: pod_name,
            kind: "Pod",
        };
    };
    let group = owner
        .api_version
        .split_once('/')
        .map_or("", |(group, _)| group);
    match (group, owner.kind) {
        ("apps", "ReplicaSet") => match deployment_of(owner.name, template_hash) {
            Some(deployment) => Workload {
                name: deployment,
                kind: "Deployment",
            },
            None => Workload {
                name: owner.name,
                kind: "ReplicaSet",
            },
        },
        ("batch", "Job") => match cronjob_of(owner.name) {
            Some(cronjob) => Workload {
                name: cronjob,
                kind: "CronJob",
            },
            None => Workload {
                name: owner.name,
                kind: "Job",
            },
        },
        // A static (mirror) pod is "owned" by its Node: the pod is its own workload.
        ("", "Node") => Workload {
            name: pod_name,
            kind: "Pod",
        },
        _ => Workload {
            name: owner.name,
            kind: owner.kind,
        },
    }
}

/// `web-7d9c5b` with hash `7d9c5b` is ReplicaSet `web-7d9c5b` of Deployment `web`.
fn deployment_of<'a>(replicaset: &'a str, template_hash: Option<&str>) -> Option<&'a str> {
    let hash = template_hash.filter(|h| !h.is_empty())?;
    let base = replicaset.strip_suffix(hash)?.strip_suffix('-')?;
    (!base.is_empty()).then_some(base)
}

/// `backup-29034120` is a Job of CronJob `backup`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    let scheduled =
        suffix.len() >= CRONJOB_SUFFIX_MIN_DIGITS && suffix.bytes().all(|b| b.is_ascii_digit());
    (scheduled && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(api_version: &'a str, kind: &'a str, name: &'a str) -> Option<Owner<'a>> {
        Some(Owner {
            api_version,
            kind,
            name,
        })
    }

    #[test]
    fn table() {
        let cases = [
            (
                "web-7d9c5b-x2x",
                owner("apps/v1", "ReplicaSet", "web-7d9c5b"),
                Some("7d9c5b"),
                ("web", "Deployment"),
            ),
            (
                "a-b-c-7d9-q",
                owner("apps/v1", "ReplicaSet", "a-b-c-7d9"),
                Some("7d9"),
                ("a-b-c", "Deployment"),
            ),
            // A ReplicaSet made by hand: no hash label, or a hash that is not its suffix.
            (
                "rs-q",
                owner("apps/v1", "ReplicaSet", "rs"),
                None,
                ("rs", "ReplicaSet"),
            ),
            (
                "rs-q",
                owner("apps/v1", "ReplicaSet", "rs"),
                Some("abc"),
                ("rs", "ReplicaSet"),
            ),
            (
                "x-q",
                owner("apps/v1", "ReplicaSet", "-abc"),
                Some("abc"),
                ("-abc", "ReplicaSet"),
            ),
            (
                "backup-29034120-z",
                owner("batch/v1", "Job", "backup-29034120"),
                None,
                ("backup", "CronJob"),
            ),
            (
                "my-job-2-z",
                owner("batch/v1", "Job", "my-job-2"),
                None,
                ("my-job-2", "Job"),
            ),
            (
                "migrate-z",
                owner("batch/v1", "Job", "migrate"),
                None,
                ("migrate", "Job"),
            ),
            (
                "db-0",
                owner("apps/v1", "StatefulSet", "db"),
                None,
                ("db", "StatefulSet"),
            ),
            (
                "agent-x",
                owner("apps/v1", "DaemonSet", "agent"),
                None,
                ("agent", "DaemonSet"),
            ),
            ("bare", None, None, ("bare", "Pod")),
            (
                "etcd-node1",
                owner("v1", "Node", "node1"),
                None,
                ("etcd-node1", "Pod"),
            ),
            (
                "ro-1",
                owner("argoproj.io/v1alpha1", "Rollout", "ro"),
                None,
                ("ro", "Rollout"),
            ),
            // A kind of the same name from another API group is not the built-in controller.
            (
                "j-q",
                owner("example.com/v1", "Job", "j-29034120"),
                None,
                ("j-29034120", "Job"),
            ),
            ("e", owner("", "", ""), None, ("e", "Pod")),
        ];
        for (pod, controller, hash, (name, kind)) in cases {
            assert_eq!(
                derive(pod, controller, hash),
                Workload { name, kind },
                "pod {pod}"
            );
        }
    }
}
