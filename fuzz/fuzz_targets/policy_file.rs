//! A policy file's text, as a user or a PodPolicy resource may write it: parsed and validated
//! or refused naming a field, never a panic; what is accepted compiles into kernel tables whose
//! entries stay within the kernel's limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_policy::{Candidates, Limits, KERNEL_RULE_REFS};

fuzz_target!(|text: &str| {
    let mut c = Candidates::default();
    c.add(text, "fuzz.yaml");
    let set = c.resolve(&Default::default(), Limits::KERNEL);
    for rule in set.compile() {
        assert!(rule.refs.len() <= KERNEL_RULE_REFS, "{rule:?}");
        assert!(rule.path.starts_with('/'), "{rule:?}");
    }
});
