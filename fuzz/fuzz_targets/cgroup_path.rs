//! A cgroup path as a runtime (or a forged spec) writes it: the notation parser yields a path
//! below the cgroup root or an error, never `..` or an absolute escape; the shape classifier
//! never panics on any name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_cgroup::{classify, container_shape, parse_cgroups_path, PodParents};
use std::path::Component;

fuzz_target!(|raw: &str| {
    if let Ok(path) = parse_cgroups_path(raw) {
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{raw:?} became {path:?}"
        );
    }
    let _ = container_shape(raw);
    let _ = classify(raw, &PodParents::default());
});
