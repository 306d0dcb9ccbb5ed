//! The engine's counters: of its ingress, and per participant and track.

use crate::core::simulcast::Layer;
use crate::ids::{ParticipantId, RoomId};

/// What became of the datagrams that reached one engine.
///
/// Every datagram is counted once in `datagrams`, and once more in one of
/// the drop counters if it was dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngressStats {
    /// Datagrams handed to the engine.
    pub datagrams: u64,
    /// Dropped: not STUN, DTLS, RTP or RTCP (RFC 7983 first byte), empty,
    /// or an unparseable STUN message.
    pub malformed: u64,
    /// Dropped: no participant owns the source address, and it is not a
    /// STUN binding request naming a participant's ICE ufrag (with a valid
    /// MESSAGE-INTEGRITY).
    pub unmatched: u64,
    /// Handed to a participant, whose `Rtc` refused it (a DTLS error); the
    /// participant is disconnected, as before.
    pub rejected: u64,
}

impl IngressStats {
    /// Every dropped datagram.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.malformed + self.unmatched + self.rejected
    }
}

/// Packet and byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// RTP packets.
    pub packets: u64,
    /// RTP payload bytes.
    pub bytes: u64,
}

/// Counters of one published track, per simulcast layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackStats {
    /// The publisher's mid of the track.
    pub mid: String,
    /// `audio` or `video`.
    pub kind: std::borrow::Cow<'static, str>,
    /// Received per layer (index 0 = q or the only layer).
    pub layers: [Counters; 3],
}

/// Counters of one participant.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParticipantStats {
    /// Room.
    pub room: RoomId,
    /// Who.
    pub participant: ParticipantId,
    /// Role.
    pub publishing: bool,
    /// Received from the peer.
    pub rx: Counters,
    /// Forwarded to the peer.
    pub tx: Counters,
    /// Packets dropped because the subscriber is on another layer.
    pub layer_drops: u64,
    /// Keyframe requests sent to this publisher.
    pub keyframe_requests: u64,
    /// Current layer of each video slot (subscribers).
    pub layers: Vec<Option<Layer>>,
    /// Latest loss fraction of what the peer sends us (0.0–1.0), from
    /// str0m's receive statistics.
    pub loss_in: Option<f32>,
    /// Latest loss fraction of what we send the peer, as its receiver
    /// reports say.
    pub loss_out: Option<f32>,
    /// NACKs received from the peer (retransmissions asked of us).
    pub nacks_in: u64,
    /// The tracks it publishes.
    pub tracks: Vec<TrackStats>,
}
