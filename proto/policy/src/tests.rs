//! The crate's behaviour through its public API: parsing, selection, validation, resolution of
//! a directory's set, compilation.

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

const EXAMPLE: &str = r#"
apiVersion: podmap.dev/v1alpha1
kind: PodPolicy
metadata:
  name: no-shell-in-web
spec:
  namespaces: [prod, staging]
  podSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}]
  containerSelector:
    names: [nginx]
  rules:
  - exec: {paths: [/bin/sh, /bin/bash], prefixes: [/tmp/]}
    action: kill
  - exec: {paths: [/usr/bin/nc]}
    action: deny
    fallback: kill
  - open: {prefixes: [/etc/shadow], access: read}
    action: audit
---
"#;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_design_example_parses_and_selects() {
    let ps = parse_documents(EXAMPLE, "example.yaml").unwrap();
    assert_eq!(ps.len(), 1);
    let p = &ps[0];
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let t = |ns, l, c| Target::container(ns, l, c, false, None);
    assert!(p.selects(&t("prod", &web, "nginx")));
    let pause = Target::container("prod", &web, "nginx", true, None);
    assert!(!p.selects(&pause), "sandboxes are never selected");
    assert!(!p.selects(&t("dev", &web, "nginx")), "namespace");
    assert!(!p.selects(&t("prod", &web, "sidecar")), "container name");
    let no_tier = labels(&[("app", "web")]);
    assert!(
        !p.selects(&t("prod", &no_tier, "nginx")),
        "In needs the key"
    );
    let back = labels(&[("app", "web"), ("tier", "back")]);
    assert!(!p.selects(&t("prod", &back, "nginx")));
    assert_eq!(p.id(), policy_id("no-shell-in-web"));
}

#[test]
fn podmaps_own_namespace_is_never_selected() {
    let everything = parse_documents(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: all}\n\
         spec: {rules: [{exec: {paths: [/bin/sh]}, action: kill}]}\n",
        "all.yaml",
    )
    .unwrap()
    .remove(0);
    let listed = parse_documents(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: listed}\n\
         spec: {namespaces: [podmap, prod], rules: [{exec: {paths: [/bin/sh]}, action: kill}]}\n",
        "listed.yaml",
    )
    .unwrap()
    .remove(0);
    let none = labels(&[]);
    let t = |ns, own| Target::container(ns, &none, "c", false, own);
    for p in [&everything, &listed] {
        // A kill policy on podmap's own pods could stop podmap itself.
        assert!(!p.selects(&t("podmap", Some("podmap"))), "{}", p.name());
        assert!(p.selects(&t("prod", Some("podmap"))), "{}", p.name());
    }
    // Not knowing its namespace (standalone), podmap has none to spare.
    assert!(everything.selects(&t("podmap", None)));
    // An empty own namespace (POD_NAMESPACE set but empty) spares nothing, not "".
    assert!(everything.selects(&t("", Some(""))));
}

#[test]
fn an_empty_namespace_list_also_selects_containers_of_no_pod_and_a_list_does_not() {
    // What the README promises: podman or plain runc containers have no namespace; only a
    // policy that lists no namespace reaches them, and podmap's own namespace stays spared.
    let policy = |ns: &str| {
        parse_documents(
            &format!(
                "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: p}}\n\
                 spec: {{namespaces: [{ns}], rules: [{{exec: {{paths: [/bin/sh]}}, action: kill}}]}}\n"
            ),
            "p.yaml",
        )
        .unwrap()
        .remove(0)
    };
    let none = labels(&[]);
    let podman = Target::container("", &none, "box", false, Some("podmap"));
    let pause = Target::container("", &none, "box", true, Some("podmap"));
    assert!(policy("").selects(&podman));
    assert!(!policy("").selects(&pause), "a sandbox is never selected");
    assert!(!policy("prod").selects(&podman));
}

#[test]
fn selector_operators_follow_kubernetes() {
    let sel = |op, values: &[&str]| LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: "k".into(),
            operator: op,
            values: values.iter().map(|s| s.to_string()).collect(),
        }],
    };
    let with = labels(&[("k", "a")]);
    let without = labels(&[]);
    assert!(sel(Operator::In, &["a", "b"]).matches(&with));
    assert!(!sel(Operator::In, &["b"]).matches(&with));
    assert!(!sel(Operator::In, &["a"]).matches(&without));
    assert!(sel(Operator::NotIn, &["b"]).matches(&with));
    assert!(
        sel(Operator::NotIn, &["b"]).matches(&without),
        "NotIn matches a missing key"
    );
    assert!(!sel(Operator::NotIn, &["a"]).matches(&with));
    assert!(sel(Operator::Exists, &[]).matches(&with));
    assert!(!sel(Operator::Exists, &[]).matches(&without));
    assert!(sel(Operator::DoesNotExist, &[]).matches(&without));
    assert!(
        LabelSelector::default().matches(&without),
        "empty selector matches everything"
    );
}

fn refused(yaml: &str) -> PolicyError {
    parse_documents(yaml, "bad.yaml").expect_err("must be refused")
}

#[test]
fn bad_policies_are_refused_naming_field_and_reason() {
    let base = |spec: &str| {
        format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: p}}\nspec:\n{spec}")
    };
    let e = refused(&base(
        "  rules:\n  - exec: {paths: [bin/sh]}\n    action: kill\n",
    ));
    assert_eq!(e.field, "spec.rules[0].exec.paths[0]");
    assert!(e.reason.contains("absolute"), "{e}");
    let e = refused(&base("  rules:\n  - exec: {paths: [/bin/sh]}\n    action: kill\n  - exec: {paths: [/bin/sh]}\n    action: audit\n"));
    assert!(e.reason.contains("contradictory"), "{e}");
    let e = refused(&base(
        "  rules:\n  - exec: {paths: [/bin/sh]}\n    action: kill\n    fallback: kill\n",
    ));
    assert_eq!(e.field, "spec.rules[0].fallback");
    let e = refused(&base(
        "  rules:\n  - exec: {paths: [/bin/sh]}\n    open: {paths: [/x]}\n    action: kill\n",
    ));
    assert!(e.reason.contains("not both"), "{e}");
    let e = refused(&base("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n  rules:\n  - exec: {paths: [/x]}\n    action: audit\n"));
    assert!(e.field.ends_with(".values"), "{e}");
    let e = refused(&base("  rules: []\n"));
    assert_eq!(e.field, "spec.rules");
    let e = refused(&base(
        "  rules:\n  - exec: {paths: [/x]}\n    action: explode\n",
    ));
    assert!(e.to_string().contains("explode"), "{e}");
    let e = refused(&base(
        "  nmespaces: [a]\n  rules:\n  - exec: {paths: [/x]}\n    action: audit\n",
    ));
    assert!(
        e.to_string().contains("nmespaces"),
        "unknown fields are named: {e}"
    );
    let e = refused("apiVersion: v1\nkind: PodPolicy\nmetadata: {name: p}\nspec: {rules: [{exec: {paths: [/x]}, action: audit}]}\n");
    assert_eq!(e.field, "apiVersion");
    let e = refused("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: Bad_Name}\nspec: {rules: [{exec: {paths: [/x]}, action: audit}]}\n");
    assert_eq!(e.field, "metadata.name");
    assert!(refused("{{{").source_name.starts_with("bad.yaml"));
}

/// A kill acts after the open it answers: for opens that may write (a truncation, a creation),
/// the policy must say it accepts that, or use deny (docs/decisions.md #32).
#[test]
fn a_kill_on_an_open_that_may_write_is_refused_unless_accepted() {
    let doc = |rule: &str| {
        format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: p}}\nspec:\n  rules:\n  - {rule}\n")
    };
    for rule in [
        "{open: {paths: [/etc/passwd], access: write}, action: kill}",
        "{open: {paths: [/etc/passwd]}, action: kill}",
        "{open: {paths: [/etc/passwd], access: any}, action: deny, fallback: kill}",
    ] {
        let e = refused(&doc(rule));
        assert_eq!(e.field, "spec.rules[0].action", "{rule}: {e}");
        assert!(e.reason.contains("acceptKillAfterOpen"), "{e}");
        let accepted = rule.replace("}, action", "}, acceptKillAfterOpen: true, action");
        let ps = parse_documents(&doc(&accepted), "ok.yaml").expect(&accepted);
        assert!(ps[0].spec.rules[0].accept_kill_after_open);
    }
    for fine in [
        "{open: {paths: [/etc/shadow], access: read}, action: kill}",
        "{open: {paths: [/etc/passwd], access: write}, action: deny}",
        "{open: {paths: [/etc/passwd], access: write}, action: audit}",
        "{exec: {paths: [/bin/sh]}, action: kill}",
    ] {
        parse_documents(&doc(fine), "ok.yaml").expect(fine);
    }
    let e = refused(&doc(
        "{exec: {paths: [/bin/sh]}, action: kill, acceptKillAfterOpen: true}",
    ));
    assert_eq!(e.field, "spec.rules[0].acceptKillAfterOpen", "{e}");
}

fn named(name: &str, rules: &str) -> String {
    format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec: {{rules: [{rules}]}}\n")
}

fn active(set: &PolicySet) -> Vec<(&str, &str)> {
    set.policies
        .iter()
        .map(|l| (l.policy.name(), l.source.as_str()))
        .collect()
}

#[test]
fn three_copies_of_a_name_are_all_refused_each_naming_the_others() {
    let p = named("dup", "{exec: {paths: [/x]}, action: audit}");
    let mut set = Candidates::default();
    for src in ["a.yaml", "b.yaml", "c.yaml"] {
        set.add(&p, src);
    }
    set.add(
        &named("other", "{exec: {paths: [/x]}, action: audit}"),
        "d.yaml",
    );
    let set = set.resolve(&HashSet::new(), Limits::KERNEL);
    assert_eq!(active(&set), [("other", "d.yaml")], "{:?}", set.errors);
    assert_eq!(set.errors.len(), 3, "one error per party: {:?}", set.errors);
    for (src, others) in [
        ("a.yaml", ["b.yaml", "c.yaml"]),
        ("b.yaml", ["a.yaml", "c.yaml"]),
        ("c.yaml", ["a.yaml", "b.yaml"]),
    ] {
        let e = set
            .errors
            .iter()
            .find(|e| e.source_name == src)
            .unwrap_or_else(|| panic!("{src} not named: {:?}", set.errors));
        assert_eq!(e.field, "metadata.name");
        assert!(others.iter().all(|o| e.reason.contains(o)), "{e}");
    }
}

#[test]
fn names_whose_ids_collide_are_all_refused_and_say_so() {
    assert_eq!(
        policy_id("p179bb"),
        policy_id("p54848"),
        "a known collision"
    );
    let mut set = Candidates::default();
    set.add(
        &named("p179bb", "{exec: {paths: [/x]}, action: kill}"),
        "a.yaml",
    );
    set.add(
        &named("p54848", "{exec: {paths: [/y]}, action: audit}"),
        "b.yaml",
    );
    let set = set.resolve(&HashSet::new(), Limits::KERNEL);
    assert_eq!(active(&set), [], "{:?}", set.errors);
    assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
    for (src, other) in [("a.yaml", "p54848"), ("b.yaml", "p179bb")] {
        let e = set.errors.iter().find(|e| e.source_name == src).unwrap();
        assert!(
            e.reason.contains("same id") && e.reason.contains(other),
            "{e}"
        );
    }
}

#[test]
fn a_hand_written_file_wins_over_a_mirrored_resource() {
    let dir = tempfile::tempdir().unwrap();
    let mirrored = |name: &str, rules: &str| format!("{MIRRORED_HEADER}\n{}", named(name, rules));
    // Same name: the hand-written file sorts after the mirrored one and still wins.
    std::fs::write(
        dir.path().join("zz-web.yaml"),
        named("web", "{exec: {paths: [/x]}, action: kill}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("podpolicy.web.yaml"),
        mirrored("web", "{exec: {paths: [/x]}, action: audit}"),
    )
    .unwrap();
    // Colliding ids: a resource cannot displace a node policy by choosing a colliding name.
    std::fs::write(
        dir.path().join("zz-node.yaml"),
        named("p54848", "{exec: {paths: [/y]}, action: kill}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("podpolicy.p179bb.yaml"),
        mirrored("p179bb", "{exec: {paths: [/y]}, action: audit}"),
    )
    .unwrap();
    let set = PolicySet::load_dir(dir.path());
    let names: BTreeSet<&str> = set.policies.iter().map(|l| l.policy.name()).collect();
    assert_eq!(names, ["p54848", "web"].into(), "{:?}", set.errors);
    assert!(
        set.policies.iter().all(|l| l.source.contains("zz-")),
        "{:?}",
        active(&set)
    );
    assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
    for (file, winner) in [
        ("podpolicy.web.yaml", "zz-web.yaml"),
        ("podpolicy.p179bb.yaml", "zz-node.yaml"),
    ] {
        let e = set
            .errors
            .iter()
            .find(|e| e.source_name.contains(file))
            .unwrap_or_else(|| panic!("{file} not named: {:?}", set.errors));
        assert!(
            e.source_name.contains("mirrored from a PodPolicy resource"),
            "{e}"
        );
        assert!(
            e.reason.contains(winner) && e.reason.contains("hand-written"),
            "{e}"
        );
    }
}

fn seventeen_shell_killers(dir: &Path) {
    for i in 1..=17 {
        let name = format!("ns-{i:02}");
        let text = format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec: {{namespaces: [{name}], rules: [{{exec: {{paths: [/bin/sh]}}, action: kill}}]}}\n");
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }
}

#[test]
fn a_policy_that_overflows_a_kernel_entry_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    seventeen_shell_killers(dir.path());
    let mut pd = PolicyDir::new(dir.path());
    pd.refresh();
    let set = pd.set();
    assert_eq!(set.policies.len(), 16, "{:?}", set.errors);
    assert_eq!(set.errors.len(), 1, "{:?}", set.errors);
    let e = &set.errors[0];
    assert!(e.source_name.contains("ns-17.yaml"), "{e}");
    assert!(
        e.reason.contains("\"/bin/sh\"") && e.reason.contains("17") && e.reason.contains("16"),
        "{e}"
    );
    let tables = set.compile();
    assert!(tables.iter().all(|r| r.refs.len() <= 16), "{tables:?}");
    // A newcomer that sorts first does not displace an active policy: it is the one refused.
    std::fs::write(
        dir.path().join("aa.yaml"),
        named("aa", "{exec: {paths: [/bin/sh]}, action: audit}"),
    )
    .unwrap();
    pd.refresh();
    let set = pd.set();
    let names: BTreeSet<&str> = set.policies.iter().map(|l| l.policy.name()).collect();
    assert_eq!(names.len(), 16);
    assert!(
        !names.contains("aa") && !names.contains("ns-17"),
        "{names:?}"
    );
    assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
}

/// A FIFO named like a policy file would block every reader of the directory (podmapd's policy
/// tick, every hook run) on its open; a huge file would fill their memory. Both are refused,
/// the others load, and a file replaced by one of them keeps its last good policies.
#[test]
fn a_fifo_or_a_huge_file_in_the_directory_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), EXAMPLE).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        named("b", "{exec: {paths: [/bin/sh]}, action: audit}"),
    )
    .unwrap();
    let fifo = dir.path().join("stuck.yaml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let mut pd = PolicyDir::new(&path);
        pd.refresh();
        let _ = tx.send(pd);
    });
    let mut pd = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("reading the policy directory blocked on a FIFO");
    let set = pd.set();
    assert_eq!(set.policies.len(), 2, "{:?}", set.errors);
    assert!(
        set.errors
            .iter()
            .any(|e| e.source_name.ends_with("stuck.yaml") && e.reason.contains("FIFO")),
        "{:?}",
        set.errors
    );
    // b.yaml grows past the limit: refused, its last good policy stays, no retry storm.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("b.yaml"))
        .unwrap();
    f.set_len(crate::MAX_POLICY_FILE_BYTES + 1).unwrap();
    pd.refresh();
    let set = pd.set();
    assert!(
        set.policies.iter().any(|l| l.policy.name() == "b"),
        "{:?}",
        set.errors
    );
    assert!(
        set.errors
            .iter()
            .any(|e| e.source_name.ends_with("b.yaml") && e.reason.contains("more than")),
        "{:?}",
        set.errors
    );
    let failures = pd.read_failures();
    assert!(!pd.refresh(), "nothing changed: not read again");
    assert_eq!(pd.read_failures(), failures);
}

#[test]
fn a_failed_read_of_the_directory_keeps_the_last_good_set() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), EXAMPLE).unwrap();
    let mut pd = PolicyDir::new(&dir);
    pd.refresh();
    assert_eq!(pd.set().policies.len(), 1);
    let aside = base.path().join("aside");
    std::fs::rename(&dir, &aside).unwrap();
    // The directory replaced by a file, then by a symlink loop: unreadable, not empty.
    std::fs::write(&dir, "not a directory").unwrap();
    for broken in ["Not a directory", "symbolic links"] {
        if broken == "symbolic links" {
            std::fs::remove_file(&dir).unwrap();
            std::os::unix::fs::symlink(&dir, &dir).unwrap();
        }
        pd.refresh();
        let set = pd.set();
        assert_eq!(set.policies.len(), 1, "{broken}: the last good set stays");
        assert!(
            set.errors
                .iter()
                .any(|e| e.source_name.contains(&*dir.to_string_lossy())
                    && e.reason.contains(broken)
                    && e.reason.contains("last loaded")),
            "{broken}: {:?}",
            set.errors
        );
    }
    assert_eq!(pd.read_failures(), 2);
    // Back: read again, the error is gone.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    pd.refresh();
    assert_eq!(pd.set().policies.len(), 1);
    assert!(pd.set().errors.is_empty(), "{:?}", pd.set().errors);
    // Gone for good: no directory is no policy (not a failure).
    std::fs::remove_dir_all(&dir).unwrap();
    pd.refresh();
    assert!(pd.set().policies.is_empty() && pd.set().errors.is_empty());
    assert_eq!(pd.read_failures(), 2);
}

#[test]
fn compiled_tables_cover_prefixes_by_component() {
    let mut set = Candidates::default();
    set.add(EXAMPLE, "example.yaml");
    set.add("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: tmp-audit}\nspec: {rules: [{exec: {prefixes: [/tmp/x]}, action: audit}]}\n", "t.yaml");
    let rules = set.resolve(&HashSet::new(), Limits::KERNEL).compile();
    let find = |path: &str, exact: bool| {
        rules
            .iter()
            .find(|r| r.table == Table::Exec && r.path == path && r.exact == exact)
    };
    assert_eq!(find("/bin/sh", true).unwrap().refs[0].action, Action::Kill);
    let nc = find("/usr/bin/nc", true).unwrap();
    assert_eq!(nc.refs[0].action, Action::Deny);
    assert!(nc.refs[0].fallback_kill);
    // "/tmp/x" is a component prefix: the exact "/tmp/x" and everything under "/tmp/x/".
    assert!(find("/tmp/x", true).is_some());
    // "/tmp/x/" lies under "/tmp/": it carries both policies' rules.
    let deep = find("/tmp/x/", false).unwrap();
    let ids: BTreeSet<u32> = deep.refs.iter().map(|r| r.policy_id).collect();
    assert_eq!(
        ids,
        [policy_id("tmp-audit"), policy_id("no-shell-in-web")].into()
    );
    let shadow = rules
        .iter()
        .find(|r| r.table == Table::Open && r.path == "/etc/shadow/")
        .unwrap();
    assert_eq!(shadow.refs[0].action, Action::Audit);
    assert_eq!(shadow.refs[0].access, Some(Access::Read));
    assert!(rules
        .iter()
        .any(|r| r.table == Table::Open && r.path == "/etc/shadow" && r.exact));
}

#[test]
fn the_shipped_example_policy_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policies");
    let set = PolicySet::load_dir(&dir);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert_eq!(set.policies.len(), 1);
    assert_eq!(
        set.policies[0].policy,
        parse_documents(EXAMPLE, "x").unwrap()[0]
    );
}

#[test]
fn a_policy_dir_loads_good_files_and_reports_bad_ones() {
    let dir = std::env::temp_dir().join(format!("podmap-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), EXAMPLE).unwrap();
    std::fs::write(dir.join("b.yaml"), "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: b}\nspec: {rules: []}\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "not yaml").unwrap();
    let set = PolicySet::load_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(set.policies.len(), 1);
    assert_eq!(set.errors.len(), 1);
    assert!(set.errors[0].source_name.contains("b.yaml"));
    assert!(PolicySet::load_dir(Path::new("/nonexistent/podmap"))
        .errors
        .is_empty());
}
