//! The sans-IO pieces of forwarding: pure state machines that take packets
//! and an `Instant` and return decisions, with no socket, thread or clock.

pub mod keyframe;
pub mod rewrite;
pub mod simulcast;
pub mod speaker;
pub mod vp8;
