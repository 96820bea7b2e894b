//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) on stable, so
//! every input that ever found a bug, and the seeds, stay tested without
//! nightly.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "the {target} corpus is empty");
    for path in entries {
        let data = std::fs::read(&path).expect("readable corpus file");
        run(&data);
    }
}

#[test]
fn the_decode_frames_corpus_replays_cleanly() {
    replay("decode_frames", rendezvous_tests::fuzzing::decode_frames);
}

#[test]
fn the_server_ops_corpus_replays_cleanly() {
    replay("server_ops", rendezvous_tests::fuzzing::server_ops);
}

#[test]
fn the_client_ops_corpus_replays_cleanly() {
    replay("client_ops", rendezvous_tests::fuzzing::client_ops);
}

#[test]
fn the_client_responses_corpus_replays_cleanly() {
    replay("client_responses", rendezvous_tests::fuzzing::client_responses);
}
