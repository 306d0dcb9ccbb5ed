//! The driver of one worker thread: owns the UDP socket, feeds the
//! [`Engine`] with datagrams, commands and time, and sends what it outputs.
//!
//! Loop: wait (mio) until the socket is readable, a command arrives (a
//! `mio::Waker` rings) or the engine's deadline passes → read the clock
//! once → feed the engine → send its transmits in batches.
//!
//! Batching: datagrams are read with `recvmmsg` (quinn-udp), up to 32 per
//! system call, and with UDP GRO where the kernel coalesces them. Runs of
//! equal-sized datagrams to one destination (the packets of a video frame
//! to one subscriber) go out as one UDP GSO `sendmsg` (quinn-udp); the
//! other datagrams, to many destinations, go out with `sendmmsg` (nix), up
//! to 64 per system call, in the order the engine produced them.
//!
//! Queues: commands come on a bounded channel (`command_queue`); when it is
//! full the caller gets [`crate::control::SfuError::Overloaded`] at once and
//! nothing waits. Events go to the SFU's [`crate::events::EventLog`]:
//! numbered and kept for readers that fall behind or resume; the worker
//! never blocks. Datagrams the kernel will not take (send buffer
//! full) are dropped, as the network would; NACK/RTX repairs video.
//!
//! Hostile ingress: anyone can send anything to a worker's port. Every
//! datagram — empty, one byte, random, truncated STUN/DTLS/RTP/RTCP, 64 KiB
//! — goes through [`Engine::handle_datagram`], which never panics and
//! counts what it drops ([`crate::engine::IngressStats`]); the worker
//! publishes those counters in its [`WorkerShared`] after every turn. A
//! flood cannot starve commands or timers: one turn reads at most
//! [`READ_BUDGET`] batches, then serves commands and timers before it
//! reads on (without waiting: the socket is known not to be empty).
//!
//! Liveness: the worker writes a heartbeat into its [`WorkerShared`] on
//! every turn (at least every 100 ms). If it dies anyway — a panic (a bug,
//! in our code or a dependency) or an exit without [`Command::Stop`] —
//! [`crate::control::EmbeddedSfu`] notices at once (the thread catches
//! the unwind), stops placing rooms on it and reports its participants as
//! [`SfuEvent::ParticipantLost`]. The worker is not restarted: its socket
//! and port went with it; the process should be restarted (its health
//! says `degraded`).
//!
//! Departures: every participant the engine removes (leave, connect
//! timeout, ICE or DTLS failure) is sent back to the control plane on an
//! unbounded channel (one value per participant that joined, so bounded
//! by the joins), so that placement forgets it and load counts stay right.

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
use quinn_udp::{RecvMeta, UdpSocketState};
use str0m::change::SdpOffer;
use str0m::net::Transmit;
use tokio::sync::oneshot;

use crate::core::simulcast::Preference;
use crate::engine::{
    Engine, IngressStats, JoinError, NodeId, ParticipantStats, RelayIn, RelayOut, Role, SfuEvent,
};
use crate::ids::{ParticipantId, RoomId};

/// Token of the UDP socket in the worker's poll.
pub const SOCKET: Token = Token(0);
/// Token of the command waker.
pub const WAKER: Token = Token(1);
/// Size of one receive buffer: room for a GRO batch of full-size datagrams.
const RECV_BUF: usize = 64 * 1024;
/// Datagrams per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Longest wait when the engine has no deadline.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Receive batches (of up to `quinn_udp::BATCH_SIZE` datagrams) read in one
/// turn of the loop before commands and timers get their turn.
pub const READ_BUDGET: usize = 64;
/// Messages from other nodes handled in one turn of the loop.
const RELAY_BUDGET: usize = 4096;
/// A worker whose heartbeat is older than this is reported as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// What one worker shares with the control plane: written only by the
/// worker (and by its thread's exit), read by anyone, never locked.
#[derive(Debug)]
pub struct WorkerShared {
    /// Base of `beat_ms`.
    epoch: Instant,
    alive: AtomicBool,
    /// Milliseconds after `epoch` of the worker's latest turn.
    beat_ms: AtomicU64,
    participants: AtomicU64,
    datagrams: AtomicU64,
    malformed: AtomicU64,
    unmatched: AtomicU64,
    rejected: AtomicU64,
}

/// A worker's state as [`WorkerShared`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerHealth {
    /// The thread runs.
    pub alive: bool,
    /// Alive, but no turn of its loop for [`STALL_AFTER`].
    pub stalled: bool,
    /// Participants on it at its latest turn.
    pub participants: u64,
    /// What became of the datagrams it received.
    pub ingress: IngressStats,
}

impl WorkerShared {
    /// A worker about to start.
    #[must_use]
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            alive: AtomicBool::new(true),
            beat_ms: AtomicU64::new(0),
            participants: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Its state now: a few atomic loads.
    #[must_use]
    pub fn health(&self, now: Instant) -> WorkerHealth {
        let alive = self.alive.load(Ordering::Acquire);
        let beat = self.epoch + Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        WorkerHealth {
            alive,
            stalled: alive && now.saturating_duration_since(beat) > STALL_AFTER,
            participants: self.participants.load(Ordering::Relaxed),
            ingress: IngressStats {
                datagrams: self.datagrams.load(Ordering::Relaxed),
                malformed: self.malformed.load(Ordering::Relaxed),
                unmatched: self.unmatched.load(Ordering::Relaxed),
                rejected: self.rejected.load(Ordering::Relaxed),
            },
        }
    }

    /// The thread has ended (or is unwinding).
    pub fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// One turn of the loop: heartbeat and counters.
    fn publish(&self, now: Instant, engine: &Engine) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        self.beat_ms.store(ms, Ordering::Relaxed);
        self.participants
            .store(engine.participant_count() as u64, Ordering::Relaxed);
        let i = engine.ingress();
        self.datagrams.store(i.datagrams, Ordering::Relaxed);
        self.malformed.store(i.malformed, Ordering::Relaxed);
        self.unmatched.store(i.unmatched, Ordering::Relaxed);
        self.rejected.store(i.rejected, Ordering::Relaxed);
    }
}

impl Default for WorkerShared {
    fn default() -> Self {
        Self::new()
    }
}

/// How a worker's loop ended (a panic unwinds instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// [`Command::Stop`], or the control plane went away.
    Stopped,
    /// The socket could not be set up.
    Failed,
}

/// The worker's side of its links to the control plane.
#[derive(Debug)]
pub struct Links {
    /// Where its counters and heartbeat go.
    pub shared: std::sync::Arc<WorkerShared>,
    /// Signalling's events.
    pub events: std::sync::Arc<crate::events::EventLog>,
    /// Participants the engine removed, with this worker's index.
    pub gone: std::sync::mpsc::Sender<(usize, ParticipantId)>,
    /// This worker's index.
    pub index: usize,
    /// Where messages for other nodes go (the cascade's relay), bounded:
    /// when it is full they are dropped and counted
    /// ([`crate::relay::RelayCounters`]), as a congested link would drop them —
    /// a lost announcement is sent again by the relay when it reconnects,
    /// a lost packet is repaired by NACK or the next keyframe.
    pub relay: Option<tokio::sync::mpsc::Sender<RelayOut>>,
    /// What other nodes sent for this worker's rooms: a queue of its own,
    /// so that relayed media never crowds out commands (full: the relay
    /// drops and counts).
    pub relay_in: Receiver<RelayIn>,
    /// The relay's counters (its drops).
    pub relay_counters: std::sync::Arc<crate::relay::RelayCounters>,
}

/// A request for a worker.
#[derive(Debug)]
pub enum Command {
    /// Add a participant; the answer SDP comes back on `reply`.
    Join {
        /// Room.
        room: RoomId,
        /// New participant id.
        participant: ParticipantId,
        /// Publish or subscribe.
        role: Role,
        /// The SDP offer, parsed by the caller (off this thread).
        offer: Box<SdpOffer>,
        /// The same client's other session, whose tracks it must not get.
        linked: Option<ParticipantId>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, JoinError>>,
    },
    /// A new offer from a participant already in; the answer comes back
    /// on `reply`.
    Renegotiate {
        /// Who.
        participant: ParticipantId,
        /// The SDP offer, parsed by the caller.
        offer: Box<SdpOffer>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, JoinError>>,
    },
    /// Remove a participant.
    Leave(ParticipantId),
    /// Change a subscriber's preference.
    Preference(ParticipantId, Preference),
    /// Change what a subscriber wants of one slot (by mid).
    SlotPreference(ParticipantId, String, Preference),
    /// Remove a room and everyone in it.
    CloseRoom(RoomId),
    /// The other nodes carrying part of a room are now these.
    Link(RoomId, Vec<NodeId>),
    /// Counters of every participant.
    Stats(oneshot::Sender<Vec<ParticipantStats>>),
    /// Stop the worker.
    Stop,
    /// Panic on purpose: the test hook behind
    /// `EmbeddedSfu::fail_worker_for_tests`, the only way to make a worker
    /// die from outside. Not for production use.
    #[doc(hidden)]
    Panic,
}

/// Runs a worker until [`Command::Stop`] or the command channel closes.
/// `socket` must be non-blocking; `poll` has the waker registered as
/// [`WAKER`].
pub fn run(
    socket: UdpSocket,
    mut poll: Poll,
    mut engine: Engine,
    commands: Receiver<Command>,
    links: &Links,
) -> Exit {
    let fd = socket.as_raw_fd();
    if let Err(e) = poll
        .registry()
        .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)
    {
        tracing::error!(error = %e, "cannot register the worker socket; worker stops");
        return Exit::Failed;
    }
    let state = match UdpSocketState::new((&socket).into()) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the worker socket; worker stops");
            return Exit::Failed;
        }
    };
    let mut buffers = vec![vec![0u8; RECV_BUF]; quinn_udp::BATCH_SIZE];
    let mut meta = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let mut poll_events = Events::with_capacity(8);
    let mut out = Vec::new();
    let mut sender = Sender::new();
    // The socket had more to read when the last turn ended (mio is
    // edge-triggered: it will not say so again).
    let mut backlog = false;
    loop {
        let now = Instant::now();
        links.shared.publish(now, &engine);
        let wait = if backlog {
            Duration::ZERO
        } else {
            engine
                .poll_timeout()
                .map_or(IDLE_WAIT, |at| at.saturating_duration_since(now))
                .min(IDLE_WAIT)
        };
        if let Err(e) = poll.poll(&mut poll_events, Some(wait))
            && e.kind() != ErrorKind::Interrupted
        {
            tracing::warn!(error = %e, "worker poll failed");
        }
        // Commands first: they are rare and someone is waiting for them.
        loop {
            match commands.try_recv() {
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return Exit::Stopped,
                Ok(command) => handle_command(&mut engine, command),
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        for _ in 0..RELAY_BUDGET {
            let Ok(input) = links.relay_in.try_recv() else {
                break;
            };
            engine.handle_relay(input, now);
        }
        publish_events(&mut engine, links);
        // Read until the socket is empty or the budget is spent, a batch
        // per system call.
        backlog = true;
        for _ in 0..READ_BUDGET {
            let mut slices: Vec<IoSliceMut<'_>> =
                buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match state.recv((&socket).into(), &mut slices, &mut meta) {
                Ok(count) => {
                    let now = Instant::now();
                    for (m, buf) in meta.iter().zip(buffers.iter()).take(count) {
                        feed(&mut engine, now, m, buf);
                    }
                    sender.flush(&socket, &state, &mut engine, &mut out);
                    publish_events(&mut engine, links);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    backlog = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors (a peer went away) surface here; nothing
                    // to do but carry on.
                    tracing::debug!(error = %e, "worker socket read failed");
                    backlog = false;
                    break;
                }
            }
        }
        engine.handle_timeout(Instant::now());
        sender.flush(&socket, &state, &mut engine, &mut out);
        publish_events(&mut engine, links);
    }
}

/// Hands one receive slot to the engine: a single datagram, or a GRO
/// batch of `m.stride`-sized segments (the last may be shorter). An empty
/// datagram (`m.len == 0`, hence `m.stride == 0`) is handed over as such,
/// to be counted and dropped.
fn feed(engine: &mut Engine, now: Instant, m: &RecvMeta, buf: &[u8]) {
    let Some(data) = buf.get(..m.len) else {
        // The kernel said it wrote more than the buffer holds: cannot
        // happen; drop it as malformed rather than trust it.
        engine.handle_datagram(now, m.addr, &[]);
        return;
    };
    if data.is_empty() {
        engine.handle_datagram(now, m.addr, data);
        return;
    }
    let stride = if m.stride == 0 { data.len() } else { m.stride };
    for datagram in data.chunks(stride) {
        engine.handle_datagram(now, m.addr, datagram);
    }
}

/// Hands the engine's events to signalling, and the participants it
/// removed to the control plane's placement.
fn publish_events(engine: &mut Engine, links: &Links) {
    while let Some(out) = engine.poll_relay() {
        let Some(relay) = &links.relay else {
            continue;
        };
        if relay.try_send(out).is_err() {
            links.relay_counters.drop_one();
        }
    }
    while let Some(event) = engine.poll_event() {
        if let SfuEvent::Disconnected { participant, .. } = &event {
            // The control plane may be gone (shutdown): nothing to tell.
            let _ = links.gone.send((links.index, *participant));
        }
        links.events.push(event);
    }
}

fn handle_command(engine: &mut Engine, command: Command) {
    match command {
        Command::Join {
            room,
            participant,
            role,
            offer,
            linked,
            reply,
        } => {
            let answer =
                engine.handle_join_linked(&room, participant, role, *offer, linked, Instant::now());
            let _ = reply.send(answer);
        }
        Command::Renegotiate {
            participant,
            offer,
            reply,
        } => {
            let answer = engine.handle_renegotiate_offer(participant, *offer, Instant::now());
            let _ = reply.send(answer);
        }
        Command::Leave(id) => engine.handle_leave(id),
        Command::SlotPreference(id, mid, preference) => {
            engine.handle_slot_preference(id, &mid, preference);
        }
        Command::Preference(id, preference) => engine.handle_preference(id, preference),
        Command::CloseRoom(room) => engine.handle_close_room(&room),
        Command::Link(room, nodes) => engine.handle_link(&room, &nodes),
        Command::Stats(reply) => {
            let _ = reply.send(engine.stats());
        }
        Command::Stop => {}
        Command::Panic => panic!("worker failed on purpose (test hook)"),
    }
}

/// Sends what the engine outputs, in batches.
struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
    gso: Vec<u8>,
}

impl Sender {
    fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
            gso: Vec::with_capacity(RECV_BUF),
        }
    }

    /// Sends everything the engine has: runs of equal-sized datagrams to
    /// one destination as one GSO send, everything else with `sendmmsg`,
    /// keeping the engine's order. What the kernel refuses (buffer full) is
    /// dropped, as a congested network would. Events stay in the engine
    /// ([`publish_events`] takes them).
    fn flush(
        &mut self,
        socket: &UdpSocket,
        state: &UdpSocketState,
        engine: &mut Engine,
        out: &mut Vec<Transmit>,
    ) {
        out.clear();
        while let Some(t) = engine.poll_transmit() {
            out.push(t);
        }
        let max_segments = state.max_gso_segments().max(1);
        let mut singles: Vec<usize> = Vec::with_capacity(SEND_BATCH);
        let mut i = 0;
        while i < out.len() {
            let size = out[i].contents.len();
            let mut j = i + 1;
            // A GSO run: same destination, same size, except that the last
            // segment may be shorter.
            while j < out.len()
                && j - i < max_segments
                && out[j].destination == out[i].destination
                && out[j].contents.len() <= size
                && out[j - 1].contents.len() == size
                && (j - i + 1) * size <= usize::from(u16::MAX)
            {
                j += 1;
            }
            if j - i > 1 {
                self.send_many(socket, out, &mut singles);
                self.gso.clear();
                for t in &out[i..j] {
                    self.gso.extend_from_slice(&t.contents);
                }
                let transmit = quinn_udp::Transmit {
                    destination: out[i].destination,
                    ecn: None,
                    contents: &self.gso,
                    segment_size: Some(size),
                    src_ip: None,
                };
                if let Err(e) = state.try_send(socket.into(), &transmit) {
                    tracing::debug!(error = %e, destination = %out[i].destination, "GSO send failed");
                }
            } else {
                singles.push(i);
                if singles.len() == SEND_BATCH {
                    self.send_many(socket, out, &mut singles);
                }
            }
            i = j;
        }
        self.send_many(socket, out, &mut singles);
    }

    /// Sends `out[k]` for every k in `which` with one `sendmmsg`.
    fn send_many(&mut self, socket: &UdpSocket, out: &[Transmit], which: &mut Vec<usize>) {
        if which.is_empty() {
            return;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = which
            .iter()
            .map(|k| [IoSlice::new(&out[*k].contents)])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = which
            .iter()
            .map(|k| Some(SockaddrStorage::from(out[*k].destination)))
            .collect();
        let fd = socket.as_raw_fd();
        match nix::sys::socket::sendmmsg(
            fd,
            &mut self.headers,
            &slices,
            &addrs,
            [],
            MsgFlags::empty(),
        ) {
            Ok(sent) => {
                let sent = sent.count();
                if sent < which.len() {
                    tracing::debug!(dropped = which.len() - sent, "send buffer full");
                }
            }
            Err(e) => tracing::debug!(error = %e, "sendmmsg failed"),
        }
        which.clear();
    }
}
