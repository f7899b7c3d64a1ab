//! A ring-buffer record, as the kernel (or a corrupt buffer) hands it to podmapd: decoded or
//! reported, never read past its end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_daemon::pipeline::decode::decode;

fuzz_target!(|record: &[u8]| {
    let _ = decode(record);
});
