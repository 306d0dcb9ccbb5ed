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
//! nothing waits. Events go to a `tokio::sync::broadcast` channel: a slow
//! receiver loses the oldest events and is told how many (`Lagged`), the
//! worker never blocks. Datagrams the kernel will not take (send buffer
//! full) are dropped, as the network would; NACK/RTX repairs video.

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
use quinn_udp::{RecvMeta, UdpSocketState};
use str0m::net::Transmit;
use tokio::sync::{broadcast, oneshot};

use crate::core::simulcast::Preference;
use crate::engine::{Engine, JoinError, ParticipantStats, Role, SfuEvent};
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
        /// The SDP offer.
        offer: String,
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
        /// The SDP offer.
        offer: String,
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
    /// Counters of every participant.
    Stats(oneshot::Sender<Vec<ParticipantStats>>),
    /// Stop the worker.
    Stop,
}

/// Runs a worker until [`Command::Stop`] or the command channel closes.
/// `socket` must be non-blocking; `poll` has the waker registered as
/// [`WAKER`].
pub fn run(
    socket: UdpSocket,
    mut poll: Poll,
    mut engine: Engine,
    commands: Receiver<Command>,
    events: broadcast::Sender<SfuEvent>,
) {
    let fd = socket.as_raw_fd();
    if let Err(e) = poll
        .registry()
        .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)
    {
        tracing::error!(error = %e, "cannot register the worker socket; worker stops");
        return;
    }
    let state = match UdpSocketState::new((&socket).into()) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the worker socket; worker stops");
            return;
        }
    };
    let mut buffers = vec![vec![0u8; RECV_BUF]; quinn_udp::BATCH_SIZE];
    let mut meta = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let mut poll_events = Events::with_capacity(8);
    let mut out = Vec::new();
    let mut sender = Sender::new();
    loop {
        let now = Instant::now();
        let wait = engine
            .poll_timeout()
            .map_or(IDLE_WAIT, |at| at.saturating_duration_since(now))
            .min(IDLE_WAIT);
        if let Err(e) = poll.poll(&mut poll_events, Some(wait))
            && e.kind() != ErrorKind::Interrupted
        {
            tracing::warn!(error = %e, "worker poll failed");
        }
        // Commands first: they are rare and someone is waiting for them.
        loop {
            match commands.try_recv() {
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                Ok(command) => handle_command(&mut engine, command),
                Err(TryRecvError::Empty) => break,
            }
        }
        // Read until the socket is empty, a batch per system call.
        loop {
            let mut slices: Vec<IoSliceMut<'_>> =
                buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match state.recv((&socket).into(), &mut slices, &mut meta) {
                Ok(count) => {
                    let now = Instant::now();
                    for (m, buf) in meta.iter().zip(buffers.iter()).take(count) {
                        let stride = if m.stride == 0 { m.len } else { m.stride };
                        for datagram in buf[..m.len].chunks(stride) {
                            engine.handle_datagram(now, m.addr, datagram);
                        }
                    }
                    sender.flush(&socket, &state, &mut engine, &events, &mut out);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors (a peer went away) surface here; nothing
                    // to do but carry on.
                    tracing::debug!(error = %e, "worker socket read failed");
                    break;
                }
            }
        }
        engine.handle_timeout(Instant::now());
        sender.flush(&socket, &state, &mut engine, &events, &mut out);
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
                engine.handle_join_linked(&room, participant, role, &offer, linked, Instant::now());
            let _ = reply.send(answer);
        }
        Command::Renegotiate {
            participant,
            offer,
            reply,
        } => {
            let answer = engine.handle_renegotiate(participant, &offer, Instant::now());
            let _ = reply.send(answer);
        }
        Command::Leave(id) => engine.handle_leave(id),
        Command::SlotPreference(id, mid, preference) => {
            engine.handle_slot_preference(id, &mid, preference);
        }
        Command::Preference(id, preference) => engine.handle_preference(id, preference),
        Command::CloseRoom(room) => engine.handle_close_room(&room),
        Command::Stats(reply) => {
            let _ = reply.send(engine.stats());
        }
        Command::Stop => {}
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
    /// dropped, as a congested network would.
    fn flush(
        &mut self,
        socket: &UdpSocket,
        state: &UdpSocketState,
        engine: &mut Engine,
        events: &broadcast::Sender<SfuEvent>,
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
        while let Some(event) = engine.poll_event() {
            // No receiver is not an error: nobody listens yet.
            let _ = events.send(event);
        }
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
