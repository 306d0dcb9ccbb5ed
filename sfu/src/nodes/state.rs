//! What a cluster client knows of its nodes and rooms: per node its
//! liveness, load and placed sessions; per room the nodes carrying it
//! (home first) and their sessions; and the bookkeeping that keeps these
//! consistent as sessions come and go and nodes die.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{NodeSpec, RATE_WINDOW};
use crate::control::SfuHealth;
use crate::ids::{ParticipantId, RoomId};

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) rooms: HashMap<RoomId, Placed>,
    pub(super) participants: HashMap<ParticipantId, (usize, RoomId)>,
    pub(super) nodes: Vec<NodeState>,
    /// Rooms whose set of nodes changed: their nodes must be linked anew.
    pub(super) relink: HashSet<RoomId>,
}

/// The nodes carrying a room, its home node (where it was placed) first,
/// each with the sessions placed there.
#[derive(Debug, Clone, Default)]
pub(super) struct Placed {
    pub(super) nodes: Vec<(usize, usize)>,
}

impl Placed {
    pub(super) fn home(&self) -> Option<usize> {
        self.nodes.first().map(|(n, _)| *n)
    }
}

#[derive(Debug, Default)]
pub(super) struct NodeState {
    pub(super) up: bool,
    /// When it was first seen not answering (while it still counts as up).
    pub(super) silent_since: Option<Instant>,
    /// Participants it reported; datagrams per second; CPU as a share of
    /// its workers' cores.
    pub(super) reported: u64,
    pub(super) packets_per_second: f64,
    pub(super) cpu: f64,
    /// The last health sample rates were taken from.
    pub(super) sample: Option<(Instant, u64, u64)>,
    /// Sessions placed from here.
    pub(super) placed: usize,
    /// Rooms placed from here.
    pub(super) rooms: usize,
    /// Sessions reported lost while it was down, to close if it returns.
    pub(super) orphans: Vec<ParticipantId>,
}

impl NodeState {
    pub(super) fn load(&self, spec: &NodeSpec) -> f64 {
        let participants = self.reported.max(self.placed as u64);
        #[allow(clippy::cast_precision_loss)]
        let by_participants = participants as f64 / spec.max_participants.max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let by_packets = self.packets_per_second / spec.max_packets_per_second.max(1) as f64;
        by_participants.max(by_packets).max(self.cpu)
    }
}

impl State {
    /// Adds `node` to the nodes carrying `room` (placing the room).
    pub(super) fn add_node(&mut self, room: &RoomId, node: usize) {
        let placed = self.rooms.entry(room.clone()).or_default();
        if !placed.nodes.iter().any(|(n, _)| *n == node) {
            placed.nodes.push((node, 0));
            self.nodes[node].rooms += 1;
            if placed.nodes.len() > 1 {
                self.relink.insert(room.clone());
            }
        }
    }

    /// Drops the nodes of `room` that carry no session any more (the next
    /// one becomes home); forgets the room when none does (its next
    /// session is placed anew).
    pub(super) fn prune(&mut self, room: &RoomId) {
        let Some(placed) = self.rooms.get_mut(room) else {
            return;
        };
        let before = placed.nodes.len();
        let mut dropped = Vec::new();
        placed.nodes.retain(|(n, sessions)| {
            if *sessions == 0 {
                dropped.push(*n);
            }
            *sessions > 0
        });
        let empty = placed.nodes.is_empty();
        let changed = placed.nodes.len() != before;
        for n in dropped {
            self.nodes[n].rooms = self.nodes[n].rooms.saturating_sub(1);
        }
        if empty {
            self.rooms.remove(room);
        } else if changed {
            self.relink.insert(room.clone());
        }
    }

    /// Counts a new session of `room` on `node`.
    pub(super) fn add_session(&mut self, participant: ParticipantId, room: &RoomId, node: usize) {
        self.participants.insert(participant, (node, room.clone()));
        self.nodes[node].placed += 1;
        self.add_node(room, node);
        if let Some(entry) = self
            .rooms
            .get_mut(room)
            .and_then(|p| p.nodes.iter_mut().find(|(n, _)| *n == node))
        {
            entry.1 += 1;
        }
    }

    /// Forgets a participant (gone from its node); whether it was known.
    pub(super) fn forget(&mut self, participant: ParticipantId) -> bool {
        let Some((node, room)) = self.participants.remove(&participant) else {
            return false;
        };
        self.nodes[node].placed = self.nodes[node].placed.saturating_sub(1);
        if let Some(entry) = self
            .rooms
            .get_mut(&room)
            .and_then(|p| p.nodes.iter_mut().find(|(n, _)| *n == node))
        {
            entry.1 = entry.1.saturating_sub(1);
        }
        self.prune(&room);
        true
    }

    /// Forgets a room and its participants (closed); returns its nodes.
    pub(super) fn forget_room(&mut self, room: &RoomId) -> Vec<usize> {
        let gone: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, (_, r))| r == room)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.forget(*p);
        }
        let Some(placed) = self.rooms.remove(room) else {
            return Vec::new();
        };
        self.relink.remove(room);
        placed
            .nodes
            .iter()
            .map(|(n, _)| {
                self.nodes[*n].rooms = self.nodes[*n].rooms.saturating_sub(1);
                *n
            })
            .collect()
    }

    /// Forgets every session on a node that died; returns them.
    pub(super) fn fail_node(&mut self, node: usize) -> Vec<(RoomId, ParticipantId)> {
        let lost: Vec<(RoomId, ParticipantId)> = self
            .participants
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(p, (_, room))| (room.clone(), *p))
            .collect();
        for (_, p) in &lost {
            self.forget(*p);
        }
        // Rooms placed there without a session yet.
        let rooms: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, p)| p.nodes.iter().any(|(n, _)| *n == node))
            .map(|(r, _)| r.clone())
            .collect();
        for room in rooms {
            if let Some(placed) = self.rooms.get_mut(&room) {
                placed.nodes.retain(|(n, _)| *n != node);
                self.nodes[node].rooms = self.nodes[node].rooms.saturating_sub(1);
                if placed.nodes.is_empty() {
                    self.rooms.remove(&room);
                } else {
                    self.relink.insert(room);
                }
            }
        }
        lost
    }
}

/// Takes a node's rates from its counters, once [`RATE_WINDOW`] has passed
/// since the last sample.
pub(super) fn sample(node: &mut NodeState, health: &SfuHealth, now: Instant) {
    node.reported = health.workers.iter().map(|w| w.participants).sum();
    let datagrams: u64 = health.workers.iter().map(|w| w.ingress.datagrams).sum();
    match node.sample {
        Some((at, d0, c0)) if now.duration_since(at) >= RATE_WINDOW => {
            let secs = now.duration_since(at).as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            {
                node.packets_per_second = datagrams.saturating_sub(d0) as f64 / secs;
                let cores = health.workers.len().max(1) as f64;
                node.cpu = health.cpu_ms.saturating_sub(c0) as f64 / 1000.0 / secs / cores;
            }
            node.sample = Some((now, datagrams, health.cpu_ms));
        }
        Some(_) => {}
        None => node.sample = Some((now, datagrams, health.cpu_ms)),
    }
}
