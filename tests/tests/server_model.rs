//! The server agrees with its reference model after every step of random
//! operation sequences: registrations and refreshes from several peers in all
//! three dialects, unregistrations, discovery with and without cookies (valid,
//! forged, foreign, garbage), paging through everything, time jumps, timers,
//! reader hints and disconnects, all under tiny limits. A second property
//! weighs the operations toward walks: a first page without a cookie, then
//! its next pages while peers register, refresh, unregister and expire.

use proptest::prelude::*;
use rendezvous_tests::server_model::{self, CookieChoice, Op, ops_from_bytes};

/// Steps that change the registry between the pages of a walk, or walk on.
fn walk_step() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), 0..3u8, 0..3u8, 120..1000u16)
            .prop_map(|(peer, ns, dialect, ttl)| Op::Register { peer, ns, dialect, ttl }),
        1 => (any::<u8>(), 0..3u8).prop_map(|(peer, ns)| Op::Unregister { peer, ns }),
        2 => (0..400u16).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Timeout),
        2 => (any::<u8>(), prop::option::of(0..3u8), 1..4u8).prop_map(|(peer, ns, limit)| {
            Op::Discover { peer, ns, limit, cookie: CookieChoice::None }
        }),
        5 => Just(Op::NextPage),
    ]
}

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

    #[test]
    fn walks_agree_with_the_model_while_the_registry_changes(ops in proptest::collection::vec(walk_step(), 0..120)) {
        if let Err(mismatch) = server_model::run(&ops) {
            let upto = &ops[..=mismatch.step];
            prop_assert!(false, "step {} ({:?}): {}\nops: {:#?}", mismatch.step, mismatch.op, mismatch.what, upto);
        }
    }
}
