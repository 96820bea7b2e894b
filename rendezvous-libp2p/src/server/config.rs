//! The server behaviour's configuration: the core's limits and policies,
//! and the bounds of each connection's substreams.

use std::time::Duration;

use rendezvous_core::admission::AdmissionLimits;
use rendezvous_core::{ConfigError, DiscoverStart, ServerConfig};

use crate::clock::Clock;

/// Configuration of the server behaviour.
///
/// Memory per connection is bounded by the substream limits: each open
/// substream holds at most one request frame being read
/// ([`Limits::max_request_frame`](rendezvous_core::Limits::max_request_frame),
/// 8 KiB) and a 1 KiB read buffer, and, while the behaviour has its
/// requests, at most 9 KiB more of requests pipelined behind the first (not
/// for busy substreams), so with the defaults the handler holds at most
/// 256 × 18 KiB + 32 × 9 KiB ≈ 4.8 MiB of requests. Answers the client has
/// not taken yet are bounded by
/// [`Substreams::max_unread_bytes_per_connection`] (16 MiB) and, over all
/// connections from its address, by
/// [`Substreams::max_unread_bytes_per_address`] (256 MiB), or one batch's if more: a batch ends at its first DISCOVER, so
/// it holds at most one page
/// ([`Limits::max_response_frame`](rendezvous_core::Limits::max_response_frame),
/// 1 MiB). The muxer buffers what a peer sends ahead on a substream the
/// handler is not reading; yamux allows 256 KiB per substream, so also bound
/// its number of substreams (the host of `rendezvous-async-std` sets it to
/// the two limits here plus a few).
#[derive(Clone, Debug)]
pub struct Config {
    /// The core's limits and policies (the per-peer rate limit among
    /// them). Defaults to [`ServerConfig::default`] with
    /// [`initial_sequence`](ServerConfig::initial_sequence) set to the Unix
    /// time in microseconds, so that cookies from an earlier run of a point
    /// without a store read as "before everything now", and random
    /// discovery starts seeded from the clock and the process, so that runs
    /// differ.
    pub core: ServerConfig,
    /// The bounds of each connection's substreams.
    pub substreams: Substreams,
    /// Close a connection that has carried no rendezvous request for this
    /// long, whatever else (identify, ping) still uses it; `None` never.
    /// Defaults to 60 s. Clients reconnect when they next need the point.
    pub idle_timeout: Option<Duration>,
}

/// The bounds of one connection's rendezvous substreams, in number, time
/// and answers not yet read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Substreams {
    /// Most rendezvous substreams open at once on one connection. Defaults
    /// to 256 (rust-libp2p clients keep up to 100 in flight, js-libp2p 64).
    pub max_per_connection: usize,
    /// Substreams beyond that, each read once and answered `E_UNAVAILABLE`
    /// with a `statusText` naming the limit, then closed; beyond these, a
    /// substream is reset on arrival. Defaults to 32.
    pub max_busy_per_connection: usize,
    /// Longest a substream may take to deliver a complete request, from its
    /// opening or from the previous answer; then it is reset. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Longest wait to write one response. Defaults to 10 s.
    pub write_timeout: Duration,
    /// Most bytes of answers one connection may hold for a client that has
    /// not taken them yet, a DISCOVER not yet answered counting as a page
    /// as long as [`Limits::max_response_frame`](rendezvous_core::Limits::max_response_frame);
    /// past it, the connection's next requests wait, read but not handled,
    /// until the client takes some (a batch alone goes whatever it may
    /// take). A client that asks for pages and does not read them so stops
    /// being served instead of growing the point's memory. Defaults to
    /// 16 MiB: sixteen DISCOVERs at once before their pages are sized, and
    /// any number of small answers.
    pub max_unread_bytes_per_connection: usize,
    /// The same over all connections from one address (an IPv6 one by its
    /// /64), so that a client cannot multiply the bound by its connections.
    /// Defaults to 256 MiB: as many DISCOVERs at once before their pages are
    /// sized as one connection may have substreams, from all the clients
    /// behind one address.
    pub max_unread_bytes_per_address: usize,
}

impl Default for Substreams {
    fn default() -> Self {
        Substreams {
            max_per_connection: 256,
            max_busy_per_connection: 32,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_unread_bytes_per_connection: 16 << 20,
            max_unread_bytes_per_address: 256 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let micros = Clock::new().unix_micros();
        let core = ServerConfig {
            initial_sequence: micros,
            discover_start: DiscoverStart::Random { seed: crate::clock::seed() },
            ..ServerConfig::default()
        };
        Config {
            core,
            substreams: Substreams::default(),
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl Config {
    /// Checks the core's limits and policies.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core.validate()
    }

    /// The bounds each connection's handler admits substreams and requests
    /// under.
    pub(crate) fn admission(&self) -> AdmissionLimits {
        let s = &self.substreams;
        AdmissionLimits {
            max_streams: s.max_per_connection.max(1),
            max_busy_streams: s.max_busy_per_connection,
            max_unread: s.max_unread_bytes_per_connection,
            max_unread_per_origin: s.max_unread_bytes_per_address,
            max_page: self.core.limits.max_response_frame,
        }
    }
}
