//! The programs' pinned links against the real kernel (docs/decisions.md #30): they outlive the
//! loader, the next loader adopts them when they run the same programs and replaces them
//! otherwise, an interrupted swap is finished, and removing the pin directory detaches them.

use std::path::Path;
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};
use podmap_bpf::links::{LINKS_DIR, LINKS_NEW_DIR};
use podmap_bpf::programs::{self, ProgramConfig};
use podmap_bpf::testing::PinDir;
use podmap_cgroup::CgroupLayout;

/// The id of the program the pinned link `name` runs.
fn pinned_program(dir: &Path, name: &str) -> u32 {
    let link = PinnedLink::from_pin(dir.join(LINKS_DIR).join(name)).expect("pinned link");
    FdLink::from(link).info().expect("link info").program_id()
}

fn loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == id)
}

/// Programs are freed a moment after their last reference goes.
fn wait_unloaded(id: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded(id) {
        assert!(Instant::now() < deadline, "program {id} still loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pinned_links_outlive_the_loader_and_are_adopted_replaced_or_removed() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let pins = PinDir::new("podmap-test-links");
    let layout = CgroupLayout::detect(Path::new("/sys/fs/cgroup"), "memory").expect("layout");
    let cfg = ProgramConfig::new(&pins.path, &layout);

    let first = programs::load(&cfg).expect("first load");
    assert_eq!(first.links.mode, "attached");
    assert!(first.links.programs.iter().any(|p| p == "podmap_exec"));
    let exec = pinned_program(&pins.path, "podmap_exec");
    drop(first);
    // The loader is gone; the program is not.
    std::thread::sleep(Duration::from_millis(200));
    assert!(loaded(exec), "podmap_exec detached with its loader");

    let second = programs::load(&cfg).expect("second load");
    assert_eq!(second.links.mode, "adopted", "{:?}", second.links);
    assert_eq!(pinned_program(&pins.path, "podmap_exec"), exec);
    drop(second);

    // A swap interrupted after the exchange leaves the old set in links_new: finished at start.
    let stale = pins.path.join(LINKS_NEW_DIR);
    std::fs::create_dir(&stale).unwrap();
    FdLink::from(PinnedLink::from_pin(pins.path.join(LINKS_DIR).join("podmap_exec")).unwrap())
        .pin(stale.join("podmap_exec"))
        .unwrap();
    // Other settings: the same instructions, other .rodata.
    let other = ProgramConfig {
        wakeup_bytes: 64 * 1024,
        ..cfg.clone()
    };
    let third = programs::load(&other).expect("third load");
    // One podmapd per pin directory: they would share the ring buffer.
    let busy = ProgramConfig {
        lock_wait: Duration::ZERO,
        ..cfg.clone()
    };
    match programs::load(&busy) {
        Err(e) => assert!(e.to_string().contains("another podmapd"), "{e}"),
        Ok(_) => panic!("a second loader took the pin directory in use"),
    }
    assert_eq!(third.links.mode, "replaced", "{:?}", third.links);
    assert!(
        third
            .links
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("rodata")),
        "{:?}",
        third.links
    );
    assert!(third.links.overlap.is_some());
    assert!(!stale.exists(), "links_new left behind");
    let replaced = pinned_program(&pins.path, "podmap_exec");
    assert_ne!(replaced, exec);
    wait_unloaded(exec);
    drop(third);

    // Removing the pin directory (the uninstall) detaches everything.
    assert!(loaded(replaced));
    drop(pins);
    wait_unloaded(replaced);
}
