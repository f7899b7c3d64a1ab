//! The policy compiler against a userspace model of the kernel's longest-prefix lookup: for any
//! set of policy files (names repeated, ids colliding, mirrored and hand-written, prefixes
//! nested), what the kernel would find for a path is exactly the rules that name it, no entry
//! holds more references than fit, no table more entries, and every policy is either in force or
//! refused with a reason — never dropped in silence.

use std::collections::{BTreeSet, HashSet};

use podmap_policy::{
    parse_documents, policy_id, Access, Candidates, KernelRule, Limits, Loaded, PodPolicy,
    PolicySet, RuleRef, Table, MIRRORED_HEADER,
};
use proptest::prelude::*;

/// Names repeat, and two of them share an id.
const NAMES: &[&str] = &["a", "b", "c", "p179bb", "p54848"];
/// Components chosen so that one is a string prefix of another ("a" / "ab"): component-wise
/// prefixes must tell them apart.
const COMPONENTS: &[&str] = &["a", "ab", "b"];

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(COMPONENTS), 1..4)
        .prop_map(|c| format!("/{}", c.join("/")))
}

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_string()),
        path(),
        path().prop_map(|p| format!("{p}/")),
    ]
}

#[derive(Debug, Clone)]
struct RuleSpec {
    exec: bool,
    access: &'static str,
    paths: Vec<String>,
    prefixes: Vec<String>,
    action: &'static str,
    fallback: bool,
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    (
        any::<bool>(),
        prop::sample::select(&["read", "write", "any"][..]),
        // An exact path may end in '/': the prefix of the same spelling covers it too.
        prop::collection::vec(prefix().prop_filter("not /", |p| p != "/"), 0..3),
        prop::collection::vec(prefix(), 0..3),
        prop::sample::select(&["audit", "kill", "deny"][..]),
        any::<bool>(),
    )
        .prop_map(|(exec, access, paths, mut prefixes, action, fallback)| {
            if paths.is_empty() && prefixes.is_empty() {
                prefixes.push("/a".into());
            }
            RuleSpec {
                exec,
                access,
                paths,
                prefixes,
                action,
                fallback: fallback && action == "deny",
            }
        })
}

fn document(name: &str, rules: &[RuleSpec]) -> String {
    let mut s = format!(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec:\n  rules:\n"
    );
    for r in rules {
        let list = |v: &[String]| v.join(", ");
        if r.exec {
            s += &format!(
                "  - exec: {{paths: [{}], prefixes: [{}]}}\n",
                list(&r.paths),
                list(&r.prefixes)
            );
        } else {
            s += &format!(
                "  - open: {{paths: [{}], prefixes: [{}], access: {}}}\n",
                list(&r.paths),
                list(&r.prefixes),
                r.access
            );
        }
        s += &format!("    action: {}\n", r.action);
        if r.fallback {
            s += "    fallback: kill\n";
        }
        // A kill on an open that may write is refused unless accepted: these rules accept it,
        // what is under test here is the compiler.
        if !r.exec && r.access != "read" && (r.action == "kill" || r.fallback) {
            s += "    acceptKillAfterOpen: true\n";
        }
    }
    s
}

/// Files: (file name, text). Mirrored ones carry the mirror's name prefix and first line.
fn files() -> impl Strategy<Value = Vec<(String, String)>> {
    let doc = (
        prop::sample::select(NAMES),
        prop::collection::vec(rule(), 1..4),
    );
    prop::collection::vec((any::<bool>(), prop::collection::vec(doc, 1..3)), 1..7).prop_map(
        |files| {
            files
                .into_iter()
                .enumerate()
                .map(|(i, (mirrored, docs))| {
                    let body: Vec<String> = docs.iter().map(|(n, r)| document(n, r)).collect();
                    let body = body.join("---\n");
                    if mirrored {
                        (
                            format!("podpolicy.f{i}.yaml"),
                            format!("{MIRRORED_HEADER}\n{body}"),
                        )
                    } else {
                        (format!("f{i}.yaml"), body)
                    }
                })
                .collect()
        },
    )
}

fn limits() -> impl Strategy<Value = Limits> {
    (1usize..6, 2usize..16).prop_map(|(refs_per_entry, entries_per_table)| Limits {
        refs_per_entry,
        entries_per_table,
    })
}

/// Whether a rule's path list matches `probe`: paths exactly, prefixes by component.
fn names(paths: &[String], prefixes: &[String], probe: &str) -> bool {
    paths.iter().any(|p| p == probe)
        || prefixes.iter().any(|q| {
            if q.ends_with('/') {
                probe.starts_with(q.as_str())
            } else {
                probe == q || probe.starts_with(&format!("{q}/"))
            }
        })
}

/// What the kernel should find: every rule of a loaded policy that names the path (for opens,
/// of an access that covers `want`).
fn expected(
    set: &PolicySet,
    table: Table,
    want: Option<Access>,
    probe: &str,
) -> BTreeSet<(u32, u16)> {
    let mut out = BTreeSet::new();
    for l in &set.policies {
        for (i, r) in l.policy.spec.rules.iter().enumerate() {
            let hit = match (table, &r.exec, &r.open) {
                (Table::Exec, Some(m), _) => names(&m.paths, &m.prefixes, probe),
                (Table::Open, None, Some(o)) => {
                    covers(o.access, want) && names(&o.paths, &o.prefixes, probe)
                }
                _ => false,
            };
            if hit {
                out.insert((l.policy.id(), i as u16));
            }
        }
    }
    out
}

fn covers(rule: Access, want: Option<Access>) -> bool {
    matches!(
        (rule, want),
        (Access::Any, _)
            | (_, None)
            | (Access::Read, Some(Access::Read))
            | (Access::Write, Some(Access::Write))
    )
}

/// The kernel's longest-prefix lookup, modelled: an exact entry's key ends with the NUL, a
/// prefix entry's does not; the lookup key is the path with its NUL; the longest key that is a
/// prefix of it wins.
fn lookup<'a>(rules: &'a [KernelRule], table: Table, probe: &str) -> Option<&'a KernelRule> {
    let query = format!("{probe}\0");
    rules
        .iter()
        .filter(|r| r.table == table)
        .map(|r| {
            (
                r,
                if r.exact {
                    format!("{}\0", r.path)
                } else {
                    r.path.clone()
                },
            )
        })
        .filter(|(_, key)| query.starts_with(key.as_str()))
        .max_by_key(|(_, key)| key.len())
        .map(|(r, _)| r)
}

fn found(
    rules: &[KernelRule],
    table: Table,
    want: Option<Access>,
    probe: &str,
) -> BTreeSet<(u32, u16)> {
    lookup(rules, table, probe)
        .map(|r| {
            r.refs
                .iter()
                .filter(|x: &&RuleRef| x.access.is_none_or(|a| covers(a, want)))
                .map(|x| (x.policy_id, x.rule_index))
                .collect()
        })
        .unwrap_or_default()
}

/// Every path a set of files mentions, and paths around them (children, parents, siblings that
/// share a string prefix but not a component).
fn probes(files: &[(String, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["/".to_string(), "/zz".to_string()]);
    let mut base = BTreeSet::new();
    for (_, text) in files {
        for token in text.split(['[', ']', ',', ' ', '\n']) {
            if token.starts_with('/') {
                base.insert(token.to_string());
            }
        }
    }
    for p in base {
        let t = p.trim_end_matches('/').to_string();
        out.insert(format!("{t}/"));
        out.insert(format!("{t}/x"));
        out.insert(format!("{t}b"));
        if let Some((parent, _)) = t.rsplit_once('/') {
            out.insert(if parent.is_empty() {
                "/".into()
            } else {
                parent.to_string()
            });
        }
        out.insert(t);
        out.insert(p);
    }
    out.retain(|p| !p.is_empty());
    out
}

fn candidates(files: &[(String, String)]) -> Candidates {
    let mut c = Candidates::default();
    for (name, text) in files {
        c.add(text, name);
    }
    c
}

fn over_limits(rules: &[KernelRule], limits: Limits) -> bool {
    rules.iter().any(|r| r.refs.len() > limits.refs_per_entry)
        || [Table::Exec, Table::Open]
            .iter()
            .any(|t| rules.iter().filter(|r| r.table == *t).count() > limits.entries_per_table)
}

proptest! {
    // Failures are reported with their minimal input; an integration test has no source file
    // proptest could keep them next to.
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_compiled_tables_match_the_longest_prefix_oracle(files in files(), limits in limits()) {
        let set = candidates(&files).resolve(&HashSet::new(), limits);
        let rules = set.compile();

        // Within the kernel's limits.
        prop_assert!(!over_limits(&rules, limits), "{rules:#?}");

        // What the kernel finds for any path is exactly the rules that name it.
        for probe in probes(&files) {
            for (table, want) in [
                (Table::Exec, None),
                (Table::Open, Some(Access::Read)),
                (Table::Open, Some(Access::Write)),
            ] {
                prop_assert_eq!(
                    found(&rules, table, want, &probe),
                    expected(&set, table, want, &probe),
                    "{:?} {:?} {}", table, want, probe
                );
            }
        }

        // No two policies in force share an id.
        let ids: Vec<u32> = set.policies.iter().map(|l| l.policy.id()).collect();
        let distinct: HashSet<u32> = ids.iter().copied().collect();
        prop_assert_eq!(ids.len(), distinct.len());

        // Every policy that parsed is in force or refused with a reason naming its file; a file
        // that does not parse is refused with one.
        let mut parsed: Vec<(String, PodPolicy)> = Vec::new();
        let mut unparsable = 0;
        for (name, text) in &files {
            match parse_documents(text, name) {
                Ok(ps) => parsed.extend(ps.into_iter().map(|p| (name.clone(), p))),
                Err(_) => unparsable += 1,
            }
        }
        prop_assert_eq!(set.policies.len() + set.errors.len(), parsed.len() + unparsable, "{:#?}", set.errors);

        // Shared ids: two hand-written parties refuse every party; one hand-written party
        // wins over mirrored ones (it may still be refused for the tables' limits).
        for (src, p) in &parsed {
            let group: Vec<&(String, PodPolicy)> = parsed.iter().filter(|(_, o)| o.id() == p.id()).collect();
            if group.len() < 2 {
                continue;
            }
            let hand = group.iter().filter(|(s, _)| !s.starts_with("podpolicy.")).count();
            let in_force = set.policies.iter().any(|l| &l.source == src && l.policy.name() == p.name());
            if hand != 1 || src.starts_with("podpolicy.") {
                prop_assert!(!in_force, "{} from {} shares its id and is in force", p.name(), src);
                prop_assert!(set.errors.iter().any(|e| e.source_name.starts_with(src.as_str())
                    && e.field == "metadata.name"), "{:?}", set.errors);
            }
        }

        // A policy refused for the limits does not fit beside the ones in force.
        for e in set.errors.iter().filter(|e| e.reason.ends_with("the policy is refused, the others stay")) {
            let (src, p) = parsed
                .iter()
                .find(|(s, p)| e.source_name.starts_with(s.as_str()) && e.reason.starts_with(&format!("policy {:?}:", p.name())))
                .expect("a refused policy");
            let mut with = set.clone();
            with.policies.push(Loaded { policy: p.clone(), source: src.clone(), mirrored: false });
            prop_assert!(over_limits(&with.compile(), limits), "{} was refused but fits: {}", p.name(), e);
        }
    }

    /// Policies already in force keep their place: a newcomer is the one refused.
    #[test]
    fn a_newcomer_never_displaces_a_policy_in_force(files in files(), more in files(), limits in limits()) {
        let before = candidates(&files).resolve(&HashSet::new(), limits);
        let first: HashSet<(String, String)> = before.policies.iter().map(|l| (l.policy.name().to_string(), l.source.clone())).collect();
        let renamed: Vec<(String, String)> = more.into_iter().map(|(n, t)| (format!("z{n}"), t)).collect();
        let all: Vec<(String, String)> = files.iter().cloned().chain(renamed).collect();
        let after = candidates(&all).resolve(&first, limits);
        for l in &before.policies {
            // Unless a newcomer shares its name or id (then all parties are refused, and said so).
            let clash = all.iter().filter(|(n, _)| n.starts_with('z')).any(|(_, t)| {
                NAMES.iter().any(|n| policy_id(n) == l.policy.id() && t.contains(&format!("name: {n}}}")))
            });
            if !clash {
                prop_assert!(after.policies.iter().any(|a| a.policy == l.policy), "{} displaced: {:?}", l.policy.name(), after.errors);
            }
        }
    }
}
