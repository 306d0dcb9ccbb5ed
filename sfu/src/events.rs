//! The SFU's event stream: every [`SfuEvent`] numbered, kept for a while,
//! and read from any number on.
//!
//! Workers push events into one [`EventLog`]; it gives each a number in
//! the whole stream (`seq`, from 1) and one in its room (`room_seq`, from
//! 1), and keeps the last [`EventLog::capacity`] of them. A reader is an
//! [`EventStream`] that starts after a number it names and yields every
//! later event in order: a reader that fell behind for a while catches up
//! from the log instead of losing events (as a broadcast channel would),
//! and a process that reads the stream from elsewhere (signalling talking
//! to a standalone SFU) can resume after a reconnect from the last number
//! it saw. Only a reader so far behind that the log no longer holds its
//! next event is told so, once, with how many it missed ([`Missed`]), and
//! goes on from the oldest event kept. Pushing never blocks a worker: the
//! log is a bounded queue under a short lock, and waking readers is a
//! notification.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::engine::SfuEvent;
use crate::ids::RoomId;

/// An event with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequenced {
    /// Its number in the whole stream (from 1, no gaps).
    pub seq: u64,
    /// Its number among its room's events (from 1, no gaps).
    pub room_seq: u64,
    /// The event.
    pub event: SfuEvent,
}

/// A reader fell so far behind that the log dropped events it had not
/// read: those numbered `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("SFU events {from} to {to} were dropped before they were read")]
pub struct Missed {
    /// The first event missed.
    pub from: u64,
    /// The last event missed.
    pub to: u64,
}

/// The numbered events of one SFU, the last [`EventLog::capacity`] kept.
#[derive(Debug)]
pub struct EventLog {
    kept: Mutex<Kept>,
    pushed: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Kept {
    /// The number the next event gets.
    next: u64,
    /// Per room: the number its next event gets, and the stream number of
    /// its last event. A room none of whose events is kept any more is
    /// forgotten, so that the map holds only rooms with kept events.
    rooms: HashMap<RoomId, (u64, u64)>,
    events: VecDeque<Sequenced>,
}

impl EventLog {
    /// An empty log keeping the last `capacity` events (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            kept: Mutex::new(Kept {
                next: 1,
                ..Kept::default()
            }),
            pushed: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    /// How many events the log keeps.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Numbers `event`, keeps it (dropping the oldest past capacity) and
    /// wakes the readers. A room's numbering is forgotten when the log no
    /// longer keeps any of its events (a room silent for a whole log's
    /// worth of events starts again at 1).
    pub fn push(&self, event: SfuEvent) {
        {
            // A panic while the lock was held left a consistent queue:
            // every change below is a single step.
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = kept.next;
            kept.next += 1;
            let room_seq = {
                let (next, last) = kept.rooms.entry(event.room().clone()).or_insert((1, 0));
                let n = *next;
                *next += 1;
                *last = seq;
                n
            };
            kept.events.push_back(Sequenced {
                seq,
                room_seq,
                event,
            });
            while kept.events.len() > self.capacity {
                let Some(dropped) = kept.events.pop_front() else {
                    break;
                };
                let room = dropped.event.room();
                if kept
                    .rooms
                    .get(room)
                    .is_some_and(|(_, last)| *last == dropped.seq)
                {
                    kept.rooms.remove(room);
                }
            }
        }
        self.pushed.notify_waiters();
    }

    /// The number of the last event pushed (0 before the first).
    #[must_use]
    pub fn last(&self) -> u64 {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.next - 1
    }

    /// Reads every event after number `after` as it comes (`0`: from the
    /// oldest kept; [`EventLog::last`]: from now on).
    #[must_use]
    pub fn read_after(self: &Arc<Self>, after: u64) -> EventStream {
        EventStream {
            source: Source::Log {
                log: self.clone(),
                after,
            },
        }
    }

    /// The events after `after` that are kept, at most `limit`; `Err`
    /// when some after it were dropped.
    fn after(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, Missed> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(oldest) = kept.events.front().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        if after + 1 < oldest {
            return Err(Missed {
                from: after + 1,
                to: oldest - 1,
            });
        }
        let skip = usize::try_from((after + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        Ok(kept.events.iter().skip(skip).take(limit).cloned().collect())
    }
}

/// A reader of an SFU's events: yields the events after the last one it
/// yielded, waiting for new ones. It reads this process's [`EventLog`], or
/// another [`EventSource`] (a standalone SFU's log over its control API).
#[derive(Debug)]
pub struct EventStream {
    source: Source,
}

#[derive(Debug)]
enum Source {
    Log { log: Arc<EventLog>, after: u64 },
    Other(Box<dyn EventSource>),
}

/// Where an [`EventStream`] reads events that are not in this process:
/// the same contract as [`EventStream::next`] and
/// [`EventStream::position`].
#[async_trait::async_trait]
pub trait EventSource: Send + std::fmt::Debug {
    /// The next events (at least one), in order, or what was missed.
    async fn next(&mut self) -> Result<Vec<Sequenced>, Missed>;
    /// The number of the last event yielded.
    fn position(&self) -> u64;
}

/// Events handed out per look at the log.
const READ_BATCH: usize = 256;

impl EventStream {
    /// A stream over another source.
    #[must_use]
    pub fn from_source(source: Box<dyn EventSource>) -> Self {
        Self {
            source: Source::Other(source),
        }
    }

    /// The next events (at least one), in order; `Err` once when the log
    /// dropped events this reader had not read (it goes on after them).
    ///
    /// # Errors
    /// [`Missed`]: the events this reader will never see.
    pub async fn next(&mut self) -> Result<Vec<Sequenced>, Missed> {
        let (log, after) = match &mut self.source {
            Source::Log { log, after } => (log, after),
            Source::Other(source) => return source.next().await,
        };
        loop {
            // Register for the next push before looking, so that a push
            // between the look and the wait is not slept through.
            let pushed = log.pushed.notified();
            match log.after(*after, READ_BATCH) {
                Err(missed) => {
                    *after = missed.to;
                    return Err(missed);
                }
                Ok(events) if !events.is_empty() => {
                    if let Some(last) = events.last() {
                        *after = last.seq;
                    }
                    return Ok(events);
                }
                Ok(_) => pushed.await,
            }
        }
    }

    /// The number of the last event this reader has yielded (where a new
    /// reader resumes from).
    #[must_use]
    pub fn position(&self) -> u64 {
        match &self.source {
            Source::Log { after, .. } => *after,
            Source::Other(source) => source.position(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ids::ParticipantId;

    fn connected(room: &str) -> SfuEvent {
        SfuEvent::Connected {
            room: RoomId::from(room),
            participant: ParticipantId(1),
        }
    }

    /// Numbers run through the stream and per room; a reader that starts
    /// late reads what is kept; one that fell too far behind is told what
    /// it missed once, then goes on.
    #[tokio::test]
    async fn readers_resume_from_any_number_and_learn_what_they_missed() {
        let log = EventLog::new(4);
        let mut early = log.read_after(0);
        log.push(connected("a"));
        log.push(connected("b"));
        log.push(connected("a"));
        let first = early.next().await.unwrap();
        let numbers: Vec<(u64, u64)> = first.iter().map(|e| (e.seq, e.room_seq)).collect();
        assert_eq!(numbers, [(1, 1), (2, 1), (3, 2)]);
        assert_eq!(early.position(), 3);

        let mut resumed = log.read_after(2);
        assert_eq!(resumed.next().await.unwrap()[0].seq, 3);

        for _ in 0..6 {
            log.push(connected("c"));
        }
        // 9 pushed, 4 kept (6..=9): `early` read up to 3, so 4 and 5 are gone.
        assert_eq!(early.next().await, Err(Missed { from: 4, to: 5 }));
        let rest: Vec<u64> = early.next().await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(rest, [6, 7, 8, 9]);
        assert_eq!(log.last(), 9);

        // A reader waiting for the next event gets it when it is pushed.
        let waiting = tokio::spawn(async move { early.next().await.unwrap()[0].seq });
        tokio::task::yield_now().await;
        log.push(connected("a"));
        assert_eq!(waiting.await.unwrap(), 10);
    }

    /// Rooms whose events all left the log are forgotten: the log's memory
    /// is bounded by its capacity however many rooms come and go, and a
    /// room still in it keeps counting.
    #[test]
    fn rooms_without_kept_events_are_forgotten() {
        let log = EventLog::new(8);
        for i in 0..10_000 {
            log.push(connected(&format!("room-{i}")));
            log.push(connected("busy"));
        }
        let kept = log.kept.lock().unwrap();
        assert!(kept.rooms.len() <= 8, "{} rooms numbered", kept.rooms.len());
        assert_eq!(kept.rooms[&RoomId::from("busy")].0, 10_001);
    }
}
