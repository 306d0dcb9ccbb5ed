//! The WebSocket protocol as Rust types, in one place: the frames a client
//! sends ([`client`]) and the JSON Schemas `docs/protocol.md` shows for
//! them, generated from these types ([`schema`]); a test fails when the
//! document and the types differ.

pub mod client;
pub mod schema;
pub mod server;

pub use client::{KNOWN_TYPES, Request};
pub use server::{Ack, Ephemeral, Event, Member, ServerFrame, ephemeral_frame, event_frame};
