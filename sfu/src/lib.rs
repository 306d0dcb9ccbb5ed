//! Confer's media plane: a selective forwarding unit.
//!
//! # Model
//!
//! A **room** holds participants; each **participant** is one peer
//! connection with one `str0m::Rtc` in RTP mode (packets are forwarded
//! without depacketising). A publisher's m-lines are **tracks**; a
//! subscriber's receive-only m-lines are **slots**, each fed by one track
//! of the same kind at a time (the active speaker's first, otherwise the
//! oldest). Video tracks may carry three simulcast layers (rids q, h, f).
//!
//! # Run loop and time
//!
//! [`engine::Engine`] is sans-IO: datagrams and `Instant`s go in through
//! `handle_datagram`, `handle_timeout` and the `handle_*` commands;
//! datagrams, events and the next deadline come out through
//! `poll_transmit`, `poll_event` and `poll_timeout`. It never reads the
//! clock. Its pieces in [`core`] follow the same contract. A
//! [`worker`] thread drives one engine: wait for the socket or the
//! deadline, read the clock once, feed the engine, send what it outputs.
//!
//! # Threads
//!
//! One worker per core (configurable), pinned with `core_affinity`, each
//! with its own UDP socket and port. A room lives on one worker, so packets
//! never leave their thread; workers share nothing. Control crosses threads
//! only as commands on a bounded queue ([`worker`] documents the full-queue
//! policy), through [`control::SfuControl`]; back come events, the
//! participants the engine removed (so that placement forgets them), and a
//! few atomics per worker (alive, heartbeat, ingress counters) that
//! [`control::SfuControl::health`] reads without a round trip.
//!
//! # Other processes
//!
//! The same control drives an SFU in another process: the standalone
//! `sfu` serves it over HTTP (`/control…`, [`http`]) as serde types
//! ([`wire`]: commands, answers, pages of numbered events a reader resumes
//! from), and `remote::RemoteSfu` (feature `remote`) is the
//! [`control::SfuControl`] that speaks it, so signalling drives either
//! without knowing which. Several such SFUs make a media cluster:
//! [`nodes::SfuNodes`] places each room on the node with the most
//! headroom, notices a node that died and reports its sessions lost, and
//! is itself one more [`control::SfuControl`]. A room too big for one
//! node spans several: the nodes relay its tracks to each other over
//! QUIC ([`relay`]), each track once per node and only the layers that
//! node needs (the cascade; the engine's side is `engine::relay`).
//!
//! # Hostile input
//!
//! No datagram makes a worker panic: each is counted and either handed to
//! the one participant it belongs to (found in O(1) by address, or by the
//! ICE ufrag of a STUN request) or dropped ([`engine::IngressStats`]). A
//! worker that dies anyway is noticed and its participants reported lost
//! ([`control`] documents how).
//!
//! # Forwarding
//!
//! Each slot rewrites sequence numbers (starting at 1), timestamps and VP8
//! picture ids / TL0PICIDX so that the subscriber sees one continuous stream
//! across layer switches and source changes ([`core::rewrite`]). Layer
//! choice is a pure function of the layers arriving, the subscriber's
//! bandwidth estimate and preference ([`core::simulcast`]); switches happen
//! on keyframes only; keyframe requests to a publisher layer are throttled
//! ([`core::keyframe`]).

pub mod config;
pub mod control;
pub mod core;
pub mod engine;
pub mod events;
pub mod http;
pub mod ids;
pub mod nodes;
pub mod relay;
#[cfg(feature = "remote")]
pub mod remote;
pub mod serve;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod wire;
pub mod worker;

/// What crosses the boundary between signalling and the media plane, in
/// one place: the control trait, its errors and health, and the serde
/// types of its commands and answers ([`wire`]), its events (numbered and
/// resumable, [`events`]), roles, preferences and ids. Signalling's domain
/// uses nothing else of this crate; its server only chooses the
/// implementation (the SFU in-process, or a client of a standalone one).
pub mod api {
    pub use crate::control::{Joined, NodeReport, SfuControl, SfuError, SfuHealth, SfuStats};
    pub use crate::core::simulcast::Preference;
    pub use crate::engine::{LostReason, Role, SfuEvent};
    pub use crate::events::{EventSource, EventStream, Missed, Sequenced};
    pub use crate::ids::{ParticipantId, RoomId};
    pub use crate::wire::{ControlAnswer, ControlCommand, EventsPage};
}

pub use config::SfuConfig;
pub use control::{EmbeddedSfu, SfuControl, SfuError, SfuHealth};
pub use engine::{IngressStats, LostReason, Role, SfuEvent};
pub use ids::{ParticipantId, RoomId};
pub use worker::WorkerHealth;
