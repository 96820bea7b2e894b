//! Arbitrary bytes as answers to a client's outstanding requests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rendezvous_tests::fuzzing::client_responses(data));
