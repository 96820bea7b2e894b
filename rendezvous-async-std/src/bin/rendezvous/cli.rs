//! Command-line flags: the py-libp2p rendezvous demo's, with the same
//! meanings and defaults, plus server limits, a key file and statistics.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use rendezvous_libp2p::core::Limits;

/// A libp2p rendezvous point and client.
///
/// Start a server, then clients in other terminals with the address it
/// prints:
///
///   rendezvous --mode server --port 8080
///   rendezvous --mode client --address /ip4/127.0.0.1/tcp/8080/p2p/12D3Koo... --namespace my-app
#[derive(Debug, Parser)]
#[command(name = "rendezvous", version, verbatim_doc_comment)]
pub(crate) struct Args {
    /// Run as the rendezvous point (server) or as a peer using one (client).
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,

    /// The server's multiaddr, ending in /p2p/<peer id> (required for client mode).
    #[arg(long, num_args = 0..=1, default_value = "", hide_default_value = true)]
    pub(crate) address: String,

    /// Port to listen on (default: random).
    #[arg(short, long, default_value_t = 0)]
    pub(crate) port: u16,

    /// Namespace to register and discover in.
    #[arg(short, long, default_value = "rendezvous")]
    pub(crate) namespace: String,

    /// Log debug details too.
    #[arg(short, long)]
    pub(crate) verbose: bool,

    /// Keep the registration alive by re-registering at 80% of its TTL, until
    /// Ctrl+C. With `--refresh False` the client registers, discovers once,
    /// unregisters and exits.
    #[arg(short, long, num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub(crate) refresh: bool,

    /// TTL to ask for, in seconds (client).
    #[arg(long, default_value_t = 7200, value_name = "SECONDS")]
    pub(crate) ttl: u64,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub(crate) listen: IpAddr,

    /// Shortest TTL the server accepts, in seconds.
    #[arg(long, default_value_t = Limits::default().min_ttl, value_name = "SECONDS")]
    pub(crate) min_ttl: u64,

    /// Longest TTL the server accepts, in seconds.
    #[arg(long, default_value_t = Limits::default().max_ttl, value_name = "SECONDS")]
    pub(crate) max_ttl: u64,

    /// Most registrations in one namespace (server).
    #[arg(long, default_value_t = Limits::default().max_registrations_per_namespace, value_name = "N")]
    pub(crate) max_per_namespace: usize,

    /// Most registrations one peer may hold (server).
    #[arg(long, default_value_t = Limits::default().max_registrations_per_peer, value_name = "N")]
    pub(crate) max_per_peer: usize,

    /// Most registrations in all (server).
    #[arg(long, default_value_t = Limits::default().max_registrations, value_name = "N")]
    pub(crate) max_total: usize,

    /// Keep the peer id stable: load the key from this file, or create it
    /// (readable by the owner only) if absent.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,

    /// Log namespace statistics every this many seconds (server; 0: never).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub(crate) stats_interval: u64,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The rendezvous point.
    Server,
    /// A peer registering and discovering at a rendezvous point.
    Client,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use True or False)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("rendezvous").chain(args.iter().copied()))
    }

    #[test]
    fn the_demo_flags_parse_with_its_defaults() {
        let args = parse(&["--mode", "server"]).unwrap();
        assert_eq!(
            (args.mode, args.port, args.namespace.as_str(), args.refresh),
            (Mode::Server, 0, "rendezvous", true)
        );
        assert_eq!(args.ttl, 7200);
        let args = parse(&[
            "--mode",
            "client",
            "--address",
            "/ip4/1.2.3.4/tcp/1",
            "-n",
            "my-app",
            "-p",
            "9",
        ])
        .unwrap();
        assert_eq!(
            (args.address.as_str(), args.namespace.as_str(), args.port),
            ("/ip4/1.2.3.4/tcp/1", "my-app", 9)
        );
    }

    #[test]
    fn refresh_takes_an_optional_python_style_boolean() {
        assert!(!parse(&["--mode", "client", "--refresh", "False"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "-r"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "-r", "True"]).unwrap().refresh);
        assert!(parse(&["--mode", "client", "--refresh", "maybe"]).is_err());
    }

    #[test]
    fn a_missing_or_unknown_mode_is_an_error() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--mode", "relay"]).is_err());
    }
}
