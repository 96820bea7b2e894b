//! Arbitrary bytes as a request stream: framing, protobuf, records, server.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rendezvous_tests::fuzzing::decode_frames(data));
