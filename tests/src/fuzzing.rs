//! The bodies of the fuzz targets, here so that the checked-in corpus replays
//! as an ordinary test on stable (`tests/fuzz_corpus.rs`).

use std::sync::OnceLock;

use libp2p_identity::PeerId;
use rendezvous_core::codec::{self, FrameDecoder};
use rendezvous_core::proto::Message;
use rendezvous_core::record::{Record, RecordLimits};
use rendezvous_core::testing::TestPeer;
use rendezvous_core::{
    Client, ClientConfig, ClientEvent, Failure, Namespace, RequestId, Server, ServerConfig,
    Timestamp,
};

use crate::{client_model, server_model};

static PEER: OnceLock<PeerId> = OnceLock::new();

/// Arbitrary bytes as a stream of frames, fed in chunks whose sizes the
/// input also picks; every decoded frame goes to a server. Must not panic,
/// must not hand out a body over the limit, and must answer at most once.
pub fn decode_frames(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut server = Server::new(ServerConfig::default()).expect("default limits are consistent");
    let max = server.limits().max_request_frame;
    let peer = *PEER.get_or_init(|| TestPeer::new(0).id);
    let mut decoder = FrameDecoder::new(max);
    for (n, mut piece) in stream.chunks(chunk).enumerate() {
        while !piece.is_empty() {
            match decoder.feed(&mut piece) {
                Ok(Some(body)) => {
                    assert!(body.len() <= max, "a body over the limit was handed out");
                    probe_body(&body);
                    let id = RequestId(n as u64);
                    if server.handle_frame(Timestamp::from_secs(n as u64), peer, id, &body).is_ok()
                    {
                        let answered = std::iter::from_fn(|| server.poll_transmit()).count();
                        assert_eq!(answered, 1, "one request, {answered} outcomes");
                    }
                }
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

/// Decodes a body as every message this crate reads, checking that what
/// decodes re-encodes to something that decodes to the same value.
fn probe_body(body: &[u8]) {
    if let Ok(message) = codec::decode_message(body) {
        let again = codec::frame(&message);
        let mut decoder = FrameDecoder::new(usize::MAX);
        let round = decoder.feed(&mut &again[..]).expect("our own frame").expect("complete");
        assert_eq!(codec::decode_message(&round).expect("our own encoding"), message);
        if let Some(record) = message.register.and_then(|r| r.signed_peer_record) {
            let _ = Record::parse(record, &RecordLimits { max_bytes: 4096, max_addresses: 32 });
        }
    }
    let _ = <Message as prost::Message>::decode(body);
}

/// Server operation sequences from arbitrary bytes, checked against the model.
pub fn server_ops(data: &[u8]) {
    let ops = server_model::ops_from_bytes(data);
    if let Err(mismatch) = server_model::run(&ops) {
        panic!("server and model disagree: {mismatch:?}");
    }
}

/// Client operation sequences over a lossy network, checked for lapses,
/// leftovers after shutdown and exactly-once completion.
pub fn client_ops(data: &[u8]) {
    let ops = client_model::ops_from_bytes(data);
    if let Err(broken) = client_model::run(&ops) {
        panic!("client property broken: {broken}");
    }
}

/// Arbitrary bytes as the server's answers to a client's outstanding
/// requests. Must not panic, and every command must still complete once.
pub fn client_responses(data: &[u8]) {
    let me = TestPeer::new(1);
    let server = *PEER.get_or_init(|| TestPeer::new(0).id);
    let mut client =
        Client::new(ClientConfig::default(), me.keypair.clone(), vec![me.addr.clone()], 1)
            .expect("the default config is valid");
    let ns = |n: &str| Namespace::new(n, 255).expect("valid");
    let now = Timestamp::ZERO;
    // The watch subscribes: its answer and the batches after it are fuzzed too.
    client.set_server_subscribes(now, server, true);
    client.watch(now, server, ns("c")).expect("room");
    let mut commands = vec![
        client.register(now, server, ns("a"), None).expect("room"),
        client.discover(now, server, Some(ns("a")), None).expect("room"),
        client.discover_all(now, server, None, Some(3)).expect("room"),
        client.unregister(now, server, ns("b")).expect("room"),
    ];
    let mut input = data;
    let mut completions = Vec::new();
    let drain = |client: &mut Client, completions: &mut Vec<RequestId>| {
        while let Some(event) = client.poll_event() {
            if let Some(id) = completion(&event) {
                completions.push(id);
            }
        }
    };
    for round in 0..64 {
        let transmits: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
        if transmits.is_empty() {
            break;
        }
        for t in transmits {
            let Some((&len, rest)) = input.split_first() else {
                client.handle_failure(now, t.request_id, Failure::StreamClosed { written: true });
                continue;
            };
            let take = usize::from(len).min(rest.len());
            let (body, rest) = rest.split_at(take);
            input = rest;
            match len % 8 {
                0 => client.handle_failure(
                    now,
                    t.request_id,
                    Failure::StreamClosed { written: true },
                ),
                1 => client.handle_sent(now, t.request_id),
                _ => client.handle_response_frame(now, t.request_id, body),
            }
            // A subscription's batches follow its answer on the same request id.
            for _ in 0..usize::from(t.subscription) * 3 {
                let Some((&len, rest)) = input.split_first() else { break };
                let (body, rest) = rest.split_at(usize::from(len).min(rest.len()));
                input = rest;
                client.handle_response_frame(now, t.request_id, body);
            }
        }
        drain(&mut client, &mut completions);
        if round == 32 {
            commands.push(client.discover(now, server, None, None).expect("room"));
        }
    }
    // Watches and refreshes keep sending; answer nothing more and let time
    // pass until every command is done.
    client.unwatch(server, ns("c"));
    client.handle_timeout(Timestamp::from_secs(24 * 3600));
    while let Some(t) = client.poll_transmit() {
        client.handle_failure(Timestamp::from_secs(24 * 3600), t.request_id, Failure::Unreachable);
    }
    client.handle_timeout(Timestamp::from_secs(48 * 3600));
    drain(&mut client, &mut completions);
    completions.sort();
    commands.sort();
    assert_eq!(completions, commands, "every command completes exactly once");
}

fn completion(event: &ClientEvent) -> Option<RequestId> {
    match event {
        ClientEvent::Registered { request, .. }
        | ClientEvent::RegisterFailed { request, .. }
        | ClientEvent::Unregistered { request, .. } => *request,
        ClientEvent::Discovered { request, .. } | ClientEvent::DiscoverFailed { request, .. } => {
            Some(*request)
        }
        _ => None,
    }
}
