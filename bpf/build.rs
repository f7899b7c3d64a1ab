//! Builds the C eBPF objects with clang, and a host program that prints the C layouts for the
//! layout test. clang is taken from $CLANG, else the newest `clang-NN` on PATH, else `clang`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = find_clang();
    for f in [
        "podmap.h",
        "maps.bpf.h",
        "kernel.bpf.h",
        "podmap.bpf.c",
        "maps.bpf.c",
        "layout_dump.c",
    ] {
        println!("cargo:rerun-if-changed=c/{f}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    bpf_object(&clang, &dir.join("podmap.bpf.c"), &out.join("podmap.bpf.o"));
    bpf_object(&clang, &dir.join("maps.bpf.c"), &out.join("maps.bpf.o"));
    run(
        Command::new(&clang)
            .arg("-O0")
            .arg("-I")
            .arg(&dir)
            .arg(dir.join("layout_dump.c"))
            .arg("-o")
            .arg(out.join("layout_dump")),
        "compiling the host layout dumper",
    );
}
