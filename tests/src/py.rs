//! The py-libp2p 0.8.1 environment the interoperability tests run against.
//!
//! A virtualenv under `$HOME/.cache/rendezvous/py-venv` (or
//! `$RENDEZVOUS_PY_VENV`) with `libp2p==0.8.1` from the Python package index,
//! created on first use and reused afterwards, so that `cargo test` works on a
//! fresh machine that can reach the index.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The py-libp2p release the tests pin.
pub const PY_LIBP2P: &str = "libp2p==0.8.1";

/// The venv's python, creating the venv if needed. Panics with the reason if
/// it cannot be created (no python3, no access to the package index).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::env::var_os("RENDEZVOUS_PY_VENV").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/rendezvous/py-venv")
        });
        let python = venv.join("bin/python");
        let ready = venv.join(".rendezvous-ready");
        if !ready.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
            run(Command::new(&python).args(["-m", "pip", "install", "--quiet", PY_LIBP2P]));
            std::fs::write(&ready, PY_LIBP2P).expect("venv directory is writable");
        }
        python
    })
}

/// A script from `tests/py/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed ({status}); the py-libp2p interop tests need it");
}
