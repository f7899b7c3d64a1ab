//! Kubernetes-scoped policies (`PodPolicy`, podmap.dev/v1alpha1), shared by podmapd and both
//! runtime plugins so that all three decide membership the same way: the format (`format`), its
//! validation (`validate`), selection (`select`), how a directory's files become the set in force
//! (`file`, `resolve`, `dir`, `mirrored`), the rule tables compiled for the kernel (`compile`), and the
//! set podmapd publishes for the plugins (`published`). It depends on no other podmap crate.

mod compile;
mod dir;
mod file;
mod format;
mod mirrored;
mod published;
mod resolve;
mod select;
mod validate;

pub use compile::{
    KernelRule, Limits, RuleRef, Table, KERNEL_MAX_ENTRIES, KERNEL_PATH_MAX, KERNEL_RULE_REFS,
};
pub use dir::PolicyDir;
pub use file::{read_bounded, ReadError, MAX_POLICY_FILE_BYTES};
pub use format::*;
pub use mirrored::{is_mirrored, text_is_mirrored, MIRRORED_HEADER, MIRRORED_PREFIX};
pub use published::{Origin, PluginPolicies, ACTIVE_FILE};
pub use resolve::{Candidates, Loaded, PolicySet};
pub use select::Target;
pub use validate::{parse_documents, valid_dns_subdomain, PolicyError};

#[cfg(test)]
mod tests;
