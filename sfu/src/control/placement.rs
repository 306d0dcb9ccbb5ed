//! Which worker carries each room and participant (see the parent
//! module's "Placement"): rooms go to the live worker with the fewest
//! participants; participants are forgotten when they leave, when their
//! join fails, when the engine drops them, and with their worker.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;

use crate::ids::{ParticipantId, RoomId};

/// A placed room: its worker and how many participants it has.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlacedRoom {
    pub(super) worker: usize,
    pub(super) participants: usize,
}

#[derive(Debug)]
pub(super) struct Placement {
    pub(super) rooms: HashMap<RoomId, PlacedRoom>,
    /// Every participant: its worker and room.
    pub(super) participants: HashMap<ParticipantId, (usize, RoomId)>,
    /// Participants per worker.
    pub(super) load: Vec<usize>,
    /// Workers whose thread ended.
    pub(super) dead: Vec<bool>,
    /// Participants the engines removed, with their worker.
    pub(super) gone: Receiver<(usize, ParticipantId)>,
}

impl Placement {
    /// The worker of `room`; a new room goes to the live worker with the
    /// fewest participants. `None` when every worker is dead.
    pub(super) fn place(&mut self, room: &RoomId) -> Option<usize> {
        if let Some(r) = self.rooms.get(room) {
            return Some(r.worker);
        }
        let i = self
            .load
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.dead[*i])
            .min_by_key(|(_, l)| **l)
            .map(|(i, _)| i)?;
        self.rooms.insert(
            room.clone(),
            PlacedRoom {
                worker: i,
                participants: 0,
            },
        );
        Some(i)
    }

    /// Counts a new participant of `room` (placed) on its worker.
    pub(super) fn add(&mut self, participant: ParticipantId, room: &RoomId, worker: usize) {
        self.load[worker] += 1;
        if let Some(r) = self.rooms.get_mut(room) {
            r.participants += 1;
        }
        self.participants
            .insert(participant, (worker, room.clone()));
    }

    /// Forgets a participant; its room too when it was the last one.
    pub(super) fn forget(&mut self, participant: ParticipantId) {
        let Some((worker, room)) = self.participants.remove(&participant) else {
            return;
        };
        if let Some(l) = self.load.get_mut(worker) {
            *l = l.saturating_sub(1);
        }
        if let Some(r) = self.rooms.get_mut(&room)
            && r.worker == worker
        {
            r.participants = r.participants.saturating_sub(1);
            if r.participants == 0 {
                self.rooms.remove(&room);
            }
        }
    }

    /// Forgets the participants the engines removed on their own.
    pub(super) fn apply_departures(&mut self) {
        while let Ok((worker, participant)) = self.gone.try_recv() {
            // Only if it is still the one on that worker: its id may have
            // been reused since.
            if self
                .participants
                .get(&participant)
                .is_some_and(|(w, _)| *w == worker)
            {
                self.forget(participant);
            }
        }
    }

    /// Marks worker `index` dead and forgets everything on it; returns
    /// its participants.
    pub(super) fn fail_worker(&mut self, index: usize) -> Vec<(ParticipantId, RoomId)> {
        if let Some(d) = self.dead.get_mut(index) {
            *d = true;
        }
        if let Some(l) = self.load.get_mut(index) {
            *l = 0;
        }
        self.rooms.retain(|_, r| r.worker != index);
        let lost: Vec<(ParticipantId, RoomId)> = self
            .participants
            .iter()
            .filter(|(_, (w, _))| *w == index)
            .map(|(p, (_, room))| (*p, room.clone()))
            .collect();
        for (p, _) in &lost {
            self.participants.remove(p);
        }
        lost
    }
}
