//! The OCI state a runtime writes on the hook's stdin, and the bundle's config.json: parsed or
//! refused, never a panic (a panic would fail the container), and a container record built from
//! any annotations stays within the metadata map's size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_oci_hook::bundle::parse_config;
use podmap_oci_hook::state::State;

fuzz_target!(|input: &[u8]| {
    let _ = State::parse(input);
    if let Ok(config) = parse_config(input) {
        let (_, _) = podmap_oci_hook::annotations::kube_meta(&config.annotations);
    }
});
