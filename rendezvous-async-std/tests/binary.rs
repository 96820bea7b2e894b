//! The `rendezvous` binary end to end, on loopback: servers and clients as
//! real processes, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::net::TcpListener;

use common::{Proc, client, peer_id, server};

#[test]
fn clients_find_each_other_and_an_interrupted_client_disappears() {
    let (mut server, address) = server(&[]);
    let mut first = client(&address, &["-n", "my-app"]);
    first.expect("Connected to rendezvous server: ");
    first.expect("Enable refresh: True");
    let first_id = peer_id(&first.expect("Client started with peer ID: "));
    first.expect("Registering in namespace 'my-app'...");
    first.expect("✓ Registered with TTL 7200s");
    first.expect(&format!("Found self: {first_id}"));
    first.expect("No other peers found (only self)");

    let mut second = client(&address, &["-n", "my-app", "--refresh", "False"]);
    second.expect("Enable refresh: False");
    let found = second.expect("Found peer: ");
    assert!(found.contains(&first_id), "{found}");
    second.expect("Total peers found: 2");
    second.expect("✓ Successfully discovered other peers!");
    let (status, lines) = second.finish();
    assert!(status.success(), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("✓ Unregistered successfully")), "{lines:#?}");

    first.interrupt();
    let (status, lines) = first.finish();
    assert!(status.success(), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("Unregistering from namespace 'my-app'...")));
    assert!(lines.iter().any(|l| l.contains("✓ Unregistered successfully")));
    server.expect(&format!("Unregistered {first_id} from 'my-app'"));

    let mut third = client(&address, &["-n", "my-app", "--refresh", "False"]);
    third.expect("No other peers found (only self)");
    let (status, _) = third.finish();
    assert!(status.success());
    server.interrupt();
    let (status, lines) = server.finish();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("Shutting down rendezvous server...")));
}

#[test]
fn a_client_in_refresh_mode_sees_another_arrive_and_leave() {
    let (_server, address) = server(&[]);
    let mut watcher = client(&address, &["-n", "lobby", "--discover-interval", "1"]);
    watcher.expect("🔄 Refresh mode enabled - discovery service running in background");
    watcher.expect("No other peers found (only self)");
    let mut visitor = client(&address, &["-n", "lobby"]);
    let visitor_id = peer_id(&visitor.expect("Client started with peer ID: "));
    let found = watcher.expect("Found peer: ");
    assert!(found.contains(&visitor_id), "{found}");
    visitor.interrupt();
    let (status, lines) = visitor.finish();
    assert!(status.success(), "{lines:#?}");
    // Noticed at the next full rediscovery, every tenth.
    let lost = watcher.expect("Lost peer: ");
    assert!(lost.contains(&visitor_id) && lost.contains("Unregistered"), "{lost}");
    watcher.interrupt();
    assert!(watcher.finish().0.success());
}

#[test]
fn log_lines_look_like_the_demo() {
    let (server, address) = server(&[]);
    let (status, lines) = client(&address, &["--refresh", "False"]).finish();
    assert!(status.success());
    for line in &lines {
        // 2025-09-21 14:05:47,378 [INFO] [rendezvous::client] ...
        let (date, rest) = line.split_at(23);
        assert_eq!(date.len(), 23, "{line}");
        assert_eq!((&date[4..5], &date[10..11], &date[19..20]), ("-", " ", ","), "{line}");
        assert!(rest.starts_with(" [INFO] [rendezvous::client] "), "{line}");
    }
    drop(server);
}

/// Runs the binary to its end and checks it failed with one error line that
/// contains `reason`, and no backtrace.
fn fails_with(args: &[&str], reason: &str) {
    let (status, lines) = Proc::start(args).finish();
    assert!(!status.success(), "{args:?} should fail: {lines:#?}");
    let errors: Vec<_> =
        lines.iter().filter(|l| l.contains("[ERROR]") || l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {lines:#?}");
    assert!(errors[0].contains(reason), "{args:?}: {:?} lacks {reason:?}", errors[0]);
    assert!(!lines.iter().any(|l| l.contains("panicked") || l.contains("backtrace")), "{lines:#?}");
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let client_args = ["--mode", "client", "--listen", "127.0.0.1"];
    fails_with(&client_args, "Please provide rendezvous server address");
    fails_with(
        &[&client_args[..], &["--address", "not-a-multiaddr"]].concat(),
        "Failed to parse server address 'not-a-multiaddr'",
    );
    fails_with(
        &[&client_args[..], &["--address", "/ip4/127.0.0.1/tcp/1"]].concat(),
        "must end with /p2p/<peer id>",
    );
    fails_with(&["--mode", "relay"], "invalid value 'relay'");
    fails_with(&[&client_args[..], &["--refresh", "maybe"]].concat(), "was not a boolean");

    // A closed port on loopback.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nobody = format!(
        "/ip4/127.0.0.1/tcp/{closed}/p2p/12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7"
    );
    fails_with(
        &[&client_args[..], &["--address", &nobody]].concat(),
        "Failed to connect to server",
    );

    // A port in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    fails_with(
        &["--mode", "server", "--in-memory", "--listen", "127.0.0.1", "--port", &port],
        "Address already in use",
    );

    // A key file that cannot be read (a directory).
    let dir = std::env::temp_dir();
    fails_with(
        &[
            "--mode",
            "server",
            "--in-memory",
            "--listen",
            "127.0.0.1",
            "--key-file",
            dir.to_str().unwrap(),
        ],
        "cannot use key file",
    );

    // A server that refuses the registration.
    let (server, address) = server(&[]);
    fails_with(
        &[&client_args[..], &["--address", &address, "--ttl", "5"]].concat(),
        "Registration failed: EInvalidTtl: ttl of 5 s",
    );
    drop(server);
}

#[test]
fn a_key_file_keeps_the_peer_id_across_restarts() {
    let path = std::env::temp_dir().join(format!("rendezvous-binary-key-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let key = path.to_str().unwrap();
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (server, address) = server(&["--key-file", key]);
            drop(server);
            address.rsplit('/').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    std::fs::remove_file(&path).unwrap();
}
