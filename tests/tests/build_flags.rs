//! The flags `.cargo/config.toml` gives every crate reach the build.
//!
//! A `RUSTFLAGS` variable in the environment replaces them without a word, and
//! ed25519 verification then falls back to curve25519-dalek's AVX2 code, about
//! twice as slow on a CPU with AVX-512 IFMA (BENCHMARKS.md, "Fourth round").

#[test]
#[cfg(target_arch = "x86_64")]
#[expect(
    clippy::assertions_on_constants,
    reason = "a build's flags are constant; a test failure names them, where a const assert would stop the build"
)]
fn curve25519_dalek_is_built_with_its_avx512_backend() {
    assert!(
        cfg!(curve25519_dalek_backend = "avx512"),
        "built without .cargo/config.toml's rustflags (is RUSTFLAGS set?): \
         ed25519 verification will not use AVX-512 IFMA"
    );
}
