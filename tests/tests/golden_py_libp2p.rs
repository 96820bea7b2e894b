//! py-libp2p 0.8.1's requests, as its own message builders make them
//! (`tests/golden/py-libp2p/`, written by `tests/py/golden.py capture`),
//! decode to what it meant; and our responses decode with its
//! `rendezvous_pb2` and `parse_peer_info` to what we meant.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use libp2p_identity::PeerId;
use rendezvous_core::codec::{FrameDecoder, decode_message};
use rendezvous_core::cookie::Cookie;
use rendezvous_core::proto::{Message, MessageType};
use rendezvous_core::record::{Dialect, Record, RecordLimits};
use rendezvous_core::testing::{self, TestPeer};
use rendezvous_core::{Flavour, RequestId, Server, ServerConfig, Timestamp, Transmit};
use rendezvous_tests::py;

fn golden(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/py-libp2p").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex_to_bytes(text.trim()).into()
}

fn py_peer() -> PeerId {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/py-libp2p/peer-id.txt");
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn decode(frame: &Bytes) -> Message {
    let mut decoder = FrameDecoder::new(8192);
    let mut input = &frame[..];
    let body = decoder.feed(&mut input).unwrap().expect("one whole frame");
    assert!(input.is_empty(), "exactly one frame");
    decode_message(&body).unwrap()
}

#[test]
fn py_register_leaves_the_type_off_and_carries_a_peer_info() {
    let message = decode(&golden("01-request-register.hex"));
    assert_eq!(message.r#type, None, "proto3 leaves REGISTER (0) off the wire");
    assert_eq!(message.message_type(), Ok(MessageType::Register));
    let register = message.register.unwrap();
    assert_eq!(register.ns.as_deref(), Some("golden"));
    assert_eq!(register.ttl, Some(7200));
    let limits = RecordLimits { max_bytes: 4096, max_addresses: 32 };
    let record = Record::parse(register.signed_peer_record.unwrap(), &limits).unwrap();
    assert_eq!(record.dialect, Dialect::Legacy);
    assert_eq!(record.peer, Some(py_peer()));
    let addrs: Vec<String> = record.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["/ip4/127.0.0.1/tcp/4001", "/ip4/192.168.1.5/tcp/4001"]);
}

#[test]
fn py_discover_and_unregister_decode_to_what_they_ask() {
    let discover = decode(&golden("02-request-discover.hex"));
    assert_eq!(discover.message_type(), Ok(MessageType::Discover));
    let body = discover.discover.unwrap();
    assert_eq!((body.ns.as_deref(), body.limit, body.cookie), (Some("golden"), Some(10), None));

    let with_cookie = decode(&golden("03-request-discover-cookie.hex")).discover.unwrap();
    let cookie = Cookie::parse(&with_cookie.cookie.unwrap(), 255).unwrap();
    assert_eq!(cookie.position, 5);
    assert_eq!(cookie.namespace.unwrap().as_str(), "golden");

    let unregister = decode(&golden("04-request-unregister.hex"));
    assert_eq!(unregister.message_type(), Ok(MessageType::Unregister));
    let body = unregister.unregister.unwrap();
    assert_eq!(body.ns.as_deref(), Some("golden"));
    assert_eq!(body.id.map(|id| PeerId::from_bytes(&id).unwrap()), Some(py_peer()));
}

/// Feeds our response frames to py-libp2p's decoder; one JSON line each.
fn py_decode(frames: &[Bytes]) -> Vec<serde_json::Value> {
    let mut child = Command::new(py::python())
        .arg(py::script("golden.py"))
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().unwrap();
    for frame in frames {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(stdin, "{hex}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "py-libp2p could not decode our frames");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn our_responses_decode_in_py_libp2p_as_meant() {
    let mut server = Server::new(ServerConfig::default()).unwrap();
    let py_peer = py_peer();
    let ours = TestPeer::new(3);
    let mut frames = Vec::new();
    let mut ask = |server: &mut Server, peer: PeerId, message: Message| {
        server.handle_request(Timestamp::ZERO, peer, RequestId(0), message);
        let transmit: Transmit = server.poll_transmit().expect("answered");
        frames.push(transmit.to_frame().expect("a response"));
    };
    ask(&mut server, py_peer, decode(&golden("01-request-register.hex")));
    ask(
        &mut server,
        ours.id,
        testing::register("golden", ours.record(Dialect::Signed(Flavour::RustLibp2p)), None),
    );
    ask(&mut server, py_peer, decode(&golden("02-request-discover.hex")));
    ask(&mut server, py_peer, testing::register("golden", golden_record(), Some(1)));
    ask(&mut server, py_peer, decode(&golden("03-request-discover-cookie.hex")));

    let decoded = py_decode(&frames);
    assert_eq!(decoded.len(), 5);
    let ok = &decoded[0]["register_response"];
    assert_eq!((ok["status"].as_u64().unwrap(), ok["ttl"].as_u64().unwrap()), (0, 7200));
    let page = &decoded[2]["discover_response"];
    assert_eq!(page["status"].as_u64().unwrap(), 0);
    let regs = page["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 2, "the py peer and our signed peer, both as PeerInfo");
    assert_eq!(regs[0]["peer"].as_str().unwrap(), py_peer.to_string());
    assert_eq!(
        regs[0]["addrs"].as_array().unwrap()[1].as_str().unwrap(),
        "/ip4/192.168.1.5/tcp/4001"
    );
    assert_eq!(regs[1]["peer"].as_str().unwrap(), ours.id.to_string());
    assert_eq!(regs[1]["addrs"].as_array().unwrap()[0].as_str().unwrap(), ours.addr.to_string());
    assert_eq!(regs[1]["ns"].as_str().unwrap(), "golden");
    let cookie = hex_to_bytes(page["cookie"].as_str().unwrap());
    assert_eq!(Cookie::parse(&cookie, 255).unwrap().position, 2);
    let refused = &decoded[3]["register_response"];
    assert_eq!(refused["status"].as_u64().unwrap(), 102, "E_INVALID_TTL");
    assert!(refused["status_text"].as_str().unwrap().contains("120 to 259200"));
    let bad_cookie = &decoded[4]["discover_response"];
    assert_eq!(
        bad_cookie["status"].as_u64().unwrap(),
        103,
        "a cookie ahead of the server is E_INVALID_COOKIE"
    );
}

fn golden_record() -> Bytes {
    decode(&golden("01-request-register.hex")).register.unwrap().signed_peer_record.unwrap()
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
