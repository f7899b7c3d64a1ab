//! From files to the set in force: reading a directory, refusing duplicate names and colliding
//! ids (a hand-written file wins over a mirrored resource), and fitting every policy into the
//! kernel's table limits, refusing only the policy that would overflow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use crate::compile::{closure, direct_refs, Direct, EntryKey, KernelRule, Limits, Table};
use crate::file::{read_bounded, ReadError, MAX_POLICY_FILE_BYTES};
use crate::format::PodPolicy;
use crate::mirrored::text_is_mirrored;
use crate::select::Target;
use crate::validate::{err, parse_documents, PolicyError};

/// A policy and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub policy: PodPolicy,
    pub source: String,
    /// The file is one podmapd mirrored from a PodPolicy resource (its name and first line say
    /// so): a hand-written file wins any conflict with it.
    pub mirrored: bool,
}

impl Loaded {
    /// Where the policy came from, as errors name it.
    fn describe(&self) -> String {
        if self.mirrored {
            format!("{} (mirrored from a PodPolicy resource)", self.source)
        } else {
            self.source.clone()
        }
    }
}

/// The policies in force, and what was refused (and why). Refused files do not take the others
/// down.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    pub policies: Vec<Loaded>,
    pub errors: Vec<PolicyError>,
}

/// Policies as read from files, before names, ids and the kernel's limits are checked
/// ([`Candidates::resolve`]).
#[derive(Debug, Default, Clone)]
pub struct Candidates {
    pub(crate) loaded: Vec<Loaded>,
    errors: Vec<PolicyError>,
    /// Files refused whole (unreadable, unparsable, invalid): a [`PolicyDir`] keeps their last
    /// valid policies active.
    pub(crate) failed_files: HashSet<String>,
    /// A file could not be read (I/O, not content): worth reading again even if the listing
    /// stays the same.
    pub(crate) unreadable: bool,
}

pub(crate) fn dir_error(dir: &Path, e: &std::io::Error) -> PolicyError {
    err(
        &dir.display().to_string(),
        "",
        format!("reading the directory: {e}"),
    )
}

/// The policy files of `dir` (`*.yaml`, `*.yml`), sorted; none when it does not exist. An error
/// mid-listing fails the whole listing: it would silently leave files out. What the loader reads
/// and what `PolicyDir` watches for changes, so the two never disagree.
pub(crate) fn policy_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Candidates {
    /// Reads every `*.yaml` (and `*.yml`) file of `dir`, in name order. A missing directory has
    /// no policies; a directory that cannot be listed is an error, so that a caller can keep
    /// what it had instead of taking it for an empty one.
    pub fn read_dir(dir: &Path) -> Result<Candidates, PolicyError> {
        let files = policy_files(dir).map_err(|e| dir_error(dir, &e))?;
        let mut c = Candidates::default();
        for f in files {
            let src = f.display().to_string();
            match read_bounded(&f, MAX_POLICY_FILE_BYTES) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => c.add(&text, &src),
                    Err(_) => {
                        c.errors.push(err(&src, "", "not UTF-8 text"));
                        c.failed_files.insert(src);
                    }
                },
                // Removed since the listing: it is simply gone.
                Err(ReadError::Gone) => {}
                Err(e) => {
                    c.errors.push(err(&src, "", e.to_string()));
                    // An I/O error is tried again at the next look; a FIFO or an oversized file
                    // is refused until the listing changes.
                    c.unreadable |= e.transient();
                    c.failed_files.insert(src);
                }
            }
        }
        Ok(c)
    }

    /// Adds the policies of one file's text; a file with any bad document is refused whole.
    pub fn add(&mut self, text: &str, src: &str) {
        let mirrored = text_is_mirrored(Path::new(src), text);
        match parse_documents(text, src) {
            Ok(ps) => self.loaded.extend(ps.into_iter().map(|policy| Loaded {
                policy,
                source: src.to_string(),
                mirrored,
            })),
            Err(e) => {
                self.errors.push(e);
                self.failed_files.insert(src.to_string());
            }
        }
    }

    /// Decides what is in force. Policies sharing an id (the same name twice, or two names whose
    /// ids collide) are all refused, each naming the others, except that one hand-written file
    /// wins over mirrored resources: a cluster resource must not displace a node's own policy.
    /// Then each policy must fit the kernel's tables: one that would overflow an entry or a table
    /// is refused whole, naming the path. `first` (name and file of the policies active so far)
    /// are fitted first, so a newcomer never displaces an active policy; the rest go in name
    /// order.
    pub fn resolve(self, first: &HashSet<(String, String)>, limits: Limits) -> PolicySet {
        let Candidates {
            loaded, mut errors, ..
        } = self;
        let mut by_id: BTreeMap<u32, Vec<Loaded>> = BTreeMap::new();
        for l in loaded {
            by_id.entry(l.policy.id()).or_default().push(l);
        }
        let mut survivors = Vec::new();
        for (_, mut group) in by_id {
            if group.len() == 1 {
                survivors.extend(group);
                continue;
            }
            let hand: Vec<usize> = (0..group.len()).filter(|&i| !group[i].mirrored).collect();
            if let [winner] = hand[..] {
                let w = group.remove(winner);
                for l in &group {
                    errors.push(err(
                        &l.describe(),
                        "metadata.name",
                        format!(
                            "policy {:?} {} the hand-written file {}, which wins over a mirrored resource; rename the resource",
                            l.policy.name(),
                            clash(&l.policy, &w.policy),
                            w.source
                        ),
                    ));
                }
                survivors.push(w);
                continue;
            }
            for (i, l) in group.iter().enumerate() {
                let others: Vec<String> = group
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, o)| format!("{} {}", clash(&l.policy, &o.policy), o.describe()))
                    .collect();
                errors.push(err(
                    &l.describe(),
                    "metadata.name",
                    format!(
                        "policy {:?} {}; all are refused until they are renamed",
                        l.policy.name(),
                        others.join(", and ")
                    ),
                ));
            }
        }
        survivors.sort_by(|a, b| {
            let active =
                |l: &Loaded| first.contains(&(l.policy.name().to_string(), l.source.clone()));
            let (fa, fb) = (active(a), active(b));
            fb.cmp(&fa)
                .then_with(|| a.policy.name().cmp(b.policy.name()))
        });
        let mut fit = Fitter {
            limits,
            direct: BTreeMap::new(),
            names: HashMap::new(),
        };
        let mut policies = Vec::new();
        for l in survivors {
            match fit.try_add(&l.policy) {
                Ok(()) => policies.push(l),
                Err((field, reason)) => errors.push(err(&l.describe(), field, reason)),
            }
        }
        // Back to file order, as listed in status.
        policies.sort_by(|a, b| a.source.cmp(&b.source));
        PolicySet { policies, errors }
    }
}

/// How `p` clashes with `other`, which shares its id.
fn clash(p: &PodPolicy, other: &PodPolicy) -> String {
    if p.name() == other.name() {
        "is also defined in".to_string()
    } else {
        format!(
            "has the same id ({:#010x}) as policy {:?} in",
            p.id(),
            other.name()
        )
    }
}

/// The tables as policies are added, refusing what would not fit.
struct Fitter {
    limits: Limits,
    direct: Direct,
    names: HashMap<u32, String>,
}

impl Fitter {
    /// Adds `p` if the tables still fit afterwards; otherwise the field and reason of the refusal.
    fn try_add(&mut self, p: &PodPolicy) -> Result<(), (String, String)> {
        let mut mine: Direct = BTreeMap::new();
        for (k, r) in direct_refs(p) {
            mine.entry(k).or_default().insert(r);
        }
        for table in [Table::Exec, Table::Open] {
            let count = |d: &Direct| d.keys().filter(|k| k.0 == table).count();
            let new = mine
                .keys()
                .filter(|k| k.0 == table && !self.direct.contains_key(*k))
                .count();
            let total = count(&self.direct) + new;
            if new > 0 && total > self.limits.entries_per_table {
                return Err((
                    "spec.rules".into(),
                    format!(
                        "policy {:?}: the kernel's {} rule table would need {total} entries and holds {}: the policy is refused, the others stay",
                        p.name(),
                        table.as_str(),
                        self.limits.entries_per_table
                    ),
                ));
            }
        }
        // Entries whose references change: this policy's, and those under its prefixes.
        let mut affected: BTreeSet<&EntryKey> = mine.keys().collect();
        for k in mine.keys().filter(|k| !k.2) {
            affected.extend(
                self.direct
                    .range(k.clone()..)
                    .map(|(k2, _)| k2)
                    .take_while(|k2| k2.0 == k.0 && k2.1.starts_with(&k.1)),
            );
        }
        for key in affected {
            let refs = closure(key, &[&self.direct, &mine]);
            if refs.len() <= self.limits.refs_per_entry {
                continue;
            }
            let id = p.id();
            let rule = refs
                .iter()
                .filter(|r| r.policy_id == id)
                .map(|r| r.rule_index)
                .min()
                .unwrap_or(0);
            let others: BTreeSet<&str> = refs
                .iter()
                .filter(|r| r.policy_id != id)
                .filter_map(|r| self.names.get(&r.policy_id).map(String::as_str))
                .collect();
            let others: Vec<&str> = others.into_iter().collect();
            let (table, path, exact) = key;
            return Err((
                format!("spec.rules[{rule}]"),
                format!(
                    "policy {:?}: {} {}{path:?} would be matched by {} rules ({} of this policy, the others of {}); one kernel entry holds {}: the policy is refused, the others stay",
                    p.name(),
                    table.as_str(),
                    if *exact { "path " } else { "prefix " },
                    refs.len(),
                    refs.iter().filter(|r| r.policy_id == id).count(),
                    if others.is_empty() { "none".to_string() } else { others.join(", ") },
                    self.limits.refs_per_entry
                ),
            ));
        }
        for (k, r) in mine {
            self.direct.entry(k).or_default().extend(r);
        }
        self.names.insert(p.id(), p.name().to_string());
        Ok(())
    }
}

impl PolicySet {
    /// Reads `dir` and decides what is in force, with no history (the OCI hook looks once per
    /// container). A directory that cannot be read is an error of the set, not an empty one.
    pub fn load_dir(dir: &Path) -> PolicySet {
        match Candidates::read_dir(dir) {
            Ok(c) => c.resolve(&HashSet::new(), Limits::KERNEL),
            Err(e) => PolicySet {
                policies: Vec::new(),
                errors: vec![e],
            },
        }
    }

    /// Ids of the policies that select a container.
    pub fn selecting(&self, t: &Target<'_>) -> Vec<u32> {
        self.policies
            .iter()
            .filter(|l| l.policy.selects(t))
            .map(|l| l.policy.id())
            .collect()
    }

    pub fn by_id(&self, id: u32) -> Option<&Loaded> {
        self.policies.iter().find(|l| l.policy.id() == id)
    }

    /// The kernel's rule tables: one entry per distinct (table, path, exact/prefix), listing
    /// every policy rule that applies to that path (open rules of every access kind share an
    /// entry, each reference carrying its access). An entry also lists the rules of every
    /// prefix it lies under, because the kernel's longest-prefix lookup finds one entry.
    pub fn compile(&self) -> Vec<KernelRule> {
        let mut direct: Direct = BTreeMap::new();
        for l in &self.policies {
            for (k, r) in direct_refs(&l.policy) {
                direct.entry(k).or_default().insert(r);
            }
        }
        direct
            .keys()
            .map(|key| KernelRule {
                table: key.0,
                path: key.1.clone(),
                exact: key.2,
                refs: closure(key, &[&direct]).into_iter().collect(),
            })
            .collect()
    }
}
