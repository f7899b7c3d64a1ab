//! The policy rule tables against the real kernel: a bad entry or a full table never costs the
//! rest of the table, and what is written is what the kernel's longest-prefix lookup finds.

use podmap_bpf::layout::{MAX_RULES, RULE_REFS};
use podmap_bpf::maps::{KernelAction, PathRule, RuleRef, RuleTable, RulesError};
use podmap_bpf::testing::PinDir;
use podmap_bpf::SharedMaps;

fn kill(policy_id: u32) -> RuleRef {
    RuleRef {
        policy_id,
        rule_index: 0,
        action: KernelAction::Kill,
        read: false,
        write: false,
    }
}

fn entry(path: &str, exact: bool, refs: Vec<RuleRef>) -> PathRule {
    PathRule {
        path: path.into(),
        exact,
        refs,
    }
}

#[test]
fn an_entry_that_cannot_be_written_whole_never_costs_the_rest_of_the_table() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-rules");
    let mut maps = SharedMaps::open(&dir.path).expect("create pins");
    let seventeen: Vec<RuleRef> = (1..=17).map(kill).collect();
    let problems = maps.policy.replace_rules(
        RuleTable::Exec,
        &[
            entry("/bin/true", true, vec![kill(100)]),
            entry("/bin/sh", true, seventeen.clone()),
            entry(&format!("/{}", "x".repeat(300)), true, vec![kill(101)]),
            entry("/usr/", false, vec![kill(102)]),
        ],
    );
    // Both problems are reported, by path.
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RulesError::TooManyRefs { path, n: 17 } if path == "/bin/sh")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RulesError::BadPath(path) if path.len() == 301)),
        "{problems:?}"
    );
    // The other entries are in the kernel, as its lookup finds them.
    let found = |path: &str| maps.policy.match_rules(RuleTable::Exec, path).unwrap();
    assert_eq!(found("/bin/true").unwrap().refs, vec![kill(100)]);
    assert_eq!(found("/usr/bin/x").unwrap().refs, vec![kill(102)]);
    assert_eq!(
        found("/bin/truex"),
        None,
        "an exact entry matches only itself"
    );
    // The crowded entry keeps the first 16 references and the true count, so the kernel
    // counts every hit that may have missed one (kernel_policy_refs_truncated).
    let sh = found("/bin/sh").expect("the crowded entry is written");
    assert_eq!(sh.refs, seventeen[..RULE_REFS].to_vec());
    assert_eq!(sh.count, 17);
}

#[test]
fn a_full_table_is_replaced_by_another_full_table() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-rules");
    let mut maps = SharedMaps::open(&dir.path).expect("create pins");
    let table = |tag: &str| -> Vec<PathRule> {
        (0..MAX_RULES)
            .map(|i| entry(&format!("/{tag}/{i}"), true, vec![kill(i)]))
            .collect()
    };
    let problems = maps.policy.replace_rules(RuleTable::Open, &table("old"));
    assert!(problems.is_empty(), "{problems:?}");
    // Every key new: the new entries do not fit beside the old ones until those go.
    let problems = maps.policy.replace_rules(RuleTable::Open, &table("new"));
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(3)]
    );
    for i in [0, MAX_RULES / 2, MAX_RULES - 1] {
        let path = format!("/new/{i}");
        assert_eq!(
            maps.policy
                .match_rules(RuleTable::Open, &path)
                .unwrap()
                .unwrap()
                .refs,
            vec![kill(i)]
        );
        assert_eq!(
            maps.policy
                .match_rules(RuleTable::Open, &format!("/old/{i}"))
                .unwrap(),
            None
        );
    }
}
