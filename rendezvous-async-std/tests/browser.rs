//! A real browser reaches the point: headless Chromium runs js-libp2p (the
//! page in `tests/browser/`) over `/ws`, registers, and discovers a peer that
//! registered over TCP in the standard record flavour, and pings the point.
//!
//! Needs `npm` (the page is bundled from the npm registry on first run, from
//! its lockfile) and Chromium (`chromium`, or `RENDEZVOUS_CHROMIUM`). A
//! missing one fails the test with what to install.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::Duration;

use common::Proc;

/// The page's own budget is 15 s; Chromium's start-up comes on top.
const REPORT_LIMIT: Duration = Duration::from_secs(60);

fn page_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {:?} ({e}); install Node.js and npm", command.get_program())
    });
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `tests/browser/dist/page.html`, bundled from the lockfile if absent or
/// older than its sources; once per test process, however many tests ask at
/// once (two `npm ci` in one directory trip over each other).
fn page() -> PathBuf {
    static PAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PAGE.get_or_init(bundle).clone()
}

fn bundle() -> PathBuf {
    let dir = page_dir();
    let page = dir.join("dist/page.html");
    let fresh = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let stale = match fresh(&page) {
        None => true,
        Some(built) => ["page.js", "build.mjs", "package-lock.json"]
            .iter()
            .any(|f| fresh(&dir.join(f)).is_none_or(|changed| changed > built)),
    };
    if stale {
        if !dir.join("node_modules").is_dir() {
            run(
                Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir),
                "npm ci",
            );
        }
        run(Command::new("node").arg("build.mjs").current_dir(&dir), "bundling the page");
    }
    page
}

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("RENDEZVOUS_CHROMIUM") {
        return path.into();
    }
    // Debian's `chromium` is a launcher script that warns about flags it
    // does not know; the binary beside it does not.
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.exists() {
        return debian.into();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
            .find(|p| p.exists())
    });
    found.expect("no Chromium: install Debian's `chromium` package, or set RENDEZVOUS_CHROMIUM")
}

/// Opens the page on `addr` in headless Chromium; returns the JSON report
/// it POSTs back.
fn browse(addr: &str, namespace: &str, extra_flags: &[&str]) -> serde_json::Value {
    let page = page();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let report = format!("http://{}/report", listener.local_addr().unwrap());
    let url = format!("file://{}#addr={addr}&ns={namespace}&report={report}", page.display());
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Proc::spawn(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_flags)
            .arg(&url),
    );
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        // One POST; anything else the browser sends first is answered 404.
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if let Some(body) = read_post(stream) {
                let _ = tx.send(body);
                return;
            }
        }
    });
    let body = rx.recv_timeout(REPORT_LIMIT);
    browser.kill();
    let Ok(body) = body else {
        let (_, lines) = browser.finish();
        panic!("no report from the page in {REPORT_LIMIT:?}; Chromium said:\n{}", lines.join("\n"))
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("report {body:?}: {e}"))
}

/// The body of a POST to `/report`, answered 200; `None` for anything else.
fn read_post(mut stream: std::net::TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request = String::new();
    reader.read_line(&mut request).ok()?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let post = request.starts_with("POST /report ");
    let mut body = vec![0; if post { length.min(1 << 20) } else { 0 }];
    reader.read_exact(&mut body).ok()?;
    let status = if post { "200 OK" } else { "404 Not Found" };
    let answer = format!(
        "HTTP/1.1 {status}\r\naccess-control-allow-origin: *\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).ok()?;
    post.then(|| String::from_utf8_lossy(&body).into_owned())
}

/// A TCP peer registered in `namespace` in the standard RFC 0003 flavour,
/// the one js-libp2p verifies; returns it and its peer id.
fn tcp_peer(server: &str, namespace: &str) -> (Proc, String) {
    let mut peer =
        common::client(server, &["--namespace", namespace, "--record-flavour", "standard"]);
    let id = common::peer_id(&peer.expect("Client started with peer ID: "));
    peer.expect("✓ Registered with TTL");
    (peer, id)
}

fn check(report: &serde_json::Value, tcp_peer: &str) -> String {
    assert_eq!(report["error"], serde_json::Value::Null, "the page failed: {report}");
    assert_eq!(report["registered"], true, "{report}");
    assert!(report["ttl"].as_u64().is_some_and(|ttl| ttl > 0), "{report}");
    let found = report["found"].as_array().unwrap();
    assert!(found.iter().any(|id| id == tcp_peer), "the page did not see the TCP peer: {report}");
    // Its own registration came back too, in a flavour it could verify.
    assert_eq!(report["self_in_discover"], true, "{report}");
    // The point echoed pings sent as js-libp2p's connection monitor sends
    // them, which closes a connection whose ping fails.
    assert_eq!(report["pings"], 3, "{report}");
    report["self"].as_str().unwrap().to_owned()
}

#[test]
fn a_browser_registers_and_discovers_over_ws() {
    let (server, tcp) = common::server(&["--ws-port", "0"]);
    let ws = common::listening(&server, "ws");
    let (_peer, peer_id) = tcp_peer(&tcp, "browsers");
    let report = browse(&ws, "browsers", &[]);
    let browser = check(&report, &peer_id);
    common::finds(&tcp, "browsers", &browser);
}

#[test]
fn a_browser_registers_and_discovers_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let (server, tcp) = common::server(&[
        "--ws-port",
        "0",
        "--ws-cert",
        cert_file.to_str().unwrap(),
        "--ws-key",
        key_file.to_str().unwrap(),
    ]);
    let wss = common::listening(&server, "wss");
    let (_peer, peer_id) = tcp_peer(&tcp, "secure-browsers");
    // The certificate is self-signed: this browser is told to take it.
    let report = browse(&wss, "secure-browsers", &["--ignore-certificate-errors"]);
    let browser = check(&report, &peer_id);
    common::finds(&tcp, "secure-browsers", &browser);
}
