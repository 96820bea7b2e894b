//! Client operation sequences over a lossy network, checked against its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rendezvous_tests::fuzzing::client_ops(data));
