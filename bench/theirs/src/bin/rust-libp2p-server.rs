//! rust-libp2p's own rendezvous server behaviour (`libp2p-rendezvous` 0.18)
//! alone, without identify or ping, on the same transport stack as ours
//! (TCP + noise + yamux), for side-by-side load tests. Prints
//! `ADDR <multiaddr>` once listening on loopback.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    rendezvous_bench_theirs::serve(|_| rendezvous_bench_theirs::rendezvous()).await
}
