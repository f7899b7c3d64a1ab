//! The one request line a socket client sends: any bytes are refused with a reason or parsed,
//! never a panic, and a parsed request says the same once written back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podmap_proto::Request;

fuzz_target!(|line: &[u8]| {
    if let Ok(request) = Request::parse(line) {
        let again = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(Request::parse(&again).ok(), Some(request));
    }
});
