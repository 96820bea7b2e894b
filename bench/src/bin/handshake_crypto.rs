//! What the public-key crypto of accepting one churning peer costs this
//! machine, operation by operation, in the two implementations a point can
//! run: curve25519-dalek (published libp2p-noise 0.47, and libp2p-identity's
//! ed25519) and aws-lc-rs (`patch/libp2p-noise`'s X25519). Then the sum a
//! responder cannot avoid per peer: an XX handshake's three Diffie–Hellman
//! operations and its ephemeral key, and two ed25519 verifications (the
//! noise identity signature, and the peer's signed REGISTER record).
//!
//! ```text
//! cargo build --release --bins
//! target/release/handshake_crypto [--n 5000]
//! ```

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::signature::{self, KeyPair as _};
use libp2p_identity::Keypair;

/// Batches each operation is timed in; the fastest counts, since on a shared
/// machine a batch is only ever slowed down by others.
const BATCHES: usize = 10;

/// Microseconds per call of `op`: the fastest of [`BATCHES`] batches of
/// `n / BATCHES` calls.
fn per_call(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let batch = (n / BATCHES).max(1);
    (0..BATCHES)
        .map(|b| {
            let started = Instant::now();
            for i in 0..batch {
                op(b * batch + i);
            }
            started.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// 32 bytes from `i`, different for every call.
fn secret(i: usize) -> [u8; 32] {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    bytes
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5000);

    let remote = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret(999)));
    let remote = remote.to_bytes();

    let dalek_dh = per_call(n, |i| {
        black_box(x25519_dalek::x25519(secret(i), remote));
    });
    let dalek_ladder_key = per_call(n, |i| {
        black_box(x25519_dalek::x25519(secret(i), x25519_dalek::X25519_BASEPOINT_BYTES));
    });
    let dalek_fixed_key = per_call(n, |i| {
        let key = x25519_dalek::StaticSecret::from(secret(i));
        black_box(x25519_dalek::PublicKey::from(&key));
    });
    let aws_dh = per_call(n, |i| {
        let key = PrivateKey::from_private_key(&X25519, &secret(i)).expect("a key");
        let shared =
            agreement::agree(&key, UnparsedPublicKey::new(&X25519, remote), (), |s| Ok(s[0]));
        black_box(shared.expect("a shared secret"));
    });
    // As patch/libp2p-noise runs it: each secret made into a key once (which
    // derives its public key), then used for its Diffie–Hellman operations.
    let prepared = PrivateKey::from_private_key(&X25519, &secret(1)).expect("a key");
    let aws_dh_prepared = per_call(n, |_| {
        let shared =
            agreement::agree(&prepared, UnparsedPublicKey::new(&X25519, remote), (), |s| Ok(s[0]));
        black_box(shared.expect("a shared secret"));
    });
    let aws_key = per_call(n, |i| {
        let key = PrivateKey::from_private_key(&X25519, &secret(i)).expect("a key");
        black_box(key.compute_public_key().expect("a public key"));
    });

    let message = b"noise-libp2p-static-key:0123456789abcdef0123456789abcdef";
    let identity = Keypair::ed25519_from_bytes(secret(1)).expect("an ed25519 key");
    let signature = identity.sign(message).expect("a signature");
    // As the point meets a key: encoded, in the handshake's payload or in
    // a signed record, so decoding it is part of each verification.
    let encoded = identity.public().encode_protobuf();
    let dalek_verify = per_call(n, |_| {
        let public = libp2p_identity::PublicKey::try_decode_protobuf(&encoded).expect("a key");
        black_box(public.verify(message, &signature));
    });
    let aws_identity = signature::Ed25519KeyPair::from_seed_unchecked(&secret(1)).expect("a key");
    let aws_public = aws_identity.public_key().as_ref().to_vec();
    let aws_verify = per_call(n, |_| {
        let key = signature::UnparsedPublicKey::new(&signature::ED25519, &aws_public);
        black_box(key.verify(message, &signature).is_ok());
    });

    println!("µs per call, the fastest of {BATCHES} batches of {} calls:", n / BATCHES);
    println!("curve25519-dalek's ed25519 runs on its {} code here.", edwards_backend());
    println!("| operation | curve25519-dalek | aws-lc-rs |");
    println!("|---|---:|---:|");
    println!(
        "| X25519 Diffie–Hellman | {dalek_dh:.1} | {aws_dh:.1} ({aws_dh_prepared:.1} with the key made once) |"
    );
    println!(
        "| X25519 public key | {dalek_fixed_key:.1} (fixed base), {dalek_ladder_key:.1} (ladder) | {aws_key:.1} |"
    );
    println!("| ed25519 verification (key decoded) | {dalek_verify:.1} | {aws_verify:.1} |");
    let published = 3.0 * dalek_dh + 2.0 * dalek_ladder_key + 2.0 * dalek_verify;
    let fixed_base = 3.0 * dalek_dh + 2.0 * dalek_fixed_key + 2.0 * dalek_verify;
    let patched = 3.0 * aws_dh_prepared + aws_key + 2.0 * dalek_verify;
    println!("Per churning peer (3 DH, the public keys derived, 2 ed25519 verifications):");
    println!("- libp2p-noise 0.47 (2 keys on the ladder): {published:.0} µs");
    println!("- fixed-base keys (2 keys): {fixed_base:.0} µs");
    println!(
        "- patch/libp2p-noise now (aws-lc-rs, each key made once, 1 derived; ed25519 on dalek): {patched:.0} µs"
    );
}

/// Which of curve25519-dalek's backends verifies ed25519 in this binary on
/// this CPU: it picks at run time among those the build compiled.
fn edwards_backend() -> &'static str {
    #[cfg(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512"))]
    if std::arch::is_x86_feature_detected!("avx512ifma")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        return "AVX-512 IFMA";
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return "AVX2";
    }
    "portable"
}
