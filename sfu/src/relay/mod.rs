//! The cascade's transport: media and track control between SFU nodes
//! over QUIC (quinn).
//!
//! # Model
//!
//! A room whose participants are on several nodes is **linked**:
//! signalling ([`crate::nodes::SfuNodes`]) tells each node which other
//! nodes carry the room ([`crate::control::SfuControl::link_room`]), with
//! each one's relay address, certificate fingerprint and token. The
//! engines then exchange [`RelayOut`]/[`RelayIn`] (see
//! [`crate::engine`]'s relay docs for what crosses); this module carries
//! them.
//!
//! - **Connections.** Each node dials each peer it has tracks for, once,
//!   whatever the number of rooms: one QUIC connection per ordered pair
//!   of nodes. The dialer sends its tracks; the peer answers on the same
//!   connection with what it needs of them and the keyframes it wants. A
//!   lost connection is dialled again (at most once a second) and every
//!   track announced again.
//! - **Control** is one bidirectional stream per connection of
//!   length-prefixed JSON messages ([`Control`]): the dialer's hello
//!   (its own relay address and the peer's token), track announcements
//!   (each with a number for this connection) and withdrawals; back come
//!   needs and keyframe requests.
//! - **Media** rides QUIC datagrams, unreliable as RTP expects (loss is
//!   repaired end to end by NACK and keyframes): a 19-byte header (track
//!   number, layer, marker and audio level flags, extended sequence
//!   number, timestamp) and the RTP payload as the publisher sent it.
//! - **Trust.** Each node makes a self-signed certificate at start and
//!   reports its SHA-256 fingerprint in its health; signalling hands it to
//!   the peers, which pin it (no certificate authority involved), and the
//!   dialer proves itself with the peer's control token in its hello.
//! - **Queues.** The workers hand their messages to one bounded queue
//!   (full: dropped and counted, see [`crate::worker::Links`]); datagrams
//!   QUIC cannot take at once (its send buffer is full) are dropped and
//!   counted ([`RelayCounters`]); what arrives goes to the room's
//!   worker through its bounded command queue (full: dropped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::{NodeId, RelayIn, RelayOut, TrackInfo, TrackRef};

/// ALPN of the relay protocol.
const ALPN: &[u8] = b"confer-relay/1";
/// The name the self-signed certificates carry (pinned, not checked).
const SERVER_NAME: &str = "confer-relay";
/// Control messages queued per connection before they are dropped.
const CONTROL_QUEUE: usize = 4096;
/// Shortest time between two dials of one peer.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// How long a new connection has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// Messages the workers may queue for the relay.
pub const QUEUE: usize = 16_384;

/// Where a node's relay listens, as configured (`[relay]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// The address other nodes dial (`listen` when it is not a wildcard).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
}

/// What a node tells about its relay (in its health), for its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// The address to dial.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
}

/// A peer node of a linked room, as signalling names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPeer {
    /// Its relay.
    pub relay: RelayInfo,
    /// Its control token, which its relay asks of a dialer.
    pub token: Option<String>,
}

/// What the relay has carried, counted by everyone who touches it (the
/// workers, the relay's tasks, the SFU's routing of what arrives).
#[derive(Debug, Default)]
pub struct RelayCounters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
}

/// A reading of [`RelayCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounts {
    /// Media datagrams sent to other nodes.
    pub sent: u64,
    /// Media datagrams received from other nodes.
    pub received: u64,
    /// Messages dropped: a full queue, a peer not (yet) connected, QUIC's
    /// send buffer full, or a room not (or no longer) here.
    pub dropped: u64,
    /// Datagrams that could not be read.
    pub malformed: u64,
}

impl RelayCounters {
    /// Counts one dropped message.
    pub fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    #[must_use]
    pub fn read(&self) -> RelayCounts {
        RelayCounts {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
        }
    }
}

/// Where what arrives from other nodes goes: the SFU's worker of its room.
pub type Sink = Arc<dyn Fn(RelayIn) + Send + Sync>;

/// This process's relay endpoint (see the module docs).
pub struct Relay {
    info: RelayInfo,
    endpoint: quinn::Endpoint,
    token: Option<String>,
    sink: Sink,
    counters: Arc<RelayCounters>,
    peers: Mutex<Peers>,
    /// Per node, the control stream of its connection to us: where needs
    /// and keyframe requests for its tracks go.
    back: Mutex<HashMap<NodeId, mpsc::Sender<Control>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Nodes by relay address, with how to dial them.
#[derive(Debug, Default)]
struct Peers {
    ids: HashMap<SocketAddr, NodeId>,
    dial: HashMap<NodeId, RelayPeer>,
}

impl Relay {
    /// Binds the endpoint and starts accepting; `outgoing` is the workers'
    /// queue of messages for other nodes.
    ///
    /// # Errors
    /// When the certificate cannot be made or the address bound.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        config: &RelayConfig,
        token: Option<String>,
        sink: Sink,
        outgoing: mpsc::Receiver<RelayOut>,
        counters: Arc<RelayCounters>,
    ) -> Result<Arc<Self>, String> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| format!("relay certificate: {e}"))?;
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .map_err(|e| format!("relay certificate: {e}"))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport());
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|e| format!("relay: binding {}: {e}", config.listen))?;
        let bound = endpoint.local_addr().map_err(|e| e.to_string())?;
        let addr = match config.advertise {
            Some(addr) => addr,
            None if bound.ip().is_unspecified() => {
                return Err(
                    "relay.advertise is needed when relay.listen is a wildcard address".into(),
                );
            }
            None => bound,
        };
        let relay = Arc::new(Self {
            info: RelayInfo {
                addr,
                fingerprint: fingerprint(&cert),
            },
            endpoint,
            token,
            sink,
            counters,
            peers: Mutex::new(Peers::default()),
            back: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let accepting = tokio::spawn(accept(relay.clone()));
        let sending = tokio::spawn(send(relay.clone(), outgoing));
        relay
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([accepting, sending]);
        tracing::info!(addr = %relay.info.addr, "relay listening");
        Ok(relay)
    }

    /// Its address and fingerprint.
    #[must_use]
    pub fn info(&self) -> &RelayInfo {
        &self.info
    }

    /// The number of the node at `peer`, remembering how to dial it.
    pub fn node(&self, peer: &RelayPeer) -> NodeId {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let id = peers.id(peer.relay.addr);
        peers.dial.insert(id, peer.clone());
        id
    }

    fn dial_info(&self, node: NodeId) -> Option<RelayPeer> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.dial.get(&node).cloned()
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"stopping");
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Peers {
    fn id(&mut self, addr: SocketAddr) -> NodeId {
        let next = NodeId(u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
        *self.ids.entry(addr).or_insert(next)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

/// One transport configuration for both ends: datagrams sized for RTP
/// packets from the start (a 1452-byte initial MTU: Ethernet less IPv6
/// and UDP headers), keep-alives so that an idle link stays up and a dead
/// peer is noticed within seconds.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(1452)
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(5))
                .unwrap_or(quinn::VarInt::from_u32(5_000).into()),
        ))
        .datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(4 << 20);
    Arc::new(t)
}

/// Accepts peers' connections.
async fn accept(relay: Arc<Relay>) {
    while let Some(incoming) = relay.endpoint.accept().await {
        let relay = relay.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    let remote = conn.remote_address();
                    if let Err(why) = serve_peer(&relay, conn).await {
                        tracing::debug!(%remote, %why, "relay connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "relay handshake failed"),
            }
        });
    }
}

/// One peer's connection to us: its hello, its tracks and their packets;
/// our needs and keyframe requests go back on its control stream.
async fn serve_peer(relay: &Arc<Relay>, conn: quinn::Connection) -> Result<(), String> {
    let (send, mut recv) = tokio::time::timeout(HELLO_WITHIN, conn.accept_bi())
        .await
        .map_err(|_| "no control stream".to_owned())?
        .map_err(|e| e.to_string())?;
    let hello = tokio::time::timeout(HELLO_WITHIN, read_control(&mut recv))
        .await
        .map_err(|_| "no hello".to_owned())??;
    let Control::Hello { from, token } = hello else {
        conn.close(1u32.into(), b"hello first");
        return Err("the first message was not hello".into());
    };
    if relay.token.is_some() && token != relay.token {
        conn.close(2u32.into(), b"wrong token");
        tracing::warn!(peer = %conn.remote_address(), "relay connection with a wrong token refused");
        return Err("wrong token".into());
    }
    let node = relay
        .peers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .id(from);
    tracing::info!(%from, ?node, "relay peer connected");
    let (back, back_rx) = mpsc::channel(CONTROL_QUEUE);
    tokio::spawn(write_controls(send, back_rx));
    relay
        .back
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(node, back.clone());
    let tracks: Arc<RwLock<HashMap<u32, TrackRef>>> = Arc::default();
    let datagrams = tokio::spawn(read_datagrams(
        conn.clone(),
        tracks.clone(),
        relay.sink.clone(),
        relay.counters.clone(),
    ));
    let ended = loop {
        let message = match read_control(&mut recv).await {
            Ok(m) => m,
            Err(why) => break why,
        };
        match message {
            Control::Track {
                number,
                room,
                publisher,
                mid,
                info,
            } => {
                let track = TrackRef {
                    room,
                    publisher,
                    mid: mid.as_str().into(),
                };
                tracks
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(number, track.clone());
                (relay.sink)(RelayIn::Announce { node, track, info });
            }
            Control::Withdraw { number } => {
                let track = tracks
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&number);
                if let Some(track) = track {
                    (relay.sink)(RelayIn::Withdraw { node, track });
                }
            }
            other => tracing::debug!(?other, "unexpected relay message from a dialer"),
        }
    };
    datagrams.abort();
    let mut back_map = relay.back.lock().unwrap_or_else(PoisonError::into_inner);
    if back_map.get(&node).is_some_and(|b| b.same_channel(&back)) {
        back_map.remove(&node);
    }
    Err(ended)
}

/// Media datagrams of one peer's connection, handed to the rooms' workers.
async fn read_datagrams(
    conn: quinn::Connection,
    tracks: Arc<RwLock<HashMap<u32, TrackRef>>>,
    sink: Sink,
    counters: Arc<RelayCounters>,
) {
    while let Ok(datagram) = conn.read_datagram().await {
        counters.received.fetch_add(1, Ordering::Relaxed);
        let Some((number, packet)) = decode(datagram) else {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let track = tracks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&number)
            .cloned();
        // A datagram may overtake its track's announcement: dropped.
        if let Some(track) = track {
            sink(RelayIn::Packet(packet(track)));
        }
    }
}

/// A dial's outcome: the connection and its control stream's queue.
type Dialed = (
    NodeId,
    Result<(quinn::Connection, mpsc::Sender<Control>), String>,
);

/// A connection we dialled, to send our tracks on.
#[derive(Default)]
struct Outgoing {
    conn: Option<quinn::Connection>,
    control: Option<mpsc::Sender<Control>>,
    dialing: bool,
    last_dial: Option<Instant>,
    /// Our tracks announced to the node, with their numbers.
    tracks: HashMap<TrackRef, (u32, TrackInfo)>,
    next_number: u32,
}

/// Carries the workers' messages to other nodes, dialling them as needed.
async fn send(relay: Arc<Relay>, mut outgoing: mpsc::Receiver<RelayOut>) {
    let mut nodes: HashMap<NodeId, Outgoing> = HashMap::new();
    let (dialed_tx, mut dialed) = mpsc::channel(16);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let Some(out) = out else { return };
                handle_out(&relay, &mut nodes, &dialed_tx, &mut buf, out);
            }
            Some((node, result)) = dialed.recv() => {
                let Some(o) = nodes.get_mut(&node) else { continue };
                o.dialing = false;
                match result {
                    Ok((conn, control)) => {
                        for (track, (number, info)) in &o.tracks {
                            let _ = control.try_send(track_message(*number, track, info));
                        }
                        o.conn = Some(conn);
                        o.control = Some(control);
                    }
                    Err(why) => tracing::warn!(?node, %why, "cannot reach relay peer"),
                }
            }
        }
    }
}

fn handle_out(
    relay: &Arc<Relay>,
    nodes: &mut HashMap<NodeId, Outgoing>,
    dialed: &mpsc::Sender<Dialed>,
    buf: &mut BytesMut,
    out: RelayOut,
) {
    match out {
        RelayOut::Needs {
            node,
            track,
            layers,
        } => reply(
            relay,
            node,
            Control::Needs {
                room: track.room,
                publisher: track.publisher,
                mid: track.mid.to_string(),
                layers,
            },
        ),
        RelayOut::Keyframe { node, track, layer } => reply(
            relay,
            node,
            Control::Keyframe {
                room: track.room,
                publisher: track.publisher,
                mid: track.mid.to_string(),
                layer,
            },
        ),
        RelayOut::Announce { node, track, info } => {
            let o = connected(relay, nodes, dialed, node);
            let number = o.next_number;
            o.next_number = o.next_number.wrapping_add(1);
            if let Some(control) = &o.control {
                let _ = control.try_send(track_message(number, &track, &info));
            }
            o.tracks.insert(track, (number, info));
        }
        RelayOut::Withdraw { node, track } => {
            let o = connected(relay, nodes, dialed, node);
            if let Some((number, _)) = o.tracks.remove(&track)
                && let Some(control) = &o.control
            {
                let _ = control.try_send(Control::Withdraw { number });
            }
        }
        RelayOut::Packet { node, packet } => {
            let o = connected(relay, nodes, dialed, node);
            let (Some(conn), Some((number, _))) = (&o.conn, o.tracks.get(&packet.track)) else {
                relay.counters.drop_one();
                return;
            };
            encode(buf, *number, &packet);
            if conn.send_datagram(buf.split().freeze()).is_ok() {
                relay.counters.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                relay.counters.drop_one();
            }
        }
    }
}

/// The node's outgoing connection, dialled (in the background) when it
/// has none or lost it.
fn connected<'a>(
    relay: &Arc<Relay>,
    nodes: &'a mut HashMap<NodeId, Outgoing>,
    dialed: &mpsc::Sender<Dialed>,
    node: NodeId,
) -> &'a mut Outgoing {
    let o = nodes.entry(node).or_default();
    if o.conn.as_ref().is_some_and(|c| c.close_reason().is_some()) {
        tracing::warn!(?node, "relay connection lost; dialling again");
        o.conn = None;
        o.control = None;
    }
    if o.conn.is_none()
        && !o.dialing
        && o.last_dial.is_none_or(|t| t.elapsed() >= REDIAL_AFTER)
        && let Some(peer) = relay.dial_info(node)
    {
        o.dialing = true;
        o.last_dial = Some(Instant::now());
        let relay = relay.clone();
        let dialed = dialed.clone();
        tokio::spawn(async move {
            let result = dial(&relay, &peer).await;
            let _ = dialed.send((node, result)).await;
        });
    }
    o
}

/// Connects to a peer, pinning its certificate, and says hello.
async fn dial(
    relay: &Relay,
    peer: &RelayPeer,
) -> Result<(quinn::Connection, mpsc::Sender<Control>), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: peer.relay.fingerprint.clone(),
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    let conn = relay
        .endpoint
        .connect_with(config, peer.relay.addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let (control, rx) = mpsc::channel(CONTROL_QUEUE);
    control
        .try_send(Control::Hello {
            from: relay.info.addr,
            token: peer.token.clone(),
        })
        .map_err(|e| e.to_string())?;
    tokio::spawn(write_controls(send, rx));
    let node = relay
        .peers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .id(peer.relay.addr);
    let sink = relay.sink.clone();
    tokio::spawn(async move {
        // What the peer needs of our tracks, and the keyframes it wants.
        while let Ok(message) = read_control(&mut recv).await {
            match message {
                Control::Needs {
                    room,
                    publisher,
                    mid,
                    layers,
                } => sink(RelayIn::Needs {
                    node,
                    track: TrackRef {
                        room,
                        publisher,
                        mid: mid.as_str().into(),
                    },
                    layers,
                }),
                Control::Keyframe {
                    room,
                    publisher,
                    mid,
                    layer,
                } => sink(RelayIn::Keyframe {
                    track: TrackRef {
                        room,
                        publisher,
                        mid: mid.as_str().into(),
                    },
                    layer,
                }),
                other => tracing::debug!(?other, "unexpected relay message from a peer"),
            }
        }
    });
    tracing::info!(peer = %peer.relay.addr, "relay connected");
    Ok((conn, control))
}

fn track_message(number: u32, track: &TrackRef, info: &TrackInfo) -> Control {
    Control::Track {
        number,
        room: track.room.clone(),
        publisher: track.publisher,
        mid: track.mid.to_string(),
        info: info.clone(),
    }
}

/// Sends a needs or keyframe message to `node` on its connection to us.
fn reply(relay: &Relay, node: NodeId, message: Control) {
    let back = relay
        .back
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&node)
        .cloned();
    if back.is_none_or(|b| b.try_send(message).is_err()) {
        relay.counters.drop_one();
    }
}

mod wire;

use wire::{Control, Pinned, decode, encode, fingerprint, read_control, write_controls};
#[cfg(test)]
mod tests;
