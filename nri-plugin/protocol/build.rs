//! Generates the NRI API (messages and async ttrpc services) from nri/api.proto. The parser is
//! ttrpc-codegen's pure-Rust one, so no protoc is needed.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    nri::generate();
}

mod nri {
    use std::path::{Path, PathBuf};

    const PROTO: &str = "nri/api.proto";

    pub fn generate() {
        println!("cargo:rerun-if-changed={PROTO}");
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        ttrpc_codegen::Codegen::new()
            .out_dir(&out)
            .input(PROTO)
            .include("nri")
            .rust_protobuf()
            .customize(ttrpc_codegen::Customize {
                async_all: true,
                ..Default::default()
            })
            .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
            .run()
            .expect("generating the NRI API from nri/api.proto");
        for file in ["api.rs", "api_ttrpc.rs"] {
            strip_inner_attributes(&out.join(file));
        }
    }

    /// The generated files open with inner attributes (`#![allow(..)]`) and `//!` docs, which
    /// `include!` cannot take: drop them; src/lib.rs puts the allows on the modules instead.
    fn strip_inner_attributes(path: &Path) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading generated {}: {e}", path.display()));
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("#![") || t.starts_with("//!"))
            })
            .collect();
        std::fs::write(path, kept.join("\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}
