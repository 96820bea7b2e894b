//! What the benchmark binaries share: finding the binaries they measure,
//! reading a process's memory and CPU time from `/proc`, and a server core whose limits
//! leave room for the load.

use std::fmt::Display;
use std::path::PathBuf;

use rendezvous_core::{Durability, Limits, Server, ServerConfig};

/// The binary `name` beside the running one (`target/release/<name>`).
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    built(release_dir()?.join(name), "cargo build --release --bins")
}

/// rust-libp2p's server `name`, built from the published crates by
/// `bench/theirs/build` into `<target dir>/theirs/release/`: apart from the
/// main workspace, whose patched libp2p-noise and build flags would
/// otherwise speed rust-libp2p up too.
pub fn theirs(name: &str) -> Result<PathBuf, String> {
    let release = release_dir()?;
    let target = release.parent().ok_or("no target directory")?;
    built(target.join("theirs").join("release").join(name), "bench/theirs/build")
}

/// The directory of the running binary (`target/release`).
fn release_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("where am I? {e}"))?;
    Ok(exe.parent().ok_or("no parent directory")?.to_owned())
}

/// `path`, if it exists; else says to run `build` first.
fn built(path: PathBuf, build: &str) -> Result<PathBuf, String> {
    if !path.exists() {
        return Err(format!("{} is missing: run `{build}` first", path.display()));
    }
    Ok(path)
}

/// The `rendezvous` binary to measure: `RENDEZVOUS_BIN` if set (another
/// build, to compare two), else the one beside the running binary.
pub fn our_binary() -> Result<PathBuf, String> {
    match std::env::var_os("RENDEZVOUS_BIN") {
        Some(path) => Ok(path.into()),
        None => sibling("rendezvous"),
    }
}

/// The KiB figure of `field` (`"VmRSS:"`, `"VmHWM:"`) in
/// `/proc/<pid>/status`; `pid` may be `"self"`.
pub fn status_kib(pid: impl Display, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// utime + stime of process `pid` (`"self"` for this one) from
/// `/proc/<pid>/stat`, in seconds (10 ms ticks).
pub fn cpu_seconds(pid: impl Display) -> Option<f64> {
    cpu_split(pid).map(|(user, kernel)| user + kernel)
}

/// utime and stime of process `pid`, apart: its CPU seconds in user space
/// and in the kernel.
pub fn cpu_split(pid: impl Display) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: utime and
    // stime are fields 14 and 15 of the line, 11 and 12 here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let seconds = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / 100.0);
    Some((seconds(11)?, seconds(12)?))
}

/// A server core that holds `n` registrations in one namespace, from one
/// peer, without a limit in the way; `durability` as in [`ServerConfig`].
pub fn roomy_server(n: usize, durability: Durability) -> Server {
    let limits = Limits {
        max_registrations: n + 1,
        max_registrations_per_namespace: n + 1,
        max_registrations_per_peer: n + 1,
        ..Limits::default()
    };
    Server::new(ServerConfig { limits, durability, ..ServerConfig::default() })
        .expect("limits of n + 1 everywhere are consistent")
}
