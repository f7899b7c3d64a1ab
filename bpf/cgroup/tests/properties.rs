//! Properties of the cgroup path notations and shapes, on any input and on generated kubelet
//! layouts: a cgroupsPath becomes a path below the hierarchy's root or an error (never `..`,
//! never the root itself); a kubelet container's path, in either notation, names its container
//! and pod; a name chosen below a container cannot turn it into another; the same name outside
//! the pod parents is never believed.

use std::path::Component;

use podmap_cgroup::{classify, container_shape, parse_cgroups_path, PodParents, ShapeVerdict};
use proptest::prelude::*;

fn uid() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
}

fn container_id() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

/// The path a runtime resolves a cgroupsPath to, as `/a/b` below the hierarchy's root.
fn resolved(raw: &str) -> String {
    format!("/{}", parse_cgroups_path(raw).unwrap().display())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_cgroups_path_stays_below_the_root_or_is_refused(
        raw in prop_oneof!["\\PC{0,80}", "[/.:a-z@_-]{0,40}", "(/|\\.\\./|\\./|[a-z]{1,3}[:/.-]){0,12}"],
    ) {
        if let Ok(path) = parse_cgroups_path(&raw) {
            prop_assert!(path.components().next().is_some(), "{raw:?} is the root");
            prop_assert!(
                path.components().all(|c| matches!(c, Component::Normal(_))),
                "{raw:?} became {path:?}"
            );
        }
        let _ = container_shape(&raw);
        let _ = classify(&raw, &PodParents::default());
    }

    #[test]
    fn a_kubelet_container_path_names_its_container_and_pod(
        qos in prop::sample::select(vec!["", "besteffort", "burstable"]),
        uid in uid(),
        id in container_id(),
        other in container_id(),
        runtime in prop::sample::select(vec!["cri-containerd", "crio"]),
        systemd in any::<bool>(),
    ) {
        let raw = if systemd {
            let qos_part = if qos.is_empty() { String::new() } else { format!("-{qos}") };
            let slice = format!("kubepods{qos_part}-pod{}.slice", uid.replace('-', "_"));
            format!("{slice}:{runtime}:{id}")
        } else {
            let qos_part = if qos.is_empty() { String::new() } else { format!("{qos}/") };
            format!("/kubepods/{qos_part}pod{uid}/{id}")
        };
        let path = resolved(&raw);
        let want = ShapeVerdict::Container(podmap_cgroup::ContainerShape {
            container_id: id.clone(),
            pod_uid: Some(uid.clone()),
        });
        prop_assert_eq!(classify(&path, &PodParents::default()), want.clone(), "{}", path);
        // The workload owns everything below its cgroup and may name it anything: still the
        // same container.
        let nested = format!("{path}/x/cri-containerd-{other}.scope/pod{uid}");
        prop_assert_eq!(classify(&nested, &PodParents::default()), want, "{}", nested);
        // The same leaf made by a user under their own slice is never believed.
        let leaf = path.rsplit('/').next().unwrap();
        let forged = format!("/user.slice/user-1000.slice/user@1000.service/{leaf}");
        prop_assert!(
            matches!(classify(&forged, &PodParents::default()), ShapeVerdict::Outside(_) | ShapeVerdict::None),
            "{} believed", forged
        );
    }
}
