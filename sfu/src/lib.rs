//! Confer's media plane: a selective forwarding unit.
//!
//! Not built yet. The design (DESIGN.md, "Parts") is a sans-IO core —
//! rooms, tracks, RTP forwarding with sequence and timestamp rewriting,
//! simulcast layer selection, keyframe requests, active speaker — driven by
//! pinned worker threads that own the UDP sockets, one `str0m::Rtc` per
//! participant in RTP mode. This crate exists so that the workspace has its
//! final shape; it has no code yet.
