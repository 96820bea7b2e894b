//! The client core against the server core over a virtual network that drops,
//! delays and reorders answers, with a virtual clock that jumps up to ten
//! hours at a time: registrations never lapse while kept, nothing remains
//! after `unregister_all`, and every command completes exactly once.

use proptest::prelude::*;
use rendezvous_tests::client_model::{ops_from_bytes, run};

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_client_keeps_its_registrations_alive_and_completes_every_command(
        bytes in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let ops = ops_from_bytes(&bytes);
        if let Err(broken) = run(&ops) {
            prop_assert!(false, "{broken}\nops: {ops:#?}");
        }
    }
}
