//! Benchmarks that need more than the core: memory at scale and end-to-end
//! load against real servers. See `BENCHMARKS.md` for how to run them and
//! what they measured.
