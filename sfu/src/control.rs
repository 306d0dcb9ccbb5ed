//! [`SfuControl`]: how signalling (or the WHIP/WHEP front) drives the SFU,
//! and [`EmbeddedSfu`], the in-process implementation that starts the
//! worker threads.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, oneshot};

use crate::config::SfuConfig;
use crate::core::simulcast::Preference;
use crate::engine::{Engine, EngineConfig, JoinError, ParticipantStats, Role, SfuEvent};
use crate::ids::{ParticipantId, RoomId};
use crate::worker::{self, Command};

/// How long a caller waits for a worker's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept for slow receivers before the oldest are dropped.
const EVENT_BUFFER: usize = 4096;

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
#[derive(Debug, Clone)]
pub struct Joined {
    /// Its id (also the WHIP/WHEP resource).
    pub participant: ParticipantId,
    /// The SDP answer.
    pub answer: String,
}

/// Load and counters of the whole SFU.
#[derive(Debug, Clone, Default)]
pub struct SfuStats {
    /// Per worker: its participants' counters.
    pub workers: Vec<Vec<ParticipantStats>>,
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
    /// Counters.
    async fn stats(&self) -> Result<SfuStats, SfuError>;
    /// Events from now on.
    fn events(&self) -> broadcast::Receiver<SfuEvent>;
}

#[derive(Debug)]
struct WorkerHandle {
    commands: SyncSender<Command>,
    waker: mio::Waker,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Placement {
    rooms: HashMap<RoomId, usize>,
    participants: HashMap<ParticipantId, usize>,
    load: Vec<usize>,
}

/// The SFU in this process: one pinned thread per worker.
#[derive(Debug)]
pub struct EmbeddedSfu {
    workers: Vec<WorkerHandle>,
    placement: Mutex<Placement>,
    events: broadcast::Sender<SfuEvent>,
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
        let (events, _) = broadcast::channel(EVENT_BUFFER);
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
            let core = cores.get(i % cores.len().max(1)).copied();
            let events = events.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sfu-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker::run(socket, poll, engine, rx, events);
                })
                .map_err(|e| SfuError::Start(format!("spawning worker: {e}")))?;
            workers.push(WorkerHandle {
                commands: tx,
                waker,
                addr,
                thread: Some(thread),
            });
        }
        Ok(Arc::new(Self {
            placement: Mutex::new(Placement {
                load: vec![0; workers.len()],
                ..Placement::default()
            }),
            workers,
            events,
        }))
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

    fn worker_of(&self, participant: ParticipantId) -> Result<usize, SfuError> {
        let placement = self.placement.lock().map_err(|_| SfuError::Unavailable)?;
        placement
            .participants
            .get(&participant)
            .copied()
            .ok_or(SfuError::UnknownParticipant)
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(&self) {
        for (i, w) in self.workers.iter().enumerate() {
            let _ = self.send(i, Command::Stop);
            let _ = w;
        }
    }
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

impl Placement {
    /// The worker of `room`; a new room goes to the least loaded worker.
    fn place(&mut self, room: &RoomId) -> usize {
        if let Some(i) = self.rooms.get(room) {
            return *i;
        }
        let i = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .map_or(0, |(i, _)| i);
        self.rooms.insert(room.clone(), i);
        i
    }
}

#[async_trait]
impl SfuControl for EmbeddedSfu {
    async fn create_room(&self, room: &RoomId) -> Result<(), SfuError> {
        let mut placement = self.placement.lock().map_err(|_| SfuError::Unavailable)?;
        placement.place(room);
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
        let index = {
            let mut placement = self.placement.lock().map_err(|_| SfuError::Unavailable)?;
            if placement.participants.contains_key(&participant) {
                return Err(SfuError::DuplicateParticipant);
            }
            let index = placement.place(room);
            placement.load[index] += 1;
            placement.participants.insert(participant, index);
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
        self.forget(participant);
        self.send(index, Command::Leave(participant))
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
            let mut placement = self.placement.lock().map_err(|_| SfuError::Unavailable)?;
            placement.rooms.remove(room)
        };
        match index {
            Some(i) => self.send(i, Command::CloseRoom(room.clone())),
            None => Ok(()),
        }
    }

    async fn stats(&self) -> Result<SfuStats, SfuError> {
        let mut stats = SfuStats::default();
        for i in 0..self.workers.len() {
            let (reply, rx) = oneshot::channel();
            self.send(i, Command::Stats(reply))?;
            stats.workers.push(wait(rx).await?);
        }
        Ok(stats)
    }

    fn events(&self) -> broadcast::Receiver<SfuEvent> {
        self.events.subscribe()
    }
}

impl EmbeddedSfu {
    fn forget(&self, participant: ParticipantId) {
        if let Ok(mut placement) = self.placement.lock()
            && let Some(i) = placement.participants.remove(&participant)
            && let Some(l) = placement.load.get_mut(i)
        {
            *l = l.saturating_sub(1);
        }
    }
}
