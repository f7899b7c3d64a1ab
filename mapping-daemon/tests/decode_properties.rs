//! Properties of the ring-buffer record decoder on any bytes (a corrupt buffer, records of
//! other programs' versions): every record of every type and length is decoded or refused with a
//! reason, never a panic or a read past its end. A record shorter than its type's fixed part is
//! refused as short, a type no program writes as unknown, whatever the rest holds.

use std::mem::size_of;

use podmap_bpf::layout::{
    self, podmap_cgroup_event, podmap_event_header, podmap_exec_event, podmap_exit_event,
    podmap_open_event,
};
use podmap_daemon::pipeline::decode::{decode, DecodeError};
use proptest::prelude::*;

/// The fixed part of each record type; None for types no program writes.
fn fixed_len(kind: u32) -> Option<usize> {
    match kind {
        // An older program's exec record ends before the credentials.
        layout::EV_EXEC => Some(layout::EXEC_EVENT_NO_CREDS_SIZE),
        layout::EV_EXEC_CREDS => Some(size_of::<podmap_exec_event>()),
        layout::EV_EXIT => Some(size_of::<podmap_exit_event>()),
        layout::EV_CGROUP_MKDIR | layout::EV_CGROUP_RMDIR => Some(size_of::<podmap_cgroup_event>()),
        layout::EV_POLICY_OPEN => Some(size_of::<podmap_open_event>()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_record_is_decoded_or_refused_for_what_it_is(
        kind in 0u32..8,
        tail in prop::collection::vec(any::<u8>(), 0..1200),
        cut in 0usize..1300,
    ) {
        // A header of a real (or unknown) type, then anything, cut anywhere: the declared
        // lengths inside a record are as random as the rest.
        let mut record = kind.to_ne_bytes().to_vec();
        record.extend_from_slice(&tail);
        record.truncate(cut.max(1));
        let got = decode(&record);
        let header = size_of::<podmap_event_header>();
        match fixed_len(kind) {
            _ if record.len() < header => {
                prop_assert!(matches!(got, Err(DecodeError::Short { .. })), "{:?}", got);
            }
            None => prop_assert!(matches!(got, Err(DecodeError::UnknownType(k)) if k == kind), "{:?}", got),
            Some(need) if record.len() < need => {
                prop_assert!(
                    matches!(got, Err(DecodeError::Short { len, need: n }) if len == record.len() && n == need),
                    "{:?}", got
                );
            }
            // Whole: decoded, or (a policy record naming no policy) refused with that reason.
            Some(_) => prop_assert!(
                got.is_ok()
                    || (kind == layout::EV_POLICY_OPEN && matches!(got, Err(DecodeError::NoPolicy))),
                "{:?}", got
            ),
        }
    }
}
