//! Which open rules an open's flags bring in, against the real kernel: an open that creates or
//! truncates modifies the file system, so write rules apply to it whatever its access mode
//! (docs/decisions.md #13). Set-up as in policies.rs.

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use podmap_bpf::testing::{TestCgroup, TestPod};
use podmap_bpf::SharedMaps;
use podmap_conformance::daemon::{cgroup2_mount, Daemon, DaemonOptions};

const WAIT: Duration = Duration::from_secs(20);

/// Exit codes of [`open_in_cgroup`]'s child.
const OPENED: i32 = 0;
const REFUSED: i32 = 1;
const OTHER_ERROR: i32 = 2;

/// Forks a child that joins `cgroup`, calls open(2) on `path` with `flags` and exits with
/// OPENED, REFUSED (EPERM) or OTHER_ERROR; a kill rule kills it instead.
fn open_in_cgroup(cgroup: &Path, path: &Path, flags: libc::c_int) -> std::process::ExitStatus {
    // Everything the child touches is made before the fork: it only calls async-signal-safe
    // functions.
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let target = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: the child calls only open, write, close and _exit before it exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            // "0" moves the writing process.
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(97);
            }
            libc::close(fd);
            let code = if libc::open(target.as_ptr(), flags) >= 0 {
                OPENED
            } else if *libc::__errno_location() == libc::EPERM {
                REFUSED
            } else {
                OTHER_ERROR
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let st = std::process::ExitStatus::from_raw(status);
    assert_ne!(
        st.code(),
        Some(97),
        "could not move into {}",
        cgroup.display()
    );
    st
}

/// A write-only deny rule (kill where BPF-LSM is not loaded) catches `O_RDONLY | O_TRUNC`, which
/// truncates, and lets a plain `O_RDONLY` open through. Before the LSM program and the
/// tracepoints shared one access-mode helper, the LSM's took the access mode alone: where BPF-LSM
/// enforces, this open was let through and truncated the file. Where it does not load (the
/// development VMs), the tracepoint's kill checks the same helper, which the tracepoints' own
/// computation already agreed with.
#[test]
fn a_write_rule_catches_an_open_that_truncates_whatever_its_access_mode() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let policy_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![(
            "PODMAP_POLICY_DIR".into(),
            policy_dir.path().display().to_string(),
        )],
        ..Default::default()
    });
    let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-openmodes").unwrap();
    let pod = TestPod {
        namespace: "prod",
        name: "web-1",
        uid: "11111111-2222-3333-4444-555555555555",
        labels: &[("app", "web")],
    };
    cg.map_container(&mut maps, &pod, "app").unwrap();

    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("ledger");
    std::fs::write(&file, "kept\n").unwrap();
    let body = format!(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata:\n  name: no-writes\nspec:\n  namespaces: [prod]\n  podSelector:\n    matchLabels: {{app: web}}\n  rules:\n  - open: {{paths: [{}], access: write}}\n    action: deny\n    fallback: kill\n    acceptKillAfterOpen: true\n",
        file.display()
    );
    let tmp = policy_dir.path().join(".writes.yaml.tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(tmp, policy_dir.path().join("writes.yaml")).unwrap();
    daemon.wait_policies(1);
    let lsm = daemon.status()["enforcement_mode"] == "lsm";

    // Policies apply within a moment: until then the open may pass (and truncate).
    let deadline = Instant::now() + WAIT;
    let st = loop {
        std::fs::write(&file, "kept\n").unwrap();
        let st = open_in_cgroup(&cg.path(), &file, libc::O_RDONLY | libc::O_TRUNC);
        if st.code() != Some(OPENED) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "O_RDONLY|O_TRUNC was never caught by the write rule (lsm: {lsm})"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if lsm {
        assert_eq!(st.code(), Some(REFUSED), "{st:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    } else {
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    }

    // A read-only open without O_TRUNC or O_CREAT is no write.
    std::fs::write(&file, "kept\n").unwrap();
    let st = open_in_cgroup(&cg.path(), &file, libc::O_RDONLY);
    assert_eq!(st.code(), Some(OPENED), "{st:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}
