//! What an operator relies on: settings from the environment, health
//! endpoints that follow the store, a log whose volume peers do not decide,
//! and the deployment files under `deploy/`, checked against the point
//! itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, get, http_of, peer_of, runtime, start};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::raw_connection_as;
use rendezvous_tests::redis::RedisServer;

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

fn in_repository(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn a_point_starts_from_environment_variables_alone_and_a_flag_wins() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rendezvous"));
    for (name, value) in [
        ("RENDEZVOUS_MODE", "server"),
        ("RENDEZVOUS_LISTEN", "127.0.0.1"),
        ("RENDEZVOUS_PORT", "0"),
        ("RENDEZVOUS_IN_MEMORY", "true"),
        ("RENDEZVOUS_STATS_INTERVAL", "0"),
        ("RENDEZVOUS_NAMESPACE", "from-env"),
        ("RENDEZVOUS_METRICS", "127.0.0.1:0"),
        ("RENDEZVOUS_MAX_TOTAL", "1"),
        ("RENDEZVOUS_MAX_PER_IP", "10"),
    ] {
        command.env(name, value);
    }
    // The flag says 2: it wins over the environment's 1.
    command.args(["--max-total", "2"]);
    let mut server = Proc::spawn(&mut command);
    let http = http_of(&mut server);
    let (server, address) = start(server);
    let hint = server.seen().iter().find(|l| l.contains(" --mode client --address ")).unwrap();
    assert!(hint.ends_with("--namespace from-env"), "{hint}");
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        for (seed, expected) in [(1, 0), (2, 0), (3, 400)] {
            let me = TestPeer::new(seed);
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            let answer = raw.request(id, &testing::register("x", me.record(RUST), None)).await;
            let status = answer.unwrap().register_response.unwrap().status.unwrap_or(0);
            assert_eq!(status, expected, "registration {seed} of a point holding 2 at most");
        }
    });
    assert_eq!(get(http, "/healthz"), (200, "ok\n".into()));
    drop(server);
}

#[test]
fn help_names_the_environment_variable_of_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_rendezvous")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split("--").nth(1))
        .filter_map(|rest| rest.split([' ', '=', '<', '[', ']']).next())
        .filter(|flag| !flag.is_empty() && *flag != "help" && *flag != "version")
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    for flag in flags {
        let name = format!("RENDEZVOUS_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&format!("[env: {name}=")), "--{flag} has no {name} in:\n{help}");
    }
}

/// A point on `redis` with its metrics listener.
fn metered_point(redis: &RedisServer) -> Proc {
    let url = redis.url();
    let args = ["--mode", "server", "--listen", "127.0.0.1", "--stats-interval", "0"];
    let mut args: Vec<&str> = args.into();
    args.extend(["--metrics", "127.0.0.1:0", "--redis", &url]);
    Proc::start(&args)
}

#[test]
fn readiness_follows_the_shared_store_and_health_the_loop() {
    let mut redis = RedisServer::start("ready");
    let mut server = metered_point(&redis);
    let http = http_of(&mut server);
    let (_server, address) = start(server);
    let until = |want: u16| {
        let started = Instant::now();
        loop {
            let (status, body) = get(http, "/readyz");
            if status == want {
                return body;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "readyz stayed {status}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(until(200), "ready\n");
    // Redis goes away: a write finds out, and readiness says why.
    redis.kill();
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let me = TestPeer::new(5);
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        let _ = raw.request(id, &testing::register("x", me.record(RUST), None)).await;
    });
    let why = until(503);
    assert!(why.contains("unreachable"), "{why}");
    assert_eq!(why.lines().count(), 1, "one line: {why}");
    assert_eq!(get(http, "/healthz").0, 200, "the loop still runs");
    redis.restart();
    until(200);
}

#[test]
fn a_flood_of_refusals_and_namespaces_writes_a_bounded_log() {
    let mut args = vec!["--mode", "server", "--listen", "127.0.0.1", "--in-memory"];
    args.extend(["--stats-interval", "1", "--max-per-peer", "100", "--metrics", "127.0.0.1:0"]);
    let mut server = Proc::start(&args);
    let http = http_of(&mut server);
    let (mut server, address) = start(server);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        // 5,000 namespaces: 50 peers in 100 each, which is their limit...
        for seed in 0..50 {
            let me = TestPeer::new(1000 + seed);
            let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
            for i in 0..100 {
                let ns = format!("ns-{seed:02}-{i:02}");
                let request = testing::register(&ns, me.record(RUST), None);
                let answer = raw.request(id, &request).await.unwrap();
                assert_eq!(answer.register_response.unwrap().status, Some(0));
            }
        }
        // ...and 5,000 REGISTERs refused to one of them, over its limit.
        let me = TestPeer::new(1000);
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        for i in 0..5000 {
            let request = testing::register(&format!("more-{i}"), me.record(RUST), None);
            let answer = raw.request(id, &request).await.unwrap();
            assert_eq!(answer.register_response.unwrap().status, Some(200));
        }
    });
    // The refusals are summed up, once a statistics interval, not logged
    // one by one.
    let mut refused = 0;
    while refused < 5000 {
        let line = server.expect("Refused ");
        let n: u64 =
            line.split("Refused ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(line.contains("REGISTER E_NOT_AUTHORIZED"), "{line}");
        refused += n;
    }
    let stats = server.expect("Namespace stats: 5000 namespaces");
    assert!(stats.len() < 600, "a statistics line of {} bytes", stats.len());
    let seen = server.seen();
    assert!(seen.len() < 200, "{} lines:\n{}", seen.len(), seen.join("\n"));
    assert!(!seen.iter().any(|l| l.contains(&me_id_text())), "no line per request");
    // The full list is one request away, a page at a time.
    let (status, page) = get(http, "/namespaces?limit=2");
    assert_eq!(status, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["namespaces"].as_array().unwrap().len(), 2);
    assert_eq!(page["total_namespaces"], 5000);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = get(http, &format!("/namespaces?limit=1000&after={next}"));
    let rest: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["namespaces"].as_array().unwrap().len(), 1000);
    assert!(rest["namespaces"][0]["namespace"].as_str().unwrap() > next.as_str());
}

/// The refused peer's id, which a line per refusal would name.
fn me_id_text() -> String {
    TestPeer::new(1000).id.to_string()
}

/// Runs `promtool` with `args` in the repository; it must succeed.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(in_repository("deploy")).output();
    let out = out.unwrap_or_else(|e| {
        panic!("promtool is needed to check deploy/ ({e}): apt-get install prometheus")
    });
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {said}");
    said
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "prometheus/rendezvous.rules.yml"]);
    promtool(&["test", "rules", "prometheus/rendezvous.rules.test.yml"]);
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let redis = RedisServer::start("dashboard");
    let mut server = metered_point(&redis);
    let http = http_of(&mut server);
    let (_server, address) = start(server);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let me = TestPeer::new(9);
        let mut raw = raw_connection_as(me.keypair.clone(), id, &addr).await;
        raw.request(id, &testing::register("x", me.record(RUST), None)).await.unwrap();
        raw.request(id, &testing::discover(Some("x"), None, None)).await.unwrap();
    });
    let (status, text) = get(http, "/metrics");
    assert_eq!(status, 200);
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let used = std::fs::read_to_string(in_repository("deploy/grafana/metrics.txt")).unwrap();
    for name in used.lines().filter(|l| !l.is_empty()) {
        assert!(exported.contains(name), "{name} is used in deploy/ but not exported:\n{text}");
    }
    // The dashboard is JSON, and names nothing the list leaves out.
    let dashboard =
        std::fs::read_to_string(in_repository("deploy/grafana/rendezvous.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("rendezvous_") {
            assert!(
                used.lines().any(|l| l == word),
                "the dashboard uses {word}, not in metrics.txt"
            );
        }
    }
}

#[test]
fn the_systemd_unit_verifies_where_systemd_is() {
    let unit = in_repository("deploy/systemd/rendezvous.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=rendezvous",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.contains(setting), "{setting} missing from the unit");
    }
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!(
            "systemd-analyze is not installed: the unit's settings were checked, not its syntax"
        );
        return;
    }
    // `verify` wants the binary the unit names; point it at this one.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("rendezvous.service");
    let exe = env!("CARGO_BIN_EXE_rendezvous");
    std::fs::write(&copy, text.replace("/usr/local/bin/rendezvous", exe)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
}

/// The kernel's timer on the point's end of the TCP connection `client`
/// made: its kind (`/proc/net/tcp`'s `tr`: 2 is keepalive, 0 none) and
/// when it fires, in seconds. Retried while the point has not accepted it.
fn server_side_timer(server_port: u16, client: &std::net::TcpStream) -> (u8, f64) {
    let client_port = client.local_addr().unwrap().port();
    let wanted = (format!("{server_port:04X}"), format!("{client_port:04X}"));
    for _ in 0..100 {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| field.rsplit(':').next().unwrap_or("").to_owned();
            // Established (01), from the point's port to the client's.
            if fields.len() > 5
                && fields[3] == "01"
                && (port(fields[1]), port(fields[2])) == wanted
                && fields[5] != "00:00000000"
            {
                let (kind, when) = fields[5].split_once(':').unwrap();
                // In clock ticks, 100 a second on Linux.
                let ticks = u64::from_str_radix(when, 16).unwrap();
                return (kind.parse().unwrap(), ticks as f64 / 100.0);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (0, 0.0)
}

#[test]
fn tcp_keepalive_follows_its_flag() {
    for (flag, expected) in [(None, Some(30.0)), (Some("45"), Some(45.0)), (Some("0"), None)] {
        let mut extra = Vec::new();
        if let Some(secs) = flag {
            extra.extend(["--tcp-keepalive", secs]);
        }
        let (server, address) = common::server(&extra);
        let port: u16 =
            address.split("/tcp/").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (kind, when) = server_side_timer(port, &client);
        match expected {
            Some(idle) => {
                assert_eq!(
                    kind, 2,
                    "--tcp-keepalive {flag:?}: no keepalive timer on the point's end"
                );
                assert!(
                    when <= idle && when > idle - 5.0,
                    "--tcp-keepalive {flag:?}: fires in {when} s, not {idle}"
                );
            }
            None => assert_eq!((kind, when), (0, 0.0), "--tcp-keepalive 0 left a timer"),
        }
        drop(server);
    }
}
