//! [`SfuControl`]: how signalling (or the WHIP/WHEP front) drives the SFU,
//! and [`EmbeddedSfu`], the in-process implementation that starts the
//! worker threads.
//!
//! # Placement
//!
//! A room lives on one worker, chosen when it is first named: the live
//! worker with the fewest participants. Placement counts the participants
//! of each worker and room; it forgets a participant when it leaves, when
//! its join fails, and when the engine drops it on its own (connect
//! timeout, ICE or DTLS failure: the worker sends those back on a channel
//! that placement drains whenever it is consulted), and a room when its
//! last participant is gone. Offers are parsed here, on tokio's blocking
//! pool, never on a worker.
//!
//! # Dead workers
//!
//! A worker thread that panics or exits without being told to is noticed
//! by its own thread as it unwinds: it is marked dead, placement never
//! chooses it again, its rooms are unplaced (a new session of theirs goes
//! to a live worker) and each of its participants is reported as
//! [`SfuEvent::ParticipantLost`]. [`SfuControl::health`] says how many
//! workers are alive, cheaply and without a round trip; [`SfuControl::stats`]
//! skips dead workers and waits at most 5 s in all for the live ones. A dead
//! worker is not restarted (its socket and port died with it): restart the
//! process.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use str0m::change::SdpOffer;
use tokio::sync::oneshot;

use crate::config::SfuConfig;
use crate::core::simulcast::Preference;
use crate::engine::{
    self, Engine, EngineConfig, JoinError, LostReason, ParticipantStats, RelayIn, RelayOut, Role,
    SfuEvent,
};
use crate::events::{EventLog, EventStream};
use crate::ids::{ParticipantId, RoomId};
use crate::relay::{Relay, RelayConfig, RelayCounters, RelayCounts, RelayInfo, RelayPeer};
use crate::worker::{self, Command, Exit, Links, WorkerHealth, WorkerShared};

mod placement;

use placement::Placement;

/// How long a caller waits for a worker's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept for readers that fell behind (or resume after a
/// reconnect) before the oldest are dropped.
const EVENTS_KEPT: usize = 65_536;
/// Messages from other nodes waiting for one worker (relayed media):
/// beyond, they are dropped and counted.
const RELAY_IN_QUEUE: usize = 8192;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The offer could not be used.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// No such participant.
    #[error("no such participant")]
    UnknownParticipant,
    /// A join with an id already in use.
    #[error("a participant with this id exists")]
    DuplicateParticipant,
    /// The worker's queue is full; try again later.
    #[error("the SFU is overloaded")]
    Overloaded,
    /// The worker did not answer in time or has stopped.
    #[error("the SFU worker is not answering")]
    Unavailable,
    /// Starting the workers failed.
    #[error("cannot start the SFU: {0}")]
    Start(String),
}

/// A participant that joined.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Joined {
    /// Its id (also the WHIP/WHEP resource).
    pub participant: ParticipantId,
    /// The SDP answer.
    pub answer: String,
}

/// Load and counters of the whole SFU.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SfuStats {
    /// Per worker: its participants' counters (empty for a worker that is
    /// dead or did not answer in time: see `answered`).
    pub workers: Vec<Vec<ParticipantStats>>,
    /// Per worker: whether it answered.
    pub answered: Vec<bool>,
    /// Liveness and ingress counters of every worker.
    pub health: SfuHealth,
}

/// Liveness and ingress counters of every worker, read without asking
/// them ([`SfuControl::health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SfuHealth {
    /// Per worker, by index.
    pub workers: Vec<WorkerHealth>,
    /// Why the SFU could not be asked, when it runs in another process
    /// that did not answer ([`crate::remote::RemoteSfu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// CPU time the SFU's process has used so far (user and system), in
    /// milliseconds: a reader that asks twice has its CPU load.
    #[serde(default)]
    pub cpu_ms: u64,
    /// Its relay (the cascade), when it runs one: where its peers dial
    /// and the certificate they pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayInfo>,
    /// What its relay carried (zero without one).
    #[serde(default)]
    pub relayed: RelayCounts,
}

impl SfuHealth {
    /// Workers whose thread runs.
    #[must_use]
    pub fn alive(&self) -> usize {
        self.workers.iter().filter(|w| w.alive).count()
    }

    /// Whether every worker runs and none is stalled.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problem().is_none()
    }

    /// What is wrong, in a sentence (for a health report), or `None`.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = &self.unreachable {
            return Some(format!("the SFU does not answer: {why}"));
        }
        let total = self.workers.len();
        let dead = total - self.alive();
        let stalled = self.workers.iter().filter(|w| w.stalled).count();
        match (dead, stalled) {
            (0, 0) => None,
            (d, 0) => Some(format!("{d} of {total} SFU workers dead")),
            (0, s) => Some(format!("{s} of {total} SFU workers stalled")),
            (d, s) => Some(format!("{d} of {total} SFU workers dead, {s} stalled")),
        }
    }
}

/// One node of a media cluster as its client sees it
/// ([`crate::nodes::SfuNodes`]), for `/metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeReport {
    /// The URL of its control API.
    pub url: String,
    /// It answers (and has a live worker).
    pub up: bool,
    /// Configured to take no new room.
    pub draining: bool,
    /// Sessions on it (the larger of what it reported and what this client
    /// placed there).
    pub participants: u64,
    /// Rooms this client placed on it.
    pub rooms: u64,
    /// Datagrams it received per second.
    pub packets_per_second: f64,
    /// CPU it used, as a share of its workers' cores (1.0 = all busy).
    pub cpu: f64,
    /// 1 − its load (see [`crate::nodes`]); 0 when down.
    pub headroom: f64,
    /// It runs a relay: a call may span it and other nodes.
    pub relay: bool,
}

/// The one interface through which the SFU is driven.
#[async_trait]
pub trait SfuControl: Send + Sync + std::fmt::Debug {
    /// Places a room on a worker ahead of its first participant (a join to
    /// an unknown room also creates it).
    async fn create_room(&self, room: &RoomId) -> Result<(), SfuError>;
    /// Adds a participant to `room` (created on first join) from an SDP
    /// offer; returns its id and the SDP answer.
    async fn join(&self, room: &RoomId, role: Role, offer: String) -> Result<Joined, SfuError> {
        self.join_as(room, ParticipantId::random(), role, offer, None)
            .await
    }
    /// As [`Self::join`] with an id the caller chose (so that it can
    /// recognise the session's events from the first one on), for a client
    /// that may have another session (`linked`) in the room: its subscribe
    /// session never gets its own tracks.
    async fn join_as(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        role: Role,
        offer: String,
        linked: Option<ParticipantId>,
    ) -> Result<Joined, SfuError>;
    /// Applies a new offer of a participant already in (an added track or
    /// more receive slots); returns the SDP answer.
    async fn renegotiate(
        &self,
        participant: ParticipantId,
        offer: String,
    ) -> Result<String, SfuError>;
    /// Removes a participant.
    async fn leave(&self, participant: ParticipantId) -> Result<(), SfuError>;
    /// Sets a subscriber's video preference (thumbnail, spotlight, paused).
    async fn set_preference(
        &self,
        participant: ParticipantId,
        preference: Preference,
    ) -> Result<(), SfuError>;
    /// Sets a subscriber's preference for one video slot (by its mid).
    async fn set_slot_preference(
        &self,
        participant: ParticipantId,
        mid: String,
        preference: Preference,
    ) -> Result<(), SfuError>;
    /// Removes a room and everyone in it.
    async fn close_room(&self, room: &RoomId) -> Result<(), SfuError>;
    /// Counters: asks every live worker (at most 5 s in all).
    async fn stats(&self) -> Result<SfuStats, SfuError>;
    /// Liveness and ingress counters of every worker: a few atomic loads,
    /// no round trip, never blocks (for a health endpoint).
    fn health(&self) -> SfuHealth;
    /// The events after number `after` (0: the oldest kept), numbered
    /// in the whole stream and in their room, as they come; a reader
    /// resumes from the last number it saw (see [`crate::events`]).
    fn events(&self, after: u64) -> EventStream;
    /// The number of the last event so far (where a reader that wants
    /// only new events starts).
    fn last_event(&self) -> u64;
    /// The nodes of a media cluster and their load (empty for one SFU).
    fn nodes(&self) -> Vec<NodeReport> {
        Vec::new()
    }
    /// Links `room` to the other nodes that carry part of it (`peers`,
    /// empty: none any more): their tracks and this node's cross between
    /// them over the relay ([`crate::relay`]).
    ///
    /// # Errors
    /// [`SfuError::Unavailable`] when this SFU runs no relay.
    async fn link_room(&self, room: &RoomId, peers: Vec<RelayPeer>) -> Result<(), SfuError> {
        let _ = (room, peers);
        Err(SfuError::Unavailable)
    }
    /// Makes worker `index` panic, as a bug would: the only way to test
    /// what happens when a worker dies. A test hook, not for production.
    ///
    /// # Errors
    /// [`SfuError::Unavailable`] if there is no such live worker (or the
    /// implementation has no workers to fail).
    #[doc(hidden)]
    fn fail_worker_for_tests(&self, index: usize) -> Result<(), SfuError> {
        let _ = index;
        Err(SfuError::Unavailable)
    }
}

#[derive(Debug)]
struct WorkerHandle {
    commands: SyncSender<Command>,
    relay_in: SyncSender<RelayIn>,
    waker: mio::Waker,
    addr: SocketAddr,
    shared: Arc<WorkerShared>,
    thread: Option<JoinHandle<()>>,
}

/// The SFU in this process: one pinned thread per worker.
#[derive(Debug)]
pub struct EmbeddedSfu {
    workers: Vec<WorkerHandle>,
    placement: Arc<Mutex<Placement>>,
    events: Arc<EventLog>,
    /// The workers' messages for other nodes, until a relay takes them.
    relay_queue: Mutex<Option<tokio::sync::mpsc::Receiver<RelayOut>>>,
    relay: OnceLock<Arc<Relay>>,
    relay_counters: Arc<RelayCounters>,
}

impl EmbeddedSfu {
    /// Binds the worker sockets and starts the workers.
    ///
    /// # Errors
    /// [`SfuError::Start`] if the configuration is invalid or a socket
    /// cannot be bound.
    pub fn start(config: &SfuConfig) -> Result<Arc<Self>, SfuError> {
        config
            .validate()
            .map_err(|e| SfuError::Start(e.to_string()))?;
        let count = config.worker_count();
        let cores = if config.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let events = EventLog::new(EVENTS_KEPT);
        let (gone_tx, gone) = std::sync::mpsc::channel();
        let placement = Arc::new(Mutex::new(Placement {
            rooms: HashMap::new(),
            participants: HashMap::new(),
            load: vec![0; count],
            dead: vec![false; count],
            gone,
        }));
        let (relay_tx, relay_queue) = tokio::sync::mpsc::channel(crate::relay::QUEUE);
        let relay_counters = Arc::new(RelayCounters::default());
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let mut bind = config.udp_bind;
            if bind.port() != 0 {
                bind.set_port(bind.port() + u16::try_from(i).unwrap_or(0));
            }
            let socket = UdpSocket::bind(bind)
                .map_err(|e| SfuError::Start(format!("binding {bind}: {e}")))?;
            let addr = socket
                .local_addr()
                .map_err(|e| SfuError::Start(e.to_string()))?;
            socket
                .set_nonblocking(true)
                .map_err(|e| SfuError::Start(e.to_string()))?;
            let poll = mio::Poll::new().map_err(|e| SfuError::Start(format!("poll: {e}")))?;
            let waker = mio::Waker::new(poll.registry(), worker::WAKER)
                .map_err(|e| SfuError::Start(format!("waker: {e}")))?;
            let engine = Engine::new(EngineConfig {
                local: addr,
                announced: config.announced_ip,
                keyframe_min_interval: config.keyframe_min_interval(),
                connect_timeout: config.connect_timeout(),
            });
            let (tx, rx) = std::sync::mpsc::sync_channel(config.command_queue);
            let (relay_in_tx, relay_in) = std::sync::mpsc::sync_channel(RELAY_IN_QUEUE);
            let core = cores.get(i % cores.len().max(1)).copied();
            let shared = Arc::new(WorkerShared::new());
            let links = Links {
                shared: shared.clone(),
                events: events.clone(),
                gone: gone_tx.clone(),
                index: i,
                relay: Some(relay_tx.clone()),
                relay_in,
                relay_counters: relay_counters.clone(),
            };
            let placement = placement.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sfu-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let exit = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        worker::run(socket, poll, engine, rx, &links)
                    }));
                    links.shared.mark_dead();
                    if !matches!(exit, Ok(Exit::Stopped)) {
                        // The panic itself was printed by the panic hook.
                        tracing::error!(worker = i, "SFU worker died; its participants are lost");
                        worker_died(&placement, i, &links.events);
                    }
                })
                .map_err(|e| SfuError::Start(format!("spawning worker: {e}")))?;
            workers.push(WorkerHandle {
                commands: tx,
                relay_in: relay_in_tx,
                waker,
                addr,
                shared,
                thread: Some(thread),
            });
        }
        Ok(Arc::new(Self {
            placement,
            workers,
            events,
            relay_queue: Mutex::new(Some(relay_queue)),
            relay: OnceLock::new(),
            relay_counters,
        }))
    }

    /// Starts this SFU's relay (the cascade, [`crate::relay`]); peers that
    /// dial it must present `token`.
    ///
    /// # Errors
    /// [`SfuError::Start`] when it cannot bind, or was started already.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_relay(
        self: &Arc<Self>,
        config: &RelayConfig,
        token: Option<String>,
    ) -> Result<RelayInfo, SfuError> {
        let queue = self
            .relay_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| SfuError::Start("the relay is running already".into()))?;
        let sfu = Arc::downgrade(self);
        let sink: crate::relay::Sink = Arc::new(move |input| {
            if let Some(sfu) = sfu.upgrade() {
                sfu.relay_input(input);
            }
        });
        let relay = Relay::start(config, token, sink, queue, self.relay_counters.clone())
            .map_err(SfuError::Start)?;
        let info = relay.info().clone();
        let _ = self.relay.set(relay);
        Ok(info)
    }

    /// Hands what another node sent to the worker of its room; dropped
    /// (and counted) when the room is not here or the worker's queue is
    /// full.
    fn relay_input(&self, input: RelayIn) {
        let worker = self
            .placement()
            .ok()
            .and_then(|p| p.rooms.get(input.room()).map(|r| r.worker));
        let sent = worker.and_then(|w| self.workers.get(w)).is_some_and(|w| {
            let sent = w.relay_in.try_send(input).is_ok();
            if sent {
                let _ = w.waker.wake();
            }
            sent
        });
        if !sent {
            self.relay_counters.drop_one();
        }
    }

    /// The UDP addresses of the workers.
    #[must_use]
    pub fn worker_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.addr).collect()
    }

    /// Sends a command to worker `index` and wakes it.
    fn send(&self, index: usize, command: Command) -> Result<(), SfuError> {
        let worker = self.workers.get(index).ok_or(SfuError::Unavailable)?;
        worker.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => SfuError::Overloaded,
            TrySendError::Disconnected(_) => SfuError::Unavailable,
        })?;
        // A failed wake only delays the command to the worker's next turn
        // (at most 100 ms).
        let _ = worker.waker.wake();
        Ok(())
    }

    /// The placement, with the departures the workers reported applied.
    fn placement(&self) -> Result<MutexGuard<'_, Placement>, SfuError> {
        let mut placement = self.placement.lock().map_err(|_| SfuError::Unavailable)?;
        placement.apply_departures();
        Ok(placement)
    }

    fn worker_of(&self, participant: ParticipantId) -> Result<usize, SfuError> {
        self.placement()?
            .participants
            .get(&participant)
            .map(|(worker, _)| *worker)
            .ok_or(SfuError::UnknownParticipant)
    }

    fn forget(&self, participant: ParticipantId) {
        if let Ok(mut placement) = self.placement() {
            placement.forget(participant);
        }
    }

    /// Participants placement counts, per worker (what `health` and the
    /// tests compare with the engines' own counts).
    #[must_use]
    pub fn placed_participants(&self) -> Vec<usize> {
        self.placement().map(|p| p.load.clone()).unwrap_or_default()
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(&self) {
        if let Some(relay) = self.relay.get() {
            relay.close();
        }
        for i in 0..self.workers.len() {
            let _ = self.send(i, Command::Stop);
        }
    }
}

/// Worker `index` has died: placement stops using it and forgets its
/// rooms, and each of its participants is reported lost. Runs on the dying
/// thread.
fn worker_died(placement: &Mutex<Placement>, index: usize, events: &EventLog) {
    let lost = match placement.lock() {
        Ok(mut placement) => placement.fail_worker(index),
        // Another thread panicked while holding placement: the control
        // plane is unusable anyway, every request answers `Unavailable`.
        Err(_) => Vec::new(),
    };
    for (participant, room) in lost {
        events.push(SfuEvent::ParticipantLost {
            room,
            participant,
            reason: LostReason::WorkerFailed,
        });
    }
}

/// The CPU time this process has used (user and system), in ms.
fn process_cpu_ms() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let ms = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
                + u64::try_from(t.tv_usec()).unwrap_or(0) / 1000
        };
        ms(u.user_time()) + ms(u.system_time())
    })
}

impl Drop for EmbeddedSfu {
    fn drop(&mut self) {
        self.shutdown();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

async fn wait<T>(rx: oneshot::Receiver<T>) -> Result<T, SfuError> {
    tokio::time::timeout(REPLY_TIMEOUT, rx)
        .await
        .map_err(|_| SfuError::Unavailable)?
        .map_err(|_| SfuError::Unavailable)
}

/// Parses an offer on tokio's blocking pool: an offer can be large (one
/// m-line per slot), and neither a worker nor an async task should spend
/// its time on it.
async fn parse_offer(offer: String) -> Result<Box<SdpOffer>, SfuError> {
    tokio::task::spawn_blocking(move || engine::parse_offer(&offer).map(Box::new))
        .await
        .map_err(|_| SfuError::Unavailable)?
        .map_err(SfuError::Join)
}

#[async_trait]
impl SfuControl for EmbeddedSfu {
    async fn create_room(&self, room: &RoomId) -> Result<(), SfuError> {
        self.placement()?.place(room).ok_or(SfuError::Unavailable)?;
        Ok(())
    }

    async fn join_as(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        role: Role,
        offer: String,
        linked: Option<ParticipantId>,
    ) -> Result<Joined, SfuError> {
        if self.placement()?.participants.contains_key(&participant) {
            return Err(SfuError::DuplicateParticipant);
        }
        let offer = parse_offer(offer).await?;
        let index = {
            let mut placement = self.placement()?;
            if placement.participants.contains_key(&participant) {
                return Err(SfuError::DuplicateParticipant);
            }
            let index = placement.place(room).ok_or(SfuError::Unavailable)?;
            placement.add(participant, room, index);
            index
        };
        let (reply, rx) = oneshot::channel();
        let sent = self.send(
            index,
            Command::Join {
                room: room.clone(),
                participant,
                role,
                offer,
                linked,
                reply,
            },
        );
        let result = match sent {
            Ok(()) => wait(rx).await.and_then(|r| r.map_err(SfuError::from)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.forget(participant);
        }
        result.map(|answer| Joined {
            participant,
            answer,
        })
    }

    async fn renegotiate(
        &self,
        participant: ParticipantId,
        offer: String,
    ) -> Result<String, SfuError> {
        self.worker_of(participant)?;
        let offer = parse_offer(offer).await?;
        let index = self.worker_of(participant)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            index,
            Command::Renegotiate {
                participant,
                offer,
                reply,
            },
        )?;
        wait(rx).await?.map_err(|e| match e {
            JoinError::Unknown => SfuError::UnknownParticipant,
            other => SfuError::Join(other),
        })
    }

    async fn set_slot_preference(
        &self,
        participant: ParticipantId,
        mid: String,
        preference: Preference,
    ) -> Result<(), SfuError> {
        let index = self.worker_of(participant)?;
        self.send(index, Command::SlotPreference(participant, mid, preference))
    }

    async fn leave(&self, participant: ParticipantId) -> Result<(), SfuError> {
        let index = self.worker_of(participant)?;
        // Forgotten only once the worker has the command: a caller told
        // `Overloaded` may try again.
        self.send(index, Command::Leave(participant))?;
        self.forget(participant);
        Ok(())
    }

    async fn set_preference(
        &self,
        participant: ParticipantId,
        preference: Preference,
    ) -> Result<(), SfuError> {
        let index = self.worker_of(participant)?;
        self.send(index, Command::Preference(participant, preference))
    }

    async fn close_room(&self, room: &RoomId) -> Result<(), SfuError> {
        let index = {
            let mut placement = self.placement()?;
            let index = placement.rooms.remove(room).map(|r| r.worker);
            let members: Vec<ParticipantId> = placement
                .participants
                .iter()
                .filter(|(_, (_, r))| r == room)
                .map(|(p, _)| *p)
                .collect();
            for p in members {
                placement.forget(p);
            }
            index
        };
        match index {
            Some(i) => self.send(i, Command::CloseRoom(room.clone())),
            None => Ok(()),
        }
    }

    async fn stats(&self) -> Result<SfuStats, SfuError> {
        // Ask every worker at once, then collect within one deadline: a
        // dead worker answers at once (its queue is closed), a stuck one
        // costs the deadline once, not once per worker.
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        let pending: Vec<Option<oneshot::Receiver<Vec<ParticipantStats>>>> =
            (0..self.workers.len())
                .map(|i| {
                    let (reply, rx) = oneshot::channel();
                    self.send(i, Command::Stats(reply)).ok().map(|()| rx)
                })
                .collect();
        let mut stats = SfuStats::default();
        for rx in pending {
            let answer = match rx {
                Some(rx) => tokio::time::timeout_at(deadline, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            stats.answered.push(answer.is_some());
            stats.workers.push(answer.unwrap_or_default());
        }
        stats.health = self.health();
        Ok(stats)
    }

    fn health(&self) -> SfuHealth {
        let now = Instant::now();
        SfuHealth {
            workers: self.workers.iter().map(|w| w.shared.health(now)).collect(),
            unreachable: None,
            cpu_ms: process_cpu_ms(),
            relay: self.relay.get().map(|r| r.info().clone()),
            relayed: self.relay_counters.read(),
        }
    }

    fn events(&self, after: u64) -> EventStream {
        self.events.read_after(after)
    }

    fn last_event(&self) -> u64 {
        self.events.last()
    }

    fn fail_worker_for_tests(&self, index: usize) -> Result<(), SfuError> {
        self.send(index, Command::Panic)
    }

    async fn link_room(&self, room: &RoomId, peers: Vec<RelayPeer>) -> Result<(), SfuError> {
        let relay = self.relay.get().ok_or(SfuError::Unavailable)?;
        let nodes: Vec<engine::NodeId> = peers.iter().map(|p| relay.node(p)).collect();
        let index = self.placement()?.place(room).ok_or(SfuError::Unavailable)?;
        self.send(index, Command::Link(room.clone(), nodes))
    }
}
