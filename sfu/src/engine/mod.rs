//! The sans-IO engine of one worker: rooms, participants (one
//! `str0m::Rtc` each, in RTP mode) and the forwarding between them.
//!
//! Time and datagrams go in (`handle_*`), datagrams to send, events and the
//! next deadline come out (`poll_*`). The engine owns no socket, thread or
//! channel and never reads the clock; the worker driver does all of that.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Vp8Patch};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::core::keyframe::KeyframeRequester;
use crate::core::rewrite::{StreamRewriter, Vp8Ids};
use crate::core::simulcast::{self, Decision, Layer, LayerSelector, LayerView, Preference};
use crate::core::speaker::SpeakerDetector;
use crate::core::vp8::Vp8Descriptor;
use crate::ids::{ParticipantId, RoomId};

mod forward;
mod relay;
mod sdp;
mod stats;

use relay::{Incoming, Link, relay_packet};
pub use relay::{NodeId, RelayIn, RelayOut, RelayedPacket, TrackInfo, TrackRef};

pub use stats::{Counters, IngressStats, ParticipantStats, TrackStats};

use sdp::{answer_mids, offers_transport_cc};
pub use sdp::{parse_offer, stun_local_ufrag};

/// How often layer targets, keyframe requests and stats are re-evaluated.
const TICK: Duration = Duration::from_millis(100);
/// A layer with no packet for this long is not active.
const LAYER_IDLE: Duration = Duration::from_millis(1000);

/// What a participant does with media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends media (WHIP).
    Publish,
    /// Receives media (WHEP).
    Subscribe,
}

/// Why a participant could not join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The SDP offer could not be parsed or negotiated.
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// The offer's directions do not fit the role.
    #[error("{0}")]
    WrongDirection(&'static str),
    /// No such participant (renegotiation).
    #[error("no such participant")]
    Unknown,
    /// A standalone SFU refused the offer, for the reason it gave.
    #[error("{0}")]
    Remote(String),
}

/// Something signalling should know.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SfuEvent {
    /// ICE and DTLS are up.
    Connected {
        /// Room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
    },
    /// The participant is gone (left, timed out, or failed).
    Disconnected {
        /// Room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
    },
    /// The participant's session was lost without the engine removing it:
    /// its worker thread died. Its room is no longer placed; a new
    /// session for it goes to a live worker.
    ParticipantLost {
        /// Room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LostReason,
    },
    /// The active speaker of a room changed.
    SpeakerChanged {
        /// Room.
        room: RoomId,
        /// The speaker now, if any.
        participant: Option<ParticipantId>,
    },
    /// No subscriber needs (or some subscriber again needs) a simulcast
    /// layer of a publisher's track: the publisher may pause it.
    LayerNeeded {
        /// Room.
        room: RoomId,
        /// Publisher.
        participant: ParticipantId,
        /// Its track (mid).
        mid: String,
        /// 0 = q, 1 = h, 2 = f.
        layer: Layer,
        /// Whether anyone needs it.
        needed: bool,
    },
    /// A subscriber's slot (one of its receive m-lines) now carries
    /// another track, or none.
    SlotChanged {
        /// Room.
        room: RoomId,
        /// The subscriber.
        participant: ParticipantId,
        /// The slot's mid in the subscriber's session.
        mid: String,
        /// The publisher and its mid, if the slot carries a track.
        source: Option<(ParticipantId, String)>,
    },
}

/// Why a participant was lost ([`SfuEvent::ParticipantLost`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LostReason {
    /// Its worker thread panicked or stopped on its own.
    WorkerFailed,
    /// The SFU node carrying it stopped answering (a node of a media
    /// cluster that died or was cut off).
    NodeFailed,
}

impl SfuEvent {
    /// The room the event is about.
    #[must_use]
    pub fn room(&self) -> &RoomId {
        match self {
            Self::Connected { room, .. }
            | Self::Disconnected { room, .. }
            | Self::ParticipantLost { room, .. }
            | Self::SpeakerChanged { room, .. }
            | Self::LayerNeeded { room, .. }
            | Self::SlotChanged { room, .. } => room,
        }
    }
}

impl LostReason {
    /// A stable name (`worker_failed`, `node_failed`), for logs and clients.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkerFailed => "worker_failed",
            Self::NodeFailed => "node_failed",
        }
    }
}

/// A key of a published track: publisher and its mid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TrackKey(ParticipantId, Mid);

#[derive(Debug, Clone, Copy, Default)]
struct LayerStats {
    received: Counters,
    last_packet: Option<Instant>,
    window_bytes: u64,
    bitrate_bps: u64,
    height: Option<u32>,
}

#[derive(Debug)]
struct Track {
    kind: MediaKind,
    index: u64,
    rids: [Option<Rid>; 3],
    layers: [LayerStats; 3],
    keyframes: [KeyframeRequester; 3],
    /// Per layer, whether anyone needs it (here or on a linked node).
    needed: [bool; 3],
    /// The node it is relayed from; `None` for a local publisher's.
    origin: Option<NodeId>,
    /// Its codec, from its first packet (a relayed track's from its
    /// announcement).
    params: Option<PayloadParams>,
}

#[derive(Debug)]
struct Slot {
    mid: Mid,
    kind: MediaKind,
    source: Option<TrackKey>,
    rewriter: StreamRewriter,
    selector: LayerSelector,
    /// The subscriber's payload type for (source track, source payload
    /// type), found once with `match_params` instead of on every packet.
    pt_map: Option<((u64, Pt), Pt)>,
    /// What the subscriber wants of this slot; the participant's
    /// preference when `None`.
    preference: Option<Preference>,
}

#[derive(Debug)]
struct Participant {
    room: RoomId,
    role: Role,
    /// The same client's other session in the room.
    linked: Option<ParticipantId>,
    rtc: Rtc,
    /// Our ICE ufrag in its session (the key of `Engine::ufrags`).
    ufrag: String,
    created: Instant,
    connected: bool,
    deadline: Instant,
    slots: Vec<Slot>,
    preference: Preference,
    estimate_bps: Option<u64>,
    rx: Counters,
    tx: Counters,
    layer_drops: u64,
    keyframe_requests: u64,
    loss_in: Option<f32>,
    loss_out: Option<f32>,
    nacks_in: u64,
}

impl Participant {
    /// Adds a send slot for every sending m-line of `answer` that has none,
    /// and lets the bandwidth estimator probe up to what every video slot
    /// at its full layer plus audio needs (1C's 2000 kbps per participant
    /// shown, with headroom). str0m paces at 1.1 × the estimate: a ceiling
    /// below what the slots carry queues video in the pacer (measured: a
    /// 2.5 Mbps ceiling for two 1.4 Mbps publishers gave a p99 of 57 ms).
    fn add_slots(&mut self, answer: &str) {
        self.add_slot_lines(answer);
        let video = self
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video)
            .count()
            .max(1) as u64;
        self.rtc.bwe().set_bitrate(
            str0m::bwe::Bitrate::kbps(100),
            str0m::bwe::Bitrate::kbps(2_500 * video),
        );
    }

    fn add_slot_lines(&mut self, answer: &str) {
        for (mid, kind) in answer_mids(answer) {
            let sending = self
                .rtc
                .media(mid)
                .is_some_and(|m| m.direction().is_sending());
            if sending && !self.slots.iter().any(|s| s.mid == mid) {
                self.slots.push(Slot {
                    mid,
                    kind,
                    source: None,
                    rewriter: StreamRewriter::new(if kind == MediaKind::Audio {
                        48_000
                    } else {
                        90_000
                    }),
                    selector: LayerSelector::default(),
                    pt_map: None,
                    preference: None,
                });
            }
        }
    }
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantId>,
    tracks: HashMap<TrackKey, Track>,
    speaker: SpeakerDetector<ParticipantId>,
    /// The other nodes carrying part of the room (the cascade).
    links: Vec<Link>,
}

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The worker's socket address (candidates, and destination of input).
    pub local: SocketAddr,
    /// Address announced in candidates (NAT); `local` when `None`.
    pub announced: Option<std::net::IpAddr>,
    /// Shortest time between two keyframe requests to one publisher layer.
    pub keyframe_min_interval: Duration,
    /// Drop participants that have not connected after this long.
    pub connect_timeout: Duration,
}

/// One worker's rooms and participants.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    participants: HashMap<ParticipantId, Participant>,
    /// Which participant last accepted a datagram from an address, so that
    /// media does not scan every participant.
    owners: HashMap<SocketAddr, ParticipantId>,
    /// Participants by our ICE ufrag in their session: a STUN binding
    /// request from an unknown address names its participant in USERNAME,
    /// so it is found in O(1) (and its MESSAGE-INTEGRITY checked once).
    ufrags: HashMap<String, ParticipantId>,
    ingress: IngressStats,
    rooms: HashMap<RoomId, Room>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    /// Messages for the other nodes of cascaded rooms.
    relay_out: VecDeque<RelayOut>,
    next_tick: Option<Instant>,
    next_track_index: u64,
    /// Reused list of a room's participants while forwarding (no
    /// allocation per packet).
    scratch: Vec<ParticipantId>,
    /// Reused list of the packets one drain of a participant yields.
    packet_scratch: Vec<RtpPacket>,
    /// Reused list of the participants whose timers are due.
    due_scratch: Vec<ParticipantId>,
}

impl Engine {
    /// An empty engine.
    #[must_use]
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            participants: HashMap::new(),
            owners: HashMap::new(),
            ufrags: HashMap::new(),
            ingress: IngressStats::default(),
            rooms: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            relay_out: VecDeque::new(),
            next_tick: None,
            next_track_index: 1,
            scratch: Vec::new(),
            packet_scratch: Vec::new(),
            due_scratch: Vec::new(),
        }
    }

    /// Adds a participant from an SDP offer and returns the SDP answer.
    ///
    /// # Errors
    /// [`JoinError`] when the offer is unusable.
    pub fn handle_join(
        &mut self,
        room: &RoomId,
        id: ParticipantId,
        role: Role,
        offer: &str,
        now: Instant,
    ) -> Result<String, JoinError> {
        let offer = parse_offer(offer)?;
        self.handle_join_linked(room, id, role, offer, None, now)
    }

    /// As [`Self::handle_join`], for a client that also has the session
    /// `linked` in the room (its publish session for a subscribe session,
    /// or the other way round): it is never sent its own tracks.
    ///
    /// The offer comes parsed ([`parse_offer`]): parsing is the caller's
    /// work, off the media thread.
    ///
    /// # Errors
    /// [`JoinError`] when the offer is unusable.
    pub fn handle_join_linked(
        &mut self,
        room: &RoomId,
        id: ParticipantId,
        role: Role,
        offer: SdpOffer,
        linked: Option<ParticipantId>,
        now: Instant,
    ) -> Result<String, JoinError> {
        // The bandwidth estimate (and the pacing at its rate) needs the
        // peer's transport-wide congestion feedback: a peer that does not
        // offer it would be held at the initial estimate for good, so it
        // gets no estimate, and the layers its preference asks for.
        let feedback = offers_transport_cc(&offer);
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_vp9(true)
            .enable_bwe(feedback.then(|| str0m::bwe::Bitrate::kbps(300)))
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let addr = SocketAddr::new(
            self.config.announced.unwrap_or(self.config.local.ip()),
            self.config.local.port(),
        );
        let candidate =
            Candidate::host(addr, "udp").map_err(|e| JoinError::BadOffer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        // Our ufrag is 16 random characters, so a collision is next to
        // impossible; still, two sessions must never share a key of
        // `ufrags` (one of them could never be found).
        while self
            .ufrags
            .contains_key(&rtc.direct_api().local_ice_credentials().ufrag)
        {
            rtc.direct_api()
                .set_local_ice_credentials(str0m::IceCreds::new());
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::BadOffer(e.to_string()))?;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let mut participant = Participant {
            room: room.clone(),
            role,
            linked,
            rtc,
            ufrag,
            created: now,
            connected: false,
            deadline: now,
            slots: Vec::new(),
            preference: Preference::default(),
            estimate_bps: None,
            rx: Counters::default(),
            tx: Counters::default(),
            layer_drops: 0,
            keyframe_requests: 0,
            loss_in: None,
            loss_out: None,
            nacks_in: 0,
        };
        if role == Role::Subscribe {
            // The offer's receive-only m-lines are our send slots.
            participant.add_slots(&answer.to_sdp_string());
            if participant.slots.is_empty() {
                return Err(JoinError::WrongDirection(
                    "a subscriber must offer at least one recvonly m-line",
                ));
            }
        }
        if let Some(old) = self.participants.remove(&id) {
            // A join with an id already here (the control plane refuses
            // these): the old session goes without a trace.
            self.ufrags.remove(&old.ufrag);
        }
        self.ufrags.insert(participant.ufrag.clone(), id);
        self.participants.insert(id, participant);
        self.rooms
            .entry(room.clone())
            .or_default()
            .participants
            .push(id);
        self.assign_sources(room);
        self.drain(id, now);
        self.next_tick.get_or_insert(now + TICK);
        Ok(answer.to_sdp_string())
    }

    /// Removes a participant.
    pub fn handle_leave(&mut self, id: ParticipantId) {
        self.remove(id);
    }

    /// Sets what a subscriber wants of its video.
    pub fn handle_preference(&mut self, id: ParticipantId, preference: Preference) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.preference = preference;
        }
    }

    /// Sets what a subscriber wants of one video slot (by its mid), e.g.
    /// spotlight for one and thumbnails for the rest.
    pub fn handle_slot_preference(&mut self, id: ParticipantId, mid: &str, preference: Preference) {
        if let Some(p) = self.participants.get_mut(&id)
            && let Some(slot) = p.slots.iter_mut().find(|s| &*s.mid == mid)
        {
            slot.preference = Some(preference);
        }
    }

    /// A new offer from a participant that is already in: a publisher adds
    /// a track (a screen share), a subscriber adds receive slots for more
    /// participants. ICE and DTLS stay as they are; returns the answer.
    ///
    /// # Errors
    /// [`JoinError::BadOffer`] when the offer cannot be applied (the
    /// session goes on as before); [`JoinError::Unknown`] for an unknown
    /// participant.
    pub fn handle_renegotiate(
        &mut self,
        id: ParticipantId,
        offer: &str,
        now: Instant,
    ) -> Result<String, JoinError> {
        let offer = parse_offer(offer)?;
        self.handle_renegotiate_offer(id, offer, now)
    }

    /// As [`Self::handle_renegotiate`] with an offer already parsed.
    ///
    /// # Errors
    /// As [`Self::handle_renegotiate`].
    pub fn handle_renegotiate_offer(
        &mut self,
        id: ParticipantId,
        offer: SdpOffer,
        now: Instant,
    ) -> Result<String, JoinError> {
        let p = self.participants.get_mut(&id).ok_or(JoinError::Unknown)?;
        let answer = p
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::BadOffer(e.to_string()))?;
        let answer = answer.to_sdp_string();
        // An offer with new ICE credentials restarts ICE: our ufrag changes.
        let ufrag = p.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != p.ufrag {
            let old = std::mem::replace(&mut p.ufrag, ufrag.clone());
            self.ufrags.remove(&old);
            self.ufrags.insert(ufrag, id);
        }
        if p.role == Role::Subscribe {
            p.add_slots(&answer);
        }
        let room = p.room.clone();
        self.drain(id, now);
        self.assign_sources(&room);
        Ok(answer)
    }

    /// Removes every participant of a room.
    pub fn handle_close_room(&mut self, room: &RoomId) {
        if let Some(r) = self.rooms.get(room) {
            for id in r.participants.clone() {
                self.remove(id);
            }
        }
        if let Some(r) = self.rooms.remove(room) {
            relay::withdraw_all(&mut self.relay_out, room, &r.links);
        }
    }

    /// A datagram arrived on the worker socket from `source`. Never panics,
    /// whatever `data` holds: a datagram no participant takes is counted
    /// ([`Self::ingress`]) and dropped.
    ///
    /// A known address goes to the participant that owns it (one map
    /// look-up). From an unknown address only a STUN binding request is
    /// taken, and only by the participant whose ICE ufrag its USERNAME
    /// names (one more look-up, one MESSAGE-INTEGRITY check); the address
    /// then belongs to that participant. ICE sends such a request from
    /// every address before media flows from it.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.ingress.datagrams += 1;
        let Ok(contents) = DatagramRecv::try_from(data) else {
            self.ingress.malformed += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.config.local,
                contents,
            },
        );
        let accepts = |id: &ParticipantId| {
            self.participants
                .get(id)
                .is_some_and(|p| p.rtc.accepts(&input))
        };
        let cached = self.owners.get(&source).copied().filter(accepts);
        let id = match cached {
            Some(id) => id,
            None => {
                let Some(id) = stun_local_ufrag(data)
                    .and_then(|ufrag| self.ufrags.get(ufrag))
                    .copied()
                    .filter(accepts)
                else {
                    self.ingress.unmatched += 1;
                    return;
                };
                self.owners.insert(source, id);
                id
            }
        };
        if let Some(p) = self.participants.get_mut(&id)
            && p.rtc.handle_input(input).is_err()
        {
            self.ingress.rejected += 1;
            p.rtc.disconnect();
        }
        self.drain(id, now);
    }

    /// What became of the datagrams so far.
    #[must_use]
    pub fn ingress(&self) -> IngressStats {
        self.ingress
    }

    /// Time passed: drives every participant's timers and the room tick.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due_scratch);
        due.clear();
        due.extend(
            self.participants
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id),
        );
        for &id in &due {
            if let Some(p) = self.participants.get_mut(&id)
                && p.rtc.handle_input(Input::Timeout(now)).is_err()
            {
                p.rtc.disconnect();
            }
            self.drain(id, now);
        }
        self.due_scratch = due;
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
            self.next_tick = if self.participants.is_empty() {
                None
            } else {
                Some(now + TICK)
            };
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for signalling.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.participants
            .values()
            .map(|p| p.deadline)
            .chain(self.next_tick)
            .min()
    }

    /// Counters of every participant.
    #[must_use]
    pub fn stats(&self) -> Vec<ParticipantStats> {
        let mut out: Vec<ParticipantStats> = self
            .participants
            .iter()
            .map(|(id, p)| ParticipantStats {
                room: p.room.clone(),
                participant: *id,
                publishing: p.role == Role::Publish,
                rx: p.rx,
                tx: p.tx,
                layer_drops: p.layer_drops,
                keyframe_requests: p.keyframe_requests,
                layers: p
                    .slots
                    .iter()
                    .filter(|s| s.kind == MediaKind::Video)
                    .map(|s| s.selector.current())
                    .collect(),
                loss_in: p.loss_in,
                loss_out: p.loss_out,
                nacks_in: p.nacks_in,
                tracks: self
                    .rooms
                    .get(&p.room)
                    .map(|room| {
                        let mut tracks: Vec<TrackStats> = room
                            .tracks
                            .iter()
                            .filter(|(k, _)| k.0 == *id)
                            .map(|(k, t)| TrackStats {
                                mid: k.1.to_string(),
                                kind: if t.kind == MediaKind::Audio {
                                    "audio".into()
                                } else {
                                    "video".into()
                                },
                                layers: t.layers.map(|l| l.received),
                            })
                            .collect();
                        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
                        tracks
                    })
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by_key(|s| s.participant);
        out
    }

    /// Number of participants.
    #[must_use]
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    fn remove(&mut self, id: ParticipantId) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        p.rtc.disconnect();
        self.owners.retain(|_, owner| *owner != id);
        self.ufrags.remove(&p.ufrag);
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|x| *x != id);
            room.tracks.retain(|k, _| k.0 != id);
            room.speaker.remove(id);
            if room.participants.is_empty()
                && let Some(room) = self.rooms.remove(&p.room)
            {
                relay::withdraw_all(&mut self.relay_out, &p.room, &room.links);
            }
        }
        self.events.push_back(SfuEvent::Disconnected {
            room: p.room.clone(),
            participant: id,
        });
        self.assign_sources(&p.room);
    }
}

#[cfg(test)]
mod tests;
