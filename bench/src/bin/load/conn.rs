//! Client connections: one identity each, one substream per request, as
//! rust-libp2p's and py-libp2p's clients do.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use rendezvous_core::record::{Record, encode_peer_info};
use rendezvous_core::{Flavour, codec, proto};
use rendezvous_libp2p::framed::Framed;

use crate::Error;
use crate::servers::{Kind, Server};

pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");

/// Largest response read; py-libp2p's limit.
pub(crate) const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// The address our made-up registrations announce.
pub(crate) const ADDRESS: &str = "/ip4/127.0.0.1/tcp/4001";

/// TCP, or WebSocket over TCP when `websocket`; then noise and yamux.
fn transport(key: &Keypair, websocket: bool) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error> {
    let tcp = || tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let upgrade = |t: Boxed<_>| -> Result<_, Error> {
        Ok(t.upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed())
    };
    if websocket {
        upgrade(libp2p_websocket::Config::new(tcp()).map(|s, _| Box::new(s) as Box<dyn Io>).boxed())
    } else {
        upgrade(tcp().map(|s, _| Box::new(s) as Box<dyn Io>).boxed())
    }
}

/// A byte stream either transport yields.
trait Io: futures::AsyncRead + futures::AsyncWrite + Send + Unpin {}
impl<T: futures::AsyncRead + futures::AsyncWrite + Send + Unpin> Io for T {}

/// One client connection: its identity, the point it is connected to, and
/// a way to open substreams.
pub(crate) struct Conn {
    pub(crate) keypair: Keypair,
    pub(crate) control: libp2p_stream::Control,
    pub(crate) server: PeerId,
}

impl Conn {
    /// Dials `server` with a new identity.
    pub(crate) async fn open(server: &Server) -> Result<Conn, Error> {
        let keypair = Keypair::generate_ed25519();
        let websocket = server.address.iter().any(|p| matches!(p, Protocol::Ws(_)));
        let mut swarm = SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_other_transport(|key| transport(key, websocket))?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        let control = swarm.behaviour().new_control();
        swarm.dial(server.address.clone())?;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await??;
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Ok(Conn { keypair, control, server: server.peer })
    }

    /// This connection's record.
    pub(crate) fn record(&self, kind: Kind) -> Result<Bytes, Error> {
        record(&self.keypair, kind, 1)
    }
}

/// A record of `keypair`'s identity numbered `seq`: signed in rust-libp2p's
/// flavour (legacy `PeerInfo` for py-libp2p, which reads nothing else).
pub(crate) fn record(keypair: &Keypair, kind: Kind, seq: u64) -> Result<Bytes, Error> {
    let addr = [ADDRESS.parse::<Multiaddr>()?];
    Ok(match kind {
        Kind::Py => encode_peer_info(&keypair.public().to_peer_id(), &addr),
        _ => Record::sign(keypair, &addr, seq, Flavour::RustLibp2p)?,
    })
}

/// Sends one request on a new substream and reads its response.
pub(crate) async fn exchange(
    control: &mut libp2p_stream::Control,
    server: PeerId,
    request: &proto::Message,
) -> Result<proto::Message, Error> {
    let stream = control.open_stream(server, PROTOCOL).await?;
    let mut framed = Framed::new(stream, MAX_RESPONSE);
    framed.write_frame(&codec::frame(request)).await?;
    let body = framed.read_frame().await?.ok_or("the substream closed before the response")?;
    let _ = framed.close().await;
    Ok(codec::decode_message(&body)?)
}
