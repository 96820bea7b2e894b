//! Workspace-level tests of the rendezvous crates, and what they share with
//! the fuzz targets.
//!
//! - [`server_model`]: a reference model of the server and a random-operation
//!   driver, used by the proptest in `tests/server_model.rs` and by
//!   `fuzz/fuzz_targets/server_ops.rs`.
//! - [`client_model`]: the client core against the server core over a lossy
//!   virtual network (`tests/client_model.rs`, `fuzz/fuzz_targets/client_ops.rs`).
//! - [`net`]: swarms on loopback for the network tests, every wait bounded.
//! - [`py`]: the py-libp2p 0.8.1 virtualenv the interop tests use.
//! - [`redis`]: a `redis-server` of the tests' own.
//! - [`fuzzing`]: the fuzz targets' bodies, so their corpus replays on stable.

pub mod client_model;
pub mod fuzzing;
#[cfg(feature = "net")]
pub mod net;
pub mod py;
pub mod redis;
pub mod server_model;
