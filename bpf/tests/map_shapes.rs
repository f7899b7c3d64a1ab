//! Pinned maps someone else created with another shape are refused by name, before any use:
//! above all the counters map, which is mmapped (a short or non-mmapable array must never be
//! mapped and indexed past its end).

use podmap_bpf::layout;
use podmap_bpf::testing::PinDir;
use podmap_bpf::SharedMaps;
use std::ffi::CString;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel takes the rest as zero.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 27],
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u32; 28],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: attr is a live, zero-padded bpf_attr prefix of the size passed.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
}

/// Replaces the pin at `path` with a new map of the given shape.
fn pin_map(path: &Path, map_type: u32, key: u32, value: u32, max_entries: u32, flags: u32) {
    let _ = std::fs::remove_file(path);
    let mut create = MapCreate {
        map_type,
        key_size: key,
        value_size: value,
        max_entries,
        map_flags: flags,
        ..Default::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut create);
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = ObjPin {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        ..Default::default()
    };
    assert_eq!(
        bpf(BPF_OBJ_PIN, &mut pin),
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A private pin directory holding a full, correct set of pins.
fn pins() -> PinDir {
    let dir = PinDir::new("podmap-test-shapes");
    drop(SharedMaps::open(&dir.path).expect("creating the pins"));
    dir
}

fn refusal(dir: &Path) -> String {
    match SharedMaps::open(dir) {
        Ok(_) => panic!("a pinned map of the wrong shape was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_counters_map_with_too_few_entries_is_refused() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = pins();
    let path = dir.path.join("podmap_counters");
    // Mmapable, right key and value, but one entry: a page maps fine and every counter past the
    // first would be written beyond the array.
    pin_map(&path, BPF_MAP_TYPE_ARRAY, 4, 8, 1, BPF_F_MMAPABLE);
    let err = refusal(&dir.path);
    assert!(err.contains("max_entries 1"), "{err}");
    assert!(err.contains(&layout::COUNTERS.to_string()), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_counters_map_that_cannot_be_mmapped_is_refused_by_name() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = pins();
    let path = dir.path.join("podmap_counters");
    pin_map(&path, BPF_MAP_TYPE_ARRAY, 4, 8, layout::COUNTERS, 0);
    let err = refusal(&dir.path);
    assert!(err.contains("BPF_F_MMAPABLE"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn a_containers_map_of_another_capacity_is_refused() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = pins();
    let path = dir.path.join("podmap_containers");
    let key = size_of::<layout::podmap_cgroup_key>() as u32;
    let value = size_of::<layout::podmap_container>() as u32;
    pin_map(&path, BPF_MAP_TYPE_HASH, key, value, 16, 0);
    let err = refusal(&dir.path);
    assert!(err.contains("max_entries 16"), "{err}");
    assert!(err.contains(&layout::MAX_CONTAINERS.to_string()), "{err}");
}

#[test]
fn the_right_shapes_are_reused() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = pins();
    SharedMaps::open(&dir.path).expect("pins of the right shape are reused");
}
