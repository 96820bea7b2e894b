//! The server agrees with its reference model after every step of random
//! operation sequences: registrations and refreshes from several peers in all
//! three dialects, unregistrations, discovery with and without cookies (valid,
//! forged, foreign, garbage), paging through everything, time jumps, timers,
//! reader hints and disconnects, all under tiny limits.

use proptest::prelude::*;
use rendezvous_tests::server_model::{self, ops_from_bytes};

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_server_agrees_with_the_model_after_every_step(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let ops = ops_from_bytes(&bytes);
        if let Err(mismatch) = server_model::run(&ops) {
            let upto = &ops[..=mismatch.step];
            prop_assert!(false, "step {} ({:?}): {}\nops: {:#?}", mismatch.step, mismatch.op, mismatch.what, upto);
        }
    }
}
