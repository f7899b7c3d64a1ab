//! Properties of the ring-buffer record decoder on any bytes (a corrupt buffer, records of
//! other programs' versions): every record of every type and length is decoded or refused with a
//! reason, never a panic or a read past its end, and decoding the same bytes twice agrees.

use podmap_daemon::pipeline::decode::decode;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_record_is_decoded_or_refused(
        kind in 0u32..8,
        tail in prop::collection::vec(any::<u8>(), 0..1200),
        cut in 0usize..1300,
    ) {
        // A header of a real (or unknown) type, then anything, cut anywhere: the declared
        // lengths inside a record are as random as the rest.
        let mut record = kind.to_ne_bytes().to_vec();
        record.extend_from_slice(&tail);
        record.truncate(cut.max(1));
        let first = format!("{:?}", decode(&record));
        let again = format!("{:?}", decode(&record));
        prop_assert_eq!(first, again);
    }
}
