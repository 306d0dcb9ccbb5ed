//! The driver of one worker thread: owns the UDP socket, feeds the
//! [`Engine`] with datagrams, commands and time, and sends what it outputs.
//!
//! Loop: wait until the socket is readable or the engine's deadline passes
//! (a command wakes the loop through a one-byte "doorbell" datagram sent to
//! the socket from the control side) → read the clock once → feed the
//! engine → drain its transmits and events.
//!
//! Queues: commands come on a bounded channel (`command_queue`); when it is
//! full the caller gets [`crate::control::SfuError::Overloaded`] at once and
//! nothing waits. Events go to a `tokio::sync::broadcast` channel: a slow
//! receiver loses the oldest events and is told how many (`Lagged`), the
//! worker never blocks.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use crate::core::simulcast::Preference;
use crate::engine::{Engine, JoinError, ParticipantStats, Role, SfuEvent};
use crate::ids::{ParticipantId, RoomId};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read in one go before the engine's timers get a turn.
const READ_BATCH: usize = 64;

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
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, JoinError>>,
    },
    /// Remove a participant.
    Leave(ParticipantId),
    /// Change a subscriber's preference.
    Preference(ParticipantId, Preference),
    /// Remove a room and everyone in it.
    CloseRoom(RoomId),
    /// Counters of every participant.
    Stats(oneshot::Sender<Vec<ParticipantStats>>),
    /// Stop the worker.
    Stop,
}

/// Runs a worker until [`Command::Stop`] or the command channel closes.
pub fn run(
    socket: UdpSocket,
    doorbell: SocketAddr,
    mut engine: Engine,
    commands: Receiver<Command>,
    events: broadcast::Sender<SfuEvent>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Commands first: they are rare and someone is waiting for them.
        loop {
            match commands.try_recv() {
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                Ok(command) => handle_command(&mut engine, command),
                Err(TryRecvError::Empty) => break,
            }
        }
        flush(&socket, &mut engine, &events);

        let now = Instant::now();
        let wait = engine
            .poll_timeout()
            .map_or(Duration::from_millis(100), |at| {
                at.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        let _ = socket.set_read_timeout(Some(wait));
        let mut read = 0;
        while read < READ_BATCH {
            match socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    read += 1;
                    if source == doorbell {
                        break;
                    }
                    engine.handle_datagram(Instant::now(), source, &buf[..n]);
                    flush(&socket, &mut engine, &events);
                    // Read what else is queued without waiting.
                    let _ = socket.set_nonblocking(true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    tracing::warn!(error = %e, "worker socket read failed");
                    break;
                }
            }
        }
        let _ = socket.set_nonblocking(false);
        engine.handle_timeout(Instant::now());
        flush(&socket, &mut engine, &events);
    }
}

fn handle_command(engine: &mut Engine, command: Command) {
    match command {
        Command::Join {
            room,
            participant,
            role,
            offer,
            reply,
        } => {
            let answer = engine.handle_join(&room, participant, role, &offer, Instant::now());
            let _ = reply.send(answer);
        }
        Command::Leave(id) => engine.handle_leave(id),
        Command::Preference(id, preference) => engine.handle_preference(id, preference),
        Command::CloseRoom(room) => engine.handle_close_room(&room),
        Command::Stats(reply) => {
            let _ = reply.send(engine.stats());
        }
        Command::Stop => {}
    }
}

fn flush(socket: &UdpSocket, engine: &mut Engine, events: &broadcast::Sender<SfuEvent>) {
    while let Some(t) = engine.poll_transmit() {
        if let Err(e) = socket.send_to(&t.contents, t.destination) {
            tracing::debug!(error = %e, destination = %t.destination, "send failed");
        }
    }
    while let Some(event) = engine.poll_event() {
        // No receiver is not an error: nobody listens yet.
        let _ = events.send(event);
    }
}
