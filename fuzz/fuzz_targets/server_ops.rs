//! Arbitrary server operation sequences, checked against the reference model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rendezvous_tests::fuzzing::server_ops(data));
