//! A media cluster: several SFU nodes driven as one [`SfuControl`].
//!
//! Signalling configures its nodes (`[[sfu.nodes]]`: the URL of each
//! standalone `sfu`'s control API and its token) and drives
//! [`SfuNodes`] exactly as it drives one SFU: the calls module does not
//! know how many nodes there are.
//!
//! # Placement
//!
//! A room is placed on one node (its **home**) when it is first named
//! (created or joined), and its sessions go there while it has headroom.
//! The node chosen is the live, not draining node with the most
//! **headroom**:
//!
//! ```text
//! load     = max(participants / max_participants,
//!                packets received per second / max_packets_per_second,
//!                CPU used / CPU of its workers)
//! headroom = 1 - load
//! ```
//!
//! `participants` is the larger of what the node last reported (all its
//! sessions, whoever placed them) and what this client placed on it (so a
//! burst of new rooms does not all land on the node that looked emptiest
//! half a second ago); ties go to the node with fewer rooms placed from
//! here (then the first configured). A node whose headroom is gone (load
//! ≥ 1) takes no new room; when every node is full or down, a new room is
//! refused with [`SfuError::Overloaded`].
//!
//! # Rooms spanning nodes (the cascade)
//!
//! When every node of a room is full, its next session goes to the best
//! other node — if all of them run a relay ([`crate::relay`]) — and the
//! room spans that node too; without relays it stays on its home node
//! past the limit (a session of a call in progress is not refused). A
//! session with a linked session (the same client's publish session) goes
//! where that one is. Whenever the set of nodes of a room changes, a task
//! tells each of them which others carry it
//! ([`SfuControl::link_room`]: their relay addresses, certificate
//! fingerprints and tokens); the nodes then relay tracks to each other. A
//! node whose last session of the room left drops out of it. Every node
//! of a room hears all its audio and names the same speaker: only the
//! home node's `SpeakerChanged` is passed on. A room whose last session
//! left is forgotten, so its next session is placed afresh.
//!
//! # Load and liveness
//!
//! Each node's health (its workers, their participants and datagram
//! counters, its process's CPU time) is polled in the background
//! ([`crate::remote::HEALTH_EVERY`]); rates are taken between two answers.
//! A node that does not answer for [`DOWN_AFTER`] is **down**: each session
//! placed on it is reported as [`SfuEvent::ParticipantLost`] with
//! [`LostReason::NodeFailed`] (signalling then tells each device to open
//! its sessions again, and they go to a live node), and it leaves its
//! rooms (those that span other nodes are relinked without it). Those sessions are also remembered, and closed on the node
//! if it comes back (a node cut off rather than dead would otherwise keep
//! them).
//!
//! # Events
//!
//! One task per node reads the node's numbered events (resuming after a
//! reconnect) and appends them to this client's own [`EventLog`], where
//! they are numbered again: readers see one stream, whatever node an event
//! came from.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::control::{Joined, NodeReport, SfuControl, SfuError, SfuHealth, SfuStats};
use crate::core::simulcast::Preference;
use crate::engine::{LostReason, Role, SfuEvent};
use crate::events::{EventLog, EventStream};
use crate::ids::{ParticipantId, RoomId};
use crate::relay::RelayPeer;

mod state;

use state::{NodeState, Placed, State, sample};

/// How long a node may not answer before its sessions are reported lost.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// How often the nodes' health is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Rates are taken between answers at least this far apart.
const RATE_WINDOW: Duration = Duration::from_millis(900);
/// Longest time before a room's changed set of nodes is linked.
const RELINK_EVERY: Duration = Duration::from_millis(100);
/// Events kept for readers that fell behind.
const EVENTS_KEPT: usize = 65_536;

/// One node of a media cluster, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The URL of its HTTP front (its control API).
    pub url: String,
    /// Its bearer token.
    pub token: Option<String>,
    /// Sessions it may carry.
    pub max_participants: u64,
    /// Datagrams per second it may receive.
    pub max_packets_per_second: u64,
    /// Takes no new room (calls on it go on): for taking it out of service.
    pub drain: bool,
}

impl NodeSpec {
    /// A node at `url` with the default limits.
    #[must_use]
    pub fn new(url: impl Into<String>, token: Option<String>) -> Self {
        Self {
            url: url.into(),
            token,
            max_participants: 1_000,
            max_packets_per_second: 200_000,
            drain: false,
        }
    }
}

/// Several SFU nodes driven as one (see the module docs).
#[derive(Debug)]
pub struct SfuNodes {
    nodes: Arc<Vec<Node>>,
    state: Arc<Mutex<State>>,
    events: Arc<EventLog>,
    /// Wakes the task that links the nodes of rooms spanning several.
    relink: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Node {
    spec: NodeSpec,
    sfu: Arc<dyn SfuControl>,
}

impl SfuNodes {
    /// Connects to every node in `specs`. Nodes that do not answer yet
    /// start down and are used once they answer.
    ///
    /// # Errors
    /// [`SfuError::Start`] when a node refuses its token (a configuration
    /// mistake, better found at start), or none answers at all.
    #[cfg(feature = "remote")]
    pub async fn connect(specs: Vec<NodeSpec>) -> Result<Arc<Self>, SfuError> {
        use crate::remote::{Check, RemoteSfu};
        let mut nodes: Vec<(NodeSpec, Arc<dyn SfuControl>)> = Vec::new();
        let mut answered = 0;
        let mut silent = Vec::new();
        for spec in specs {
            let remote = RemoteSfu::open(&spec.url, spec.token.clone());
            match remote.check().await {
                Ok(()) => answered += 1,
                Err(Check::Refused(why)) => return Err(SfuError::Start(why)),
                Err(Check::Unreachable(why)) => {
                    tracing::warn!(node = %spec.url, %why, "SFU node down at start");
                    silent.push(why);
                }
            }
            nodes.push((spec, remote));
        }
        if answered == 0 {
            return Err(SfuError::Start(format!(
                "no SFU node answers: {}",
                silent.join("; ")
            )));
        }
        Ok(Self::new(nodes))
    }

    /// Drives `nodes` (any [`SfuControl`]s: standalone SFUs through
    /// [`crate::remote::RemoteSfu`], or in-process ones in tests).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(nodes: Vec<(NodeSpec, Arc<dyn SfuControl>)>) -> Arc<Self> {
        let nodes: Arc<Vec<Node>> = Arc::new(
            nodes
                .into_iter()
                .map(|(spec, sfu)| Node { spec, sfu })
                .collect(),
        );
        let state = Arc::new(Mutex::new(State {
            nodes: nodes
                .iter()
                .map(|n| NodeState {
                    up: answers(&n.sfu.health()),
                    ..NodeState::default()
                })
                .collect(),
            ..State::default()
        }));
        let events = EventLog::new(EVENTS_KEPT);
        let mut tasks = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let stream = node.sfu.events(node.sfu.last_event());
            tasks.push(tokio::spawn(relay_events(
                i,
                stream,
                state.clone(),
                events.clone(),
            )));
        }
        let relink = Arc::new(tokio::sync::Notify::new());
        tasks.push(tokio::spawn(watch(
            nodes.clone(),
            state.clone(),
            events.clone(),
            relink.clone(),
        )));
        tasks.push(tokio::spawn(link_rooms(
            nodes.clone(),
            state.clone(),
            relink.clone(),
        )));
        Arc::new(Self {
            nodes,
            state,
            events,
            relink,
            tasks,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a few map operations that leave
        // the state consistent: a panic elsewhere cannot have torn it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live, not draining node with the most headroom, among those
    /// `allowed`; ties go to fewer rooms, then to the first configured.
    fn best_node(&self, state: &State, allowed: impl Fn(usize) -> bool) -> Option<(usize, f64)> {
        state
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.up && !self.nodes[*i].spec.drain && allowed(*i))
            .map(|(i, n)| (i, 1.0 - n.load(&self.nodes[i].spec), n.rooms))
            .filter(|(_, headroom, _)| *headroom > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.cmp(&a.0)))
            .map(|(i, headroom, _)| (i, headroom))
    }

    /// The home node of `room`, placing it first if it has none.
    fn place(&self, room: &RoomId) -> Result<usize, SfuError> {
        let mut state = self.state();
        if let Some(home) = state.rooms.get(room).and_then(Placed::home) {
            return Ok(home);
        }
        let Some((node, headroom)) = self.best_node(&state, |_| true) else {
            tracing::warn!("no SFU node has room for a new call");
            metrics::counter!("sfu_node_refusals_total").increment(1);
            return Err(SfuError::Overloaded);
        };
        state.add_node(room, node);
        tracing::debug!(%room, node = %self.nodes[node].spec.url, headroom, "room placed");
        metrics::counter!("sfu_node_placements_total", "node" => self.nodes[node].spec.url.clone())
            .increment(1);
        Ok(node)
    }

    /// The node for a new session of `room`: the linked session's node;
    /// else the first of the room's nodes with headroom; else — when the
    /// room's nodes are full and the nodes run relays — the best other
    /// node, which joins the room (the cascade); else the home node.
    fn place_session(
        &self,
        room: &RoomId,
        linked: Option<ParticipantId>,
    ) -> Result<usize, SfuError> {
        let home = self.place(room)?;
        let mut state = self.state();
        if let Some((node, _)) = linked.and_then(|l| state.participants.get(&l))
            && state.nodes[*node].up
        {
            let node = *node;
            state.add_node(room, node);
            return Ok(node);
        }
        let carrying: Vec<usize> = state
            .rooms
            .get(room)
            .map(|p| p.nodes.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        if let Some(node) = carrying.iter().copied().find(|n| {
            let st = &state.nodes[*n];
            st.up && !self.nodes[*n].spec.drain && st.load(&self.nodes[*n].spec) < 1.0
        }) {
            return Ok(node);
        }
        let relays = |i: usize| self.nodes[i].sfu.health().relay.is_some();
        if carrying.iter().all(|n| relays(*n))
            && let Some((node, headroom)) =
                self.best_node(&state, |i| !carrying.contains(&i) && relays(i))
        {
            state.add_node(room, node);
            tracing::info!(%room, node = %self.nodes[node].spec.url, headroom, "call spans one more node");
            metrics::counter!("sfu_node_placements_total", "node" => self.nodes[node].spec.url.clone())
                .increment(1);
            self.relink.notify_one();
            return Ok(node);
        }
        Ok(home)
    }

    /// The node of a participant placed from here.
    fn node_of(&self, participant: ParticipantId) -> Result<usize, SfuError> {
        self.state()
            .participants
            .get(&participant)
            .map(|(node, _)| *node)
            .ok_or(SfuError::UnknownParticipant)
    }
}

impl Drop for SfuNodes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a node's health is an answer from a node with a live worker.
fn answers(health: &SfuHealth) -> bool {
    health.unreachable.is_none() && health.alive() > 0
}

/// Reads one node's events into the cluster's log, forgetting the
/// sessions the node says are gone.
async fn relay_events(
    node: usize,
    mut stream: EventStream,
    state: Arc<Mutex<State>>,
    events: Arc<EventLog>,
) {
    loop {
        match stream.next().await {
            Ok(batch) => {
                for sequenced in batch {
                    if let SfuEvent::SpeakerChanged { room, .. } = &sequenced.event {
                        // Every node of a room that spans several hears
                        // all of its audio and names the same speaker: the
                        // home node's word is the one passed on.
                        let state = state.lock().unwrap_or_else(PoisonError::into_inner);
                        if state
                            .rooms
                            .get(room)
                            .and_then(Placed::home)
                            .is_some_and(|home| home != node)
                        {
                            continue;
                        }
                    }
                    if let SfuEvent::Disconnected { participant, .. }
                    | SfuEvent::ParticipantLost { participant, .. } = &sequenced.event
                    {
                        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                        if state.participants.get(participant).map(|(n, _)| *n) == Some(node) {
                            state.forget(*participant);
                        }
                    }
                    events.push(sequenced.event);
                }
            }
            Err(missed) => {
                tracing::warn!(node, %missed, "events of an SFU node were lost before they were read");
            }
        }
    }
}

/// Looks at every node's health: takes its rates, and reports the
/// sessions of a node silent for [`DOWN_AFTER`] as lost.
async fn watch(
    nodes: Arc<Vec<Node>>,
    state: Arc<Mutex<State>>,
    events: Arc<EventLog>,
    relink: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for (i, node) in nodes.iter().enumerate() {
            let health = node.sfu.health();
            let mut lost = Vec::new();
            let mut returned = Vec::new();
            {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                if answers(&health) {
                    let n = &mut state.nodes[i];
                    n.silent_since = None;
                    if !n.up {
                        tracing::info!(node = %node.spec.url, "SFU node up");
                        n.up = true;
                        returned = std::mem::take(&mut n.orphans);
                    }
                    sample(n, &health, now);
                } else {
                    let n = &mut state.nodes[i];
                    let since = *n.silent_since.get_or_insert(now);
                    if n.up && now.duration_since(since) >= DOWN_AFTER {
                        n.up = false;
                        n.sample = None;
                        n.packets_per_second = 0.0;
                        n.cpu = 0.0;
                        let why = health.problem().unwrap_or_default();
                        tracing::error!(node = %node.spec.url, %why, "SFU node down; its sessions are lost");
                        metrics::counter!("sfu_node_failures_total", "node" => node.spec.url.clone())
                            .increment(1);
                        lost = state.fail_node(i);
                        state.nodes[i].orphans.extend(lost.iter().map(|(_, p)| *p));
                    }
                }
            }
            if !lost.is_empty() {
                relink.notify_one();
            }
            for (room, participant) in lost {
                events.push(SfuEvent::ParticipantLost {
                    room,
                    participant,
                    reason: LostReason::NodeFailed,
                });
            }
            if !returned.is_empty() {
                let sfu = node.sfu.clone();
                tokio::spawn(async move {
                    for participant in returned {
                        let _ = sfu.leave(participant).await;
                    }
                });
            }
        }
    }
}

/// Tells the nodes of each room whose set of nodes changed which other
/// nodes carry it, with their relays (woken on a change, and every
/// [`RELINK_EVERY`] for changes made where no wake is at hand).
async fn link_rooms(
    nodes: Arc<Vec<Node>>,
    state: Arc<Mutex<State>>,
    relink: Arc<tokio::sync::Notify>,
) {
    loop {
        let _ = tokio::time::timeout(RELINK_EVERY, relink.notified()).await;
        let work: Vec<(RoomId, Vec<usize>)> = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let rooms: Vec<RoomId> = state.relink.drain().collect();
            rooms
                .into_iter()
                .filter_map(|room| {
                    let carrying = state
                        .rooms
                        .get(&room)?
                        .nodes
                        .iter()
                        .map(|(n, _)| *n)
                        .collect();
                    Some((room, carrying))
                })
                .collect()
        };
        for (room, carrying) in work {
            let peers: Vec<(usize, RelayPeer)> = carrying
                .iter()
                .filter_map(|n| {
                    let relay = nodes[*n].sfu.health().relay?;
                    Some((
                        *n,
                        RelayPeer {
                            relay,
                            token: nodes[*n].spec.token.clone(),
                        },
                    ))
                })
                .collect();
            for n in &carrying {
                let others: Vec<RelayPeer> = peers
                    .iter()
                    .filter(|(m, _)| m != n)
                    .map(|(_, p)| p.clone())
                    .collect();
                if let Err(e) = nodes[*n].sfu.link_room(&room, others).await {
                    tracing::warn!(%room, node = %nodes[*n].spec.url, error = %e, "cannot link a room's nodes");
                }
            }
        }
    }
}

#[async_trait]
impl SfuControl for SfuNodes {
    async fn create_room(&self, room: &RoomId) -> Result<(), SfuError> {
        let node = self.place(room)?;
        let created = self.nodes[node].sfu.create_room(room).await;
        if created.is_err() {
            self.state().prune(room);
        }
        created
    }

    async fn join_as(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        role: Role,
        offer: String,
        linked: Option<ParticipantId>,
    ) -> Result<Joined, SfuError> {
        if self.state().participants.contains_key(&participant) {
            return Err(SfuError::DuplicateParticipant);
        }
        let node = self.place_session(room, linked)?;
        {
            // Counted before the answer, so that a burst of joins sees it.
            let mut state = self.state();
            if state.participants.contains_key(&participant) {
                state.prune(room);
                return Err(SfuError::DuplicateParticipant);
            }
            state.add_session(participant, room, node);
        }
        let joined = self.nodes[node]
            .sfu
            .join_as(room, participant, role, offer, linked)
            .await;
        if joined.is_err() {
            self.state().forget(participant);
        }
        joined
    }

    async fn renegotiate(
        &self,
        participant: ParticipantId,
        offer: String,
    ) -> Result<String, SfuError> {
        let node = self.node_of(participant)?;
        self.nodes[node].sfu.renegotiate(participant, offer).await
    }

    async fn leave(&self, participant: ParticipantId) -> Result<(), SfuError> {
        let node = self.node_of(participant)?;
        self.state().forget(participant);
        self.nodes[node].sfu.leave(participant).await
    }

    async fn set_preference(
        &self,
        participant: ParticipantId,
        preference: Preference,
    ) -> Result<(), SfuError> {
        let node = self.node_of(participant)?;
        self.nodes[node]
            .sfu
            .set_preference(participant, preference)
            .await
    }

    async fn set_slot_preference(
        &self,
        participant: ParticipantId,
        mid: String,
        preference: Preference,
    ) -> Result<(), SfuError> {
        let node = self.node_of(participant)?;
        self.nodes[node]
            .sfu
            .set_slot_preference(participant, mid, preference)
            .await
    }

    async fn close_room(&self, room: &RoomId) -> Result<(), SfuError> {
        let carrying = self.state().forget_room(room);
        let mut result = Ok(());
        for node in carrying {
            let closed = self.nodes[node].sfu.close_room(room).await;
            if result.is_ok() {
                result = closed;
            }
        }
        result
    }

    async fn stats(&self) -> Result<SfuStats, SfuError> {
        let up: Vec<usize> = {
            let state = self.state();
            (0..self.nodes.len())
                .filter(|i| state.nodes[*i].up)
                .collect()
        };
        let mut all = SfuStats {
            health: self.health(),
            ..SfuStats::default()
        };
        for i in up {
            if let Ok(stats) = self.nodes[i].sfu.stats().await {
                all.workers.extend(stats.workers);
                all.answered.extend(stats.answered);
            }
        }
        Ok(all)
    }

    /// The workers of the nodes that are up, as one SFU's; unreachable
    /// only when no node is up (one node down is a `sfu_node_up` of 0 in
    /// the metrics, not a signalling node out of service).
    fn health(&self) -> SfuHealth {
        let up: Vec<bool> = self.state().nodes.iter().map(|n| n.up).collect();
        let mut health = SfuHealth::default();
        for (node, up) in self.nodes.iter().zip(up) {
            if up {
                let h = node.sfu.health();
                health.workers.extend(h.workers);
                health.cpu_ms += h.cpu_ms;
            }
        }
        if health.workers.is_empty() {
            health.unreachable = Some(format!(
                "none of the {} SFU nodes answers",
                self.nodes.len()
            ));
        }
        health
    }

    fn events(&self, after: u64) -> EventStream {
        self.events.read_after(after)
    }

    fn last_event(&self) -> u64 {
        self.events.last()
    }

    fn nodes(&self) -> Vec<NodeReport> {
        let state = self.state();
        self.nodes
            .iter()
            .zip(&state.nodes)
            .map(|(node, n)| NodeReport {
                url: node.spec.url.clone(),
                up: n.up,
                draining: node.spec.drain,
                participants: n.reported.max(n.placed as u64),
                rooms: n.rooms as u64,
                packets_per_second: n.packets_per_second,
                cpu: n.cpu,
                headroom: if n.up { 1.0 - n.load(&node.spec) } else { 0.0 },
                relay: node.sfu.health().relay.is_some(),
            })
            .collect()
    }
}
