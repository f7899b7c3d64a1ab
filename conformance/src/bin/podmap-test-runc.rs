//! The runc the pure-cgroup2 containerd suites run (containerd's runc `BinaryName`). On these
//! hosts the v1 controllers stay bound to v1, so a cgroup2 mount has no cpu, memory or pids
//! controller and any resource limit fails container creation (the sandbox always gets cpu
//! shares). On `create` this drops `linux.resources` from the bundle's config.json, keeping the
//! device rules, then hands every call to the real runc unchanged: paths and membership stay
//! real cgroup v2; limits are not applied.
//!
//! The real runc is `$PODMAP_REAL_RUNC`, else /usr/sbin/runc.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// runc's global options that take a value as the next argument.
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bundle) = create_bundle(&args) {
        if let Err(e) = drop_resources(&bundle.join("config.json")) {
            // runc itself reports a broken bundle better than we could: go on.
            eprintln!("podmap-test-runc: {}: {e}", bundle.display());
        }
    }
    let real = std::env::var_os("PODMAP_REAL_RUNC").unwrap_or_else(|| "/usr/sbin/runc".into());
    let err = Command::new(&real).args(&args).exec();
    eprintln!("podmap-test-runc: exec {}: {err}", real.to_string_lossy());
    std::process::exit(127);
}

/// The bundle directory of a `runc [global options] create [options] <id>` call.
fn create_bundle(args: &[String]) -> Option<PathBuf> {
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        i += if GLOBAL_WITH_VALUE.contains(&args[i].as_str()) {
            2
        } else {
            1
        };
    }
    if args.get(i).map(String::as_str) != Some("create") {
        return None;
    }
    let rest = &args[i + 1..];
    for (j, a) in rest.iter().enumerate() {
        if a == "--bundle" || a == "-b" {
            return rest.get(j + 1).map(PathBuf::from);
        }
        if let Some(b) = a.strip_prefix("--bundle=") {
            return Some(PathBuf::from(b));
        }
    }
    // runc's default bundle is the working directory (containerd's shim runs there).
    std::env::current_dir().ok()
}

fn drop_resources(config: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let Some(linux) = spec.get_mut("linux").and_then(|l| l.as_object_mut()) else {
        return Ok(());
    };
    if let Some(resources) = linux.remove("resources") {
        if let Some(devices) = resources.get("devices") {
            linux.insert(
                "resources".into(),
                serde_json::json!({ "devices": devices }),
            );
        }
    }
    let out = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    std::fs::write(config, out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn finds_the_bundle_of_create_only() {
        let a = v(&[
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "id",
        ]);
        assert_eq!(create_bundle(&a), Some(PathBuf::from("/b")));
        let a = v(&["--root", "/r", "create", "--bundle=/c", "id"]);
        assert_eq!(create_bundle(&a), Some(PathBuf::from("/c")));
        assert_eq!(create_bundle(&v(&["--root", "/r", "start", "id"])), None);
        // A global option's value named "create" is not the command.
        assert_eq!(
            create_bundle(&v(&["--root", "create", "state", "id"])),
            None
        );
    }
}
