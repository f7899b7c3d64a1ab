//! Builds the C eBPF objects with clang, and generates the Rust view of the shared header
//! `c/podmap.h` with bindgen (`$OUT_DIR/podmap_layout.rs`, included by src/layout.rs). clang is
//! taken from $CLANG, else the newest `clang-NN` on PATH, else `clang`. bindgen loads libclang
//! at build time (Debian's libclang1, which scripts/setup.sh installs; clang-sys finds the
//! versioned library itself, and honours $LIBCLANG_PATH).

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Every C file the build reads.
const SOURCES: [&str; 9] = [
    "podmap.h",
    "maps.bpf.h",
    "kernel.bpf.h",
    "events.bpf.h",
    "task_ids.bpf.h",
    "cwd.bpf.h",
    "policy.bpf.h",
    "podmap.bpf.c",
    "maps.bpf.c",
];

fn find_clang() -> String {
    if let Ok(c) = env::var("CLANG") {
        return c;
    }
    let mut best: Option<(u32, String)> = None;
    for dir in env::var("PATH").unwrap_or_default().split(':') {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_prefix("clang-")
                .and_then(|v| v.parse::<u32>().ok())
            {
                if best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                    best = Some((v, name));
                }
            }
        }
    }
    best.map(|(_, n)| n).unwrap_or_else(|| "clang".to_string())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e}. Install clang and libbpf-dev (scripts/setup.sh does).",
            cmd.get_program()
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn bpf_object(clang: &str, src: &Path, out: &Path) {
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("unsupported target arch {other}"),
        Err(_) => "x86",
    };
    let multiarch = match arch {
        "x86" => "/usr/include/x86_64-linux-gnu",
        _ => "/usr/include/aarch64-linux-gnu",
    };
    run(
        Command::new(clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(multiarch)
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(out),
        &format!("compiling {}", src.display()),
    );
}

/// Records the shared counters' enumerators as bindgen meets them, for the counter table test.
#[derive(Debug, Default)]
struct Enumerators(Arc<Mutex<BTreeMap<i64, Vec<String>>>>);

impl bindgen::callbacks::ParseCallbacks for Enumerators {
    fn enum_variant_name(
        &self,
        enum_name: Option<&str>,
        name: &str,
        value: bindgen::callbacks::EnumVariantValue,
    ) -> Option<String> {
        if enum_name == Some("enum podmap_counter") {
            let v = match value {
                bindgen::callbacks::EnumVariantValue::Boolean(b) => i64::from(b),
                bindgen::callbacks::EnumVariantValue::Signed(v) => v,
                bindgen::callbacks::EnumVariantValue::Unsigned(v) => v as i64,
            };
            let mut m = self.0.lock().unwrap();
            let names = m.entry(v).or_default();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        None
    }
}

/// The Rust view of podmap.h: every `podmap_*` type and `PODMAP_*` constant, nothing else.
fn layout_bindings(header: &Path, out: &Path) {
    let counters = Enumerators::default();
    let seen = counters.0.clone();
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("podmap_.*")
        .allowlist_var("PODMAP_.*")
        // Enums as plain constants of the C enum's integer type: the values are what the maps
        // and records carry, and several enums share values (counter ranges, sizes).
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .derive_partialeq(true)
        .derive_eq(true)
        .derive_hash(true)
        .use_core()
        .generate_comments(true)
        .layout_tests(true)
        .parse_callbacks(Box::new(counters))
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen on {}: {e}. Install libclang (scripts/setup.sh does).",
                header.display()
            )
        });
    let mut code = bindings.to_string();
    // C's `type` field: bindgen names it `type_`; the Rust code has always said `r#type`.
    let field = "pub type_: __u32";
    assert_eq!(
        code.matches(field).count(),
        1,
        "one `type` field (podmap_event_header.type) expected in the generated layout"
    );
    code = code
        .replace(field, "pub r#type: __u32")
        .replace(
            "(podmap_event_header, type_)",
            "(podmap_event_header, r#type)",
        )
        .replace("podmap_event_header::type_", "podmap_event_header::type");
    assert!(
        !code.contains("type_"),
        "an unexpected `type_` in the generated layout"
    );
    // The counters' enumerators by value, for the test that Counter covers each of them.
    code.push_str("\n/// `enum podmap_counter`'s enumerators: (value, C names).\n");
    code.push_str("#[allow(dead_code)]\npub const COUNTER_ENUMERATORS: &[(u32, &[&str])] = &[\n");
    for (v, names) in seen.lock().unwrap().iter() {
        writeln!(code, "    ({v}, &{names:?}),").unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = find_clang();
    for f in SOURCES {
        println!("cargo:rerun-if-changed=c/{f}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    bpf_object(&clang, &dir.join("podmap.bpf.c"), &out.join("podmap.bpf.o"));
    bpf_object(&clang, &dir.join("maps.bpf.c"), &out.join("maps.bpf.o"));
    layout_bindings(&dir.join("podmap.h"), &out.join("podmap_layout.rs"));
}
