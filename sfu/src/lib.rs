//! Confer's media plane: a selective forwarding unit.
//!
//! Work in progress. [`core`] holds the sans-IO building blocks: VP8
//! payload descriptor parsing and rewriting, sequence-number / timestamp /
//! picture-id rewriting across source switches, simulcast layer selection,
//! throttled keyframe requests and active-speaker detection. Each takes
//! packets and an `Instant` and returns decisions; none reads the clock.

pub mod core;
