//! Bytes from the runtime's NRI socket into the connection multiplexer: it delivers frames or
//! closes with a reason, never panics, and never takes more than its bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_nri_protocol::{ConnId, Multiplexer};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

fuzz_target!(|bytes: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (mut runtime_end, plugin_end) = tokio::io::duplex(64 * 1024);
        let mux = Multiplexer::new(plugin_end, &[ConnId(1), ConnId(2)]).expect("two ids");
        let _ = runtime_end.write_all(bytes).await;
        drop(runtime_end);
        let _ = tokio::time::timeout(Duration::from_secs(1), mux.closed()).await;
    });
});
