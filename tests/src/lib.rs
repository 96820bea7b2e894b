//! Workspace-level tests of the rendezvous crates, and what they share with
//! the fuzz targets.
//!
//! - [`server_model`]: a reference model of the server and a random-operation
//!   driver, used by the proptest in `tests/server_model.rs` and by
//!   `fuzz/fuzz_targets/server_ops.rs`.
//! - [`py`]: the py-libp2p 0.8.1 virtualenv the interop tests use.
//! - [`fuzzing`]: the fuzz targets' bodies, so their corpus replays on stable.

pub mod fuzzing;
pub mod py;
pub mod server_model;
