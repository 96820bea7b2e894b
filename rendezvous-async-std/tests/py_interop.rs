//! The `rendezvous` binary against py-libp2p 0.8.1 peers (`tests/py/interop.py`
//! in the virtualenv the tests create), both ways, on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Proc, client, peer_id, server};
use rendezvous_tests::py;

fn python(args: &[&str]) -> Proc {
    Proc::spawn(Command::new(py::python()).arg(py::script("interop.py")).args(args))
}

/// A file whose creation tells a py-libp2p client to unregister.
struct Release(PathBuf);

impl Release {
    fn new(name: &str) -> Release {
        let path = std::env::temp_dir().join(format!("rendezvous-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Release(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn now(&self) {
        std::fs::write(&self.0, b"").unwrap();
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_py_libp2p_client_and_ours_find_each_other_at_our_server() {
    let (mut server, address) = server(&[]);
    let mut ours = client(&address, &["-n", "interop"]);
    let our_id = peer_id(&ours.expect("Client started with peer ID: "));
    ours.expect("✓ Registered with TTL 7200s");

    let release = Release::new("py-at-ours");
    let mut theirs = python(&["client", &address, "interop", release.path()]);
    let registered = theirs.expect("REGISTERED ");
    let py_id = peer_id(&registered);
    assert!(registered.starts_with("REGISTERED 7200 "), "{registered}");
    server.expect(&format!("Registered {py_id} in 'interop' for 7200s (Legacy)"));
    let mut found = Vec::new();
    loop {
        let line = theirs.expect("FOUND");
        if line.starts_with("FOUND-END") {
            assert_eq!(line, "FOUND-END 2");
            break;
        }
        found.push(line.split(' ').nth(1).unwrap().to_owned());
    }
    found.sort();
    let mut expected = vec![py_id.clone(), our_id.clone()];
    expected.sort();
    assert_eq!(found, expected, "py-libp2p read our signed registration as a PeerInfo");

    let mut second = client(&address, &["-n", "interop", "--refresh", "False"]);
    let line = second.expect(&format!("Found peer: {py_id}"));
    assert!(line.contains("/ip4/127.0.0.1/tcp/"), "{line}");
    second.expect("Total peers found: 3");
    assert!(second.finish().0.success());

    release.now();
    theirs.expect("UNREGISTERED");
    server.expect(&format!("Unregistered {py_id} from 'interop'"));
    let (status, lines) = client(&address, &["-n", "interop", "--refresh", "False"]).finish();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("Total peers found: 2")), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains(&py_id)),
        "the unregistered py peer is gone: {lines:#?}"
    );
    ours.interrupt();
    assert!(ours.finish().0.success());
}

#[test]
fn our_client_registers_and_discovers_at_py_libp2ps_server() {
    let mut py_server = python(&["serve"]);
    let address = py_server.expect("ADDR ").split(' ').nth(1).unwrap().to_owned();
    py_server.expect("STATS {}");

    let release = Release::new("py-at-py");
    let mut theirs = python(&["client", &address, "interop", release.path()]);
    let py_id = peer_id(&theirs.expect("REGISTERED 7200 "));
    py_server.expect(r#"STATS {"interop": 1}"#);

    // py-libp2p's server offers no subscription: the watch polls, every second.
    let mut ours = client(&address, &["-n", "interop", "--discover-interval", "1"]);
    ours.expect("refused our rust-libp2p envelope (ENotAuthorized: Peer can only register itself); trying the standard envelope");
    ours.expect("refused our standard envelope (ENotAuthorized: Peer can only register itself); trying the legacy PeerInfo");
    ours.expect("took our legacy PeerInfo");
    ours.expect("✓ Registered with TTL 7200s");
    py_server.expect(r#"STATS {"interop": 2}"#);
    ours.expect(&format!("Found peer: {py_id}"));
    ours.expect("Found self: ");
    ours.expect("Total peers found: 2");
    let later = Release::new("py-at-py-later");
    let mut another = python(&["client", &address, "interop", later.path()]);
    let later_id = peer_id(&another.expect("REGISTERED 7200 "));
    ours.expect(&format!("Found peer: {later_id}"));
    later.now();
    another.expect("UNREGISTERED");
    ours.expect(&format!("Lost peer: {later_id}"));
    ours.interrupt();
    let (status, lines) = ours.finish();
    assert!(status.success(), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("✓ Unregistered successfully")));
    py_server.expect(r#"STATS {"interop": 1}"#);

    release.now();
    theirs.expect("UNREGISTERED");
    py_server.expect("STATS {}");
}
