//! The `/ws` listener: our client registers and discovers over it beside
//! TCP, and bad input on it (an HTTP request that is no upgrade, an upgrade
//! that never completes, an oversized frame) is refused without disturbing
//! anyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `/ip4/127.0.0.1/tcp/P/ws/p2p/..` as a socket address.
fn socket(address: &str) -> SocketAddr {
    let port = address.split("/tcp/").nth(1).unwrap().split('/').next().unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Whether the server closes `stream` within `limit` (reading and dropping
/// whatever it says first).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true, // reset
        }
    }
    false
}

#[test]
fn our_client_registers_over_ws_and_meets_a_tcp_peer() {
    let (server, tcp) = common::server(&["--ws-port", "0"]);
    let ws = common::listening(&server, "ws");
    assert!(server.seen().iter().any(|l| l.contains("Listening on: /ip4/127.0.0.1/tcp/")));
    let mut peer = common::client(&tcp, &["--namespace", "mixed"]);
    let tcp_peer = common::peer_id(&peer.expect("Client started with peer ID: "));
    peer.expect("✓ Registered with TTL");
    common::finds(&ws, "mixed", &tcp_peer);

    let mut over_ws = common::client(&ws, &["--namespace", "mixed-ws"]);
    let ws_peer = common::peer_id(&over_ws.expect("Client started with peer ID: "));
    over_ws.expect("✓ Registered with TTL");
    common::finds(&tcp, "mixed-ws", &ws_peer);
}

#[test]
fn bad_input_on_ws_is_refused_without_disturbing_anyone() {
    // Refusals must come well before the handshake timeout, so that they
    // are refusals and not that timeout.
    let (server, tcp) = common::server(&["--ws-port", "0", "--handshake-timeout", "8"]);
    let refused_within = Duration::from_secs(4);
    let ws = common::listening(&server, "ws");
    let at = socket(&ws);
    // A peer over /ws that must keep working throughout.
    let mut steady = common::client(&ws, &["--namespace", "steady"]);
    let steady_id = common::peer_id(&steady.expect("Client started with peer ID: "));
    steady.expect("✓ Registered with TTL");

    // An HTTP request that is not a WebSocket upgrade.
    let mut plain = TcpStream::connect(at).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert!(closed_within(&mut plain, refused_within), "a plain GET was kept open");

    // Upgrades that never complete: half a request line, then silence.
    let mut stalled: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(at).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs").unwrap();
            s
        })
        .collect();

    // An upgrade that completes, then a frame announcing 2 MiB.
    let mut oversized = TcpStream::connect(at).unwrap();
    oversized
        .write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut answer = [0u8; 12];
    oversized.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    oversized.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101", "the upgrade itself is fine");
    // FIN + binary, masked, 64-bit length of 2 MiB, mask, then a little of
    // the payload: a point that took the frame would wait for the rest.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(2u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 1024]);
    oversized.write_all(&frame).unwrap();
    assert!(closed_within(&mut oversized, refused_within), "a 2 MiB frame was taken");

    // Meanwhile, the others are served: over TCP, over /ws, and the steady one.
    common::finds(&tcp, "steady", &steady_id);
    common::finds(&ws, "steady", &steady_id);

    // The stalled upgrades end at the handshake timeout.
    for s in &mut stalled {
        assert!(closed_within(s, Duration::from_secs(20)), "a stalled upgrade was kept open");
    }
    common::finds(&ws, "steady", &steady_id);
}
