//! The container record in the metadata map, as podmapd reads it (any writer with access to the
//! pins could have written it): parsed or refused; a parsed record written back fits the map.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_bpf::layout::META_MAX;
use podmap_bpf::ContainerMeta;

fuzz_target!(|blob: &[u8]| {
    if let Ok(meta) = ContainerMeta::from_blob(blob) {
        let (again, _) = meta.to_blob();
        assert!(again.len() <= META_MAX);
    }
});
