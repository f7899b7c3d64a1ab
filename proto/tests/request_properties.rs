//! Properties of the socket's request line on any bytes: refused with a reason or parsed, never
//! a panic; a parsed request says the same once written back; a filter built from any strings
//! survives the round trip; lines over the limit are refused before they are parsed.

use podmap_proto::{EventFilter, Request, RequestError, MAX_REQUEST_LINE};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_line_is_parsed_or_refused_and_a_parsed_one_round_trips(
        line in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            "\\{\"(events|status|containers|x)\": ?\\{(\"(namespace|pod|container|types|labels)\": ?(\"[^\"]{0,8}\"|\\[\"exec\"\\]|\\{\\}|1|null),?){0,3}\\}\\}".prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(request) = Request::parse(&line) {
            let again = serde_json::to_vec(&request).unwrap();
            prop_assert_eq!(Request::parse(&again), Ok(request));
        }
        // The generator's well-formed lines do parse: a parser refusing everything fails here.
        let known = br#"{"events": {"namespace": "prod", "types": ["exec"]}}"#;
        prop_assert!(Request::parse(known).is_ok());
    }

    #[test]
    fn a_filter_of_any_strings_round_trips(
        namespace in proptest::option::of("\\PC{0,20}"),
        pod in proptest::option::of("\\PC{0,20}"),
        labels in prop::collection::btree_map("\\PC{1,10}", "\\PC{0,10}", 0..4),
    ) {
        let request = Request::Events(EventFilter { namespace, pod, labels, ..Default::default() });
        let line = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(Request::parse(&line), Ok(request));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_whatever_it_holds(extra in 1usize..4096, fill in any::<u8>()) {
        let line = vec![fill; MAX_REQUEST_LINE + extra];
        prop_assert_eq!(Request::parse(&line), Err(RequestError::TooLong));
    }
}
