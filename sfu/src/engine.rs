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
    /// The SFU node carrying it stopped answering (a media cluster's
    /// node that died or was cut off: [`crate::nodes`]).
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
    needed: [bool; 3],
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
        self.rooms.remove(room);
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
            if room.participants.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        self.events.push_back(SfuEvent::Disconnected {
            room: p.room.clone(),
            participant: id,
        });
        self.assign_sources(&p.room);
    }

    /// Polls one participant's `Rtc` until it only has a timeout left, and
    /// acts on what came out.
    fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut packets = std::mem::take(&mut self.packet_scratch);
        packets.clear();
        let mut gone = false;
        // Set when tracks or connections changed: slots may need sources.
        let mut reassign = false;
        {
            let Some(p) = self.participants.get_mut(&id) else {
                return;
            };
            loop {
                if !p.rtc.is_alive() {
                    gone = true;
                    break;
                }
                match p.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        p.deadline = at;
                        break;
                    }
                    Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                    Ok(Output::Event(event)) => match event {
                        Event::Connected => {
                            p.connected = true;
                            reassign = true;
                            self.events.push_back(SfuEvent::Connected {
                                room: p.room.clone(),
                                participant: id,
                            });
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            p.rtc.disconnect();
                        }
                        Event::RtpPacket(packet) => packets.push(packet),
                        Event::KeyframeRequest(req) => {
                            // A subscriber's decoder wants a keyframe: ask
                            // the publisher of what that slot carries.
                            if let Some(slot) = p.slots.iter().find(|s| s.mid == req.mid)
                                && let (Some(source), Some(layer)) =
                                    (slot.source, slot.selector.current())
                            {
                                packets_keyframe(&mut self.rooms, &p.room, source, layer, now);
                            }
                        }
                        Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc {
                            estimate,
                            ..
                        }) => {
                            p.estimate_bps = Some(estimate.as_u64());
                        }
                        Event::MediaChanged(changed) => {
                            // A renegotiation stopped an m-line (a screen
                            // share ended, a slot was given up): its track
                            // or slot goes.
                            match p.role {
                                Role::Publish if !changed.direction.is_receiving() => {
                                    if let Some(room) = self.rooms.get_mut(&p.room) {
                                        room.tracks.remove(&TrackKey(id, changed.mid));
                                    }
                                    reassign = true;
                                }
                                Role::Subscribe if !changed.direction.is_sending() => {
                                    p.slots.retain(|s| s.mid != changed.mid);
                                    reassign = true;
                                }
                                _ => {}
                            }
                        }
                        Event::MediaAdded(added)
                            if p.role == Role::Publish && added.direction.is_receiving() =>
                        {
                            let room = self.rooms.entry(p.room.clone()).or_default();
                            let mut rids = [None, None, None];
                            if let Some(sim) = &added.simulcast {
                                for (i, layer) in sim.recv.iter().enumerate() {
                                    let idx = layer_of_rid(&layer.rid).unwrap_or(i.min(2) as u8);
                                    rids[usize::from(idx)] = Some(layer.rid);
                                }
                            }
                            room.tracks.insert(
                                TrackKey(id, added.mid),
                                Track {
                                    kind: added.kind,
                                    index: self.next_track_index,
                                    rids,
                                    layers: [LayerStats::default(); 3],
                                    keyframes: [KeyframeRequester::new(
                                        self.config.keyframe_min_interval,
                                    ); 3],
                                    needed: [true; 3],
                                },
                            );
                            self.next_track_index += 1;
                            reassign = true;
                        }
                        _ => {}
                    },
                    Err(_) => {
                        p.rtc.disconnect();
                    }
                }
            }
            if !p.connected
                && now.saturating_duration_since(p.created) > self.config.connect_timeout
            {
                gone = true;
            }
        }
        if gone {
            self.packet_scratch = packets;
            self.remove(id);
            return;
        }
        let room = self.participants.get(&id).map(|p| p.room.clone());
        if let Some(room) = room {
            if reassign {
                self.assign_sources(&room);
            }
            for packet in packets.drain(..) {
                self.forward(id, &room, packet, now);
            }
        }
        self.packet_scratch = packets;
    }

    /// Forwards one packet of publisher `from` to every subscriber slot
    /// fed by its track.
    fn forward(&mut self, from: ParticipantId, room_id: &RoomId, packet: RtpPacket, now: Instant) {
        let Some(publisher) = self.participants.get_mut(&from) else {
            return;
        };
        publisher.rx.packets += 1;
        publisher.rx.bytes += packet.payload.len() as u64;
        let Some((mid, rid)) = publisher
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|rx| (rx.mid(), rx.rid()))
        else {
            return;
        };
        let Some(params) = publisher
            .rtc
            .codec_config()
            .find(|p| p.pt() == packet.header.payload_type)
            .copied()
        else {
            return;
        };
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let key = TrackKey(from, mid);
        let Some(track) = room.tracks.get_mut(&key) else {
            return;
        };
        let layer = rid
            .and_then(|r| {
                track
                    .rids
                    .iter()
                    .position(|x| *x == Some(r))
                    .map(|i| i as u8)
            })
            .unwrap_or(0);
        let stats = &mut track.layers[usize::from(layer)];
        stats.last_packet = Some(now);
        stats.window_bytes += packet.payload.len() as u64;
        stats.received.packets += 1;
        stats.received.bytes += packet.payload.len() as u64;

        let is_vp8 = params.spec().codec == str0m::format::Codec::Vp8;
        let descriptor = if is_vp8 {
            Vp8Descriptor::parse(&packet.payload).ok()
        } else {
            None
        };
        // str0m's reading of the same descriptor, from which the patch of
        // each subscriber's ids is built.
        let wire_descriptor = descriptor
            .as_ref()
            .and_then(|_| str0m::rtp::Vp8Descriptor::parse(&packet.payload).ok());
        let keyframe = descriptor.is_some_and(|d| d.start_of_frame && d.keyframe)
            || (!is_vp8 && track.kind == MediaKind::Video && is_keyframe(&params, &packet.payload));
        if keyframe {
            track.keyframes[usize::from(layer)].handle_keyframe();
            if let Some(d) = descriptor
                && let Some(h) = vp8_keyframe_height(&packet.payload[d.len..])
            {
                stats.height = Some(h);
            }
        }
        if track.kind == MediaKind::Audio
            && let Some(level) = packet.header.ext_vals.audio_level
        {
            room.speaker.handle_level(from, level.saturating_neg(), now);
        }
        let source_key = (track.index, layer);
        let track_kind = track.kind;
        let mut subscribers = std::mem::take(&mut self.scratch);
        subscribers.clear();
        subscribers.extend_from_slice(&room.participants);
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut need_keyframe = false;
        for &sid in &subscribers {
            if sid == from {
                continue;
            }
            let Some(sub) = self.participants.get_mut(&sid) else {
                continue;
            };
            if !sub.connected {
                continue;
            }
            let Some(slot) = sub.slots.iter_mut().find(|s| s.source == Some(key)) else {
                continue;
            };
            if track_kind == MediaKind::Video {
                match slot.selector.handle_packet(layer, keyframe) {
                    Decision::Drop => {
                        sub.layer_drops += 1;
                        need_keyframe |= slot.selector.wants_keyframe() == Some(layer);
                        continue;
                    }
                    Decision::Forward | Decision::Switch { .. } => {}
                }
            }
            let Some(rewritten) = slot.rewriter.rewrite(
                source_key,
                *packet.seq_no,
                packet.header.timestamp,
                now,
                descriptor.as_ref(),
            ) else {
                continue;
            };
            let source_pt = (source_key.0, params.pt());
            let pt = match slot.pt_map {
                Some((key, pt)) if key == source_pt => pt,
                _ => {
                    let Some(pt) = sub
                        .rtc
                        .codec_config()
                        .match_params(params)
                        .map(PayloadParams::pt)
                    else {
                        continue;
                    };
                    slot.pt_map = Some((source_pt, pt));
                    pt
                }
            };
            let slot_mid = slot.mid;
            let mut api = sub.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(slot_mid, None) else {
                continue;
            };
            let len = packet.payload.len() as u64;
            // The payload is shared by every subscriber (a reference count,
            // no copy), and a VP8 descriptor's new ids are written by str0m
            // as it serialises the packet. A descriptor str0m does not
            // accept (L without T, which RFC 7741 forbids) is rewritten in
            // a copy instead.
            let mut payload = packet.payload.clone();
            let mut patch = None;
            if let (Some(ids), Some(d)) = (rewritten.vp8, descriptor.as_ref()) {
                match wire_descriptor.as_ref() {
                    Some(wire) => patch = vp8_patch(wire, ids),
                    None => {
                        let mut copy = payload.to_vec();
                        d.rewrite(
                            &mut copy,
                            ids.picture_id.unwrap_or(0),
                            ids.tl0picidx.unwrap_or(0),
                        );
                        payload = copy.into();
                    }
                }
            }
            let mut write = RtpWrite::new(
                pt,
                SeqNo::from(rewritten.seq),
                rewritten.timestamp,
                packet.timestamp,
                payload,
            )
            .marker(packet.header.marker)
            .nackable(track_kind == MediaKind::Video)
            .ext_vals(ext.clone());
            if let Some(patch) = patch {
                write = write.vp8_patch(patch);
            }
            tx.write_rtp(write);
            sub.tx.packets += 1;
            sub.tx.bytes += len;
            self.drain_transmits(sid);
        }
        self.scratch = subscribers;
        if need_keyframe {
            packets_keyframe(&mut self.rooms, room_id, key, layer, now);
        }
    }

    /// Drains an `Rtc` after a write; events cannot arise from a write
    /// except transmits and its next timeout.
    fn drain_transmits(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    p.deadline = at;
                    break;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    p.rtc.disconnect();
                    break;
                }
            }
        }
    }

    /// Gives each subscriber's slots distinct tracks of their kind from the
    /// other participants: with N slots of a kind, the N most wanted tracks
    /// (the active speaker's first, then in order of publication). A slot
    /// keeps its track while that track stays wanted, so that pictures do
    /// not jump around; a slot whose track changes is reported as
    /// [`SfuEvent::SlotChanged`].
    fn assign_sources(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let speaker = room.speaker.current();
        let mut tracks: Vec<(TrackKey, MediaKind, u64)> = room
            .tracks
            .iter()
            .map(|(k, t)| (*k, t.kind, t.index))
            .collect();
        tracks.sort_by_key(|(k, _, index)| (Some(k.0) != speaker, *index));
        // Sessions of one client, both ways.
        let links: Vec<(ParticipantId, ParticipantId)> = room
            .participants
            .iter()
            .filter_map(|id| {
                let linked = self.participants.get(id)?.linked?;
                Some((*id, linked))
            })
            .collect();
        let own = |subscriber: ParticipantId, owner: ParticipantId| {
            owner == subscriber
                || links.contains(&(subscriber, owner))
                || links.contains(&(owner, subscriber))
        };
        for id in room.participants.clone() {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let count = p.slots.iter().filter(|s| s.kind == kind).count();
                let wanted: Vec<TrackKey> = tracks
                    .iter()
                    .filter(|(k, k_kind, _)| *k_kind == kind && !own(id, k.0))
                    .map(|(k, _, _)| *k)
                    .take(count)
                    .collect();
                let kept: Vec<TrackKey> = p
                    .slots
                    .iter()
                    .filter(|s| s.kind == kind)
                    .filter_map(|s| s.source.filter(|src| wanted.contains(src)))
                    .collect();
                let mut free = wanted.iter().filter(|k| !kept.contains(k));
                for slot in p.slots.iter_mut().filter(|s| s.kind == kind) {
                    if slot.source.is_some_and(|src| wanted.contains(&src)) {
                        continue;
                    }
                    let next = free.next().copied();
                    if slot.source != next {
                        slot.source = next;
                        slot.selector = LayerSelector::default();
                        self.events.push_back(SfuEvent::SlotChanged {
                            room: room_id.clone(),
                            participant: id,
                            mid: slot.mid.to_string(),
                            source: next.map(|k| (k.0, k.1.to_string())),
                        });
                    }
                }
            }
        }
    }

    /// Every [`TICK`]: bitrates, layer targets, keyframe requests, speaker.
    fn tick(&mut self, now: Instant) {
        let room_ids: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room_id in room_ids {
            let mut speaker_changed = false;
            if let Some(room) = self.rooms.get_mut(&room_id) {
                for track in room.tracks.values_mut() {
                    for l in &mut track.layers {
                        // Exponential average of the per-tick byte count.
                        let bps = l.window_bytes * 8 * 1000 / TICK.as_millis() as u64;
                        l.bitrate_bps = (l.bitrate_bps * 7 + bps) / 8;
                        l.window_bytes = 0;
                    }
                }
                room.speaker.handle_timeout(now);
                if let Some(change) = room.speaker.poll_change() {
                    speaker_changed = true;
                    self.events.push_back(SfuEvent::SpeakerChanged {
                        room: room_id.clone(),
                        participant: change,
                    });
                }
            }
            if speaker_changed {
                self.assign_sources(&room_id);
            }
            self.update_layers(&room_id, now);
        }
        let late: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                !p.connected
                    && now.saturating_duration_since(p.created) > self.config.connect_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.remove(id);
        }
    }

    fn update_layers(&mut self, room_id: &RoomId, now: Instant) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let mut needed: HashMap<TrackKey, [bool; 3]> = HashMap::new();
        for id in &room.participants {
            let Some(p) = self.participants.get_mut(id) else {
                continue;
            };
            for slot in p.slots.iter_mut().filter(|s| s.kind == MediaKind::Video) {
                let Some(source) = slot.source else {
                    continue;
                };
                let Some(track) = room.tracks.get_mut(&source) else {
                    continue;
                };
                let mut views: Vec<LayerView> = (0..3u8)
                    .filter(|l| track.rids[usize::from(*l)].is_some() || *l == 0)
                    .map(|l| {
                        let s = track.layers[usize::from(l)];
                        LayerView {
                            layer: l,
                            active: s
                                .last_packet
                                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
                            bitrate_bps: s.bitrate_bps,
                            height: s.height,
                        }
                    })
                    .collect();
                let preference = slot.preference.unwrap_or(p.preference);
                let target = simulcast::choose_layer(&views, p.estimate_bps, preference);
                slot.selector.set_target(target);
                let entry = needed.entry(source).or_default();
                if let Some(t) = target {
                    entry[usize::from(t)] = true;
                }
                // What the subscriber asks for, bandwidth aside, among the
                // layers the publisher announced — also those it paused
                // because nobody needed them: otherwise a paused layer
                // could never be chosen, so never needed again.
                for v in &mut views {
                    v.active = true;
                }
                if let Some(wanted) = simulcast::choose_layer(&views, None, preference) {
                    entry[usize::from(wanted)] = true;
                }
                if let Some(c) = slot.selector.current() {
                    entry[usize::from(c)] = true;
                }
                if p.connected
                    && let Some(wanted) = slot.selector.wants_keyframe()
                {
                    track.keyframes[usize::from(wanted)].handle_request(now);
                }
            }
        }
        let mut requests = Vec::new();
        for (key, track) in &mut room.tracks {
            if track.kind != MediaKind::Video {
                continue;
            }
            let need = needed.get(key).copied().unwrap_or_default();
            #[allow(clippy::needless_range_loop)] // l indexes three parallel arrays
            for l in 0..3 {
                if track.keyframes[l].poll_request(now) {
                    requests.push((*key, track.rids[l]));
                }
                if track.rids[l].is_some() && need[l] != track.needed[l] {
                    track.needed[l] = need[l];
                    self.events.push_back(SfuEvent::LayerNeeded {
                        room: room_id.clone(),
                        participant: key.0,
                        mid: key.1.to_string(),
                        layer: l as u8,
                        needed: need[l],
                    });
                }
            }
        }
        for (key, rid) in requests {
            if let Some(p) = self.participants.get_mut(&key.0) {
                let mut api = p.rtc.direct_api();
                if let Some(rx) = api.stream_rx_by_mid(key.1, rid) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    p.keyframe_requests += 1;
                }
            }
            self.drain(key.0, now);
        }
    }
}

/// Whether an offer negotiates transport-wide congestion control feedback
/// (the header extension the bandwidth estimate is built on).
fn offers_transport_cc(offer: &SdpOffer) -> bool {
    offer.to_string().contains("transport-wide-cc")
}

/// The patch that writes `ids` into a VP8 descriptor as str0m sends it;
/// `None` when the descriptor has no such fields (nothing to rewrite).
fn vp8_patch(descriptor: &str0m::rtp::Vp8Descriptor, ids: Vp8Ids) -> Option<Vp8Patch> {
    if ids.picture_id.is_none() && ids.tl0picidx.is_none() {
        return None;
    }
    let mut patch = descriptor.patch();
    if let Some(pid) = ids.picture_id {
        patch = patch.picture_id(pid);
    }
    if let Some(tl0) = ids.tl0picidx {
        patch = patch.tl0_pic_idx(tl0);
    }
    patch.build().ok()
}

/// Parses an SDP offer; the control plane does it before the offer
/// reaches a worker.
///
/// # Errors
/// [`JoinError::BadOffer`] when it is not an SDP offer str0m can read.
pub fn parse_offer(sdp: &str) -> Result<SdpOffer, JoinError> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| JoinError::BadOffer(e.to_string()))
}

/// The STUN magic cookie (RFC 8489 §5).
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute (RFC 8489 §14.3).
const STUN_USERNAME: u16 = 0x0006;

/// Our ufrag in a STUN message's USERNAME (`<receiver's ufrag>:<sender's
/// ufrag>`, RFC 8445 §7.2.2), read in place. `None` for anything that is
/// not a STUN message with such an attribute; never panics.
#[must_use]
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    // RFC 7983: STUN starts with 0 or 1 (what str0m classifies as STUN).
    if data.len() < 20 || data[0] > 1 || data[4..8] != STUN_MAGIC {
        return None;
    }
    let mut rest = &data[20..];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if typ == STUN_USERNAME {
            let (local, _) = std::str::from_utf8(value).ok()?.split_once(':')?;
            return Some(local);
        }
        // Values are padded to a multiple of four bytes.
        rest = rest.get((4 + len).next_multiple_of(4)..)?;
    }
    None
}

/// Marks a keyframe as wanted for a publisher layer (sent at the next tick,
/// throttled).
fn packets_keyframe(
    rooms: &mut HashMap<RoomId, Room>,
    room: &RoomId,
    source: TrackKey,
    layer: Layer,
    now: Instant,
) {
    if let Some(track) = rooms.get_mut(room).and_then(|r| r.tracks.get_mut(&source)) {
        track.keyframes[usize::from(layer.min(2))].handle_request(now);
    }
}

/// The layer index a conventional rid names.
fn layer_of_rid(rid: &Rid) -> Option<u8> {
    match &**rid {
        "q" | "l" | "low" => Some(0),
        "h" | "m" | "mid" => Some(1),
        "f" | "high" => Some(2),
        _ => None,
    }
}

/// Keyframe detection for codecs passed through without rewriting.
fn is_keyframe(params: &PayloadParams, payload: &[u8]) -> bool {
    match params.spec().codec {
        str0m::format::Codec::H264 => str0m::format::detect_h264_keyframe(payload),
        str0m::format::Codec::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        _ => false,
    }
}

/// Height from a VP8 keyframe header (RFC 6386 §9.1): 3-byte frame tag,
/// start code 9d 01 2a, then 14-bit width and height.
fn vp8_keyframe_height(frame: &[u8]) -> Option<u32> {
    if frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff))
}

/// `(mid, kind)` of every m-line of an SDP, in order.
fn answer_mids(sdp: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            kind = if rest.starts_with("audio") {
                Some(MediaKind::Audio)
            } else if rest.starts_with("video") {
                Some(MediaKind::Video)
            } else {
                None
            };
        } else if let Some(mid) = line.strip_prefix("a=mid:")
            && let Some(k) = kind
        {
            out.push((Mid::from(mid.trim()), k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{MemNet, offer_subscribe, peer_rtc};

    /// A STUN binding request with `attrs` after the header.
    fn stun(attrs: &[u8]) -> Vec<u8> {
        let len = u16::try_from(attrs.len()).unwrap();
        [
            &[0, 1][..],
            &len.to_be_bytes(),
            &STUN_MAGIC,
            &[7; 12],
            attrs,
        ]
        .concat()
    }

    #[test]
    fn the_local_ufrag_is_read_from_username() {
        // PRIORITY, then USERNAME "ab1:xyz" (7 bytes, padded to 8).
        let attrs = [
            &[0, 0x24, 0, 4, 1, 2, 3, 4][..],
            &[0, 6, 0, 7],
            b"ab1:xyz",
            &[0],
        ]
        .concat();
        assert_eq!(stun_local_ufrag(&stun(&attrs)), Some("ab1"));
        let no_colon = [&[0, 6, 0, 4][..], b"ab12"].concat();
        assert_eq!(stun_local_ufrag(&stun(&no_colon)), None);
        let past_the_end = [&[0, 6, 0, 9][..], b"ab1:xyz"].concat();
        assert_eq!(stun_local_ufrag(&stun(&past_the_end)), None);
        let not_utf8 = [&[0, 6, 0, 4][..], &[0xff, b':', 0xfe, 0x80]].concat();
        assert_eq!(stun_local_ufrag(&stun(&not_utf8)), None);
        let mut rtp = stun(&[&[0, 6, 0, 7][..], b"ab1:xyz", &[0]].concat());
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
        let mut no_magic = stun(&[&[0, 6, 0, 7][..], b"ab1:xyz", &[0]].concat());
        no_magic[4] = 0;
        assert_eq!(stun_local_ufrag(&no_magic), None);
        assert_eq!(stun_local_ufrag(&[]), None);
    }

    proptest! {
        #[test]
        fn reading_the_ufrag_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = stun_local_ufrag(&data);
        }

        #[test]
        fn any_datagram_is_counted_and_dropped(
            data in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let now = Instant::now();
            let mut net = MemNet::new(now);
            let room = RoomId::from("r");
            let id = ParticipantId(1);
            let mut rtc = peer_rtc("127.0.0.1:7000".parse().unwrap(), now);
            let (offer, _pending) = offer_subscribe(&mut rtc);
            net.engine.handle_join(&room, id, Role::Subscribe, &offer, now).unwrap();
            net.engine.handle_datagram(now, "127.0.0.1:9".parse().unwrap(), &data);
            let ingress = net.engine.ingress();
            prop_assert_eq!(ingress.datagrams, 1);
            prop_assert_eq!(ingress.dropped(), 1);
        }
    }

    /// Fuzz input for the datagram path: arbitrary bytes, bytes behind a
    /// first byte of each RFC 7983 class (STUN, DTLS, RTP/RTCP), and STUN
    /// headers (right magic) with arbitrary attributes.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1500),
            (
                prop_oneof![0u8..=3, 20u8..=63, 128u8..=191],
                proptest::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(first, rest)| [&[first][..], &rest].concat()),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(|attrs| stun(&attrs)),
        ]
    }

    /// One edit of an SDP offer's lines.
    #[derive(Clone, Debug)]
    enum SdpEdit {
        Delete(usize),
        Duplicate(usize),
        Replace(usize, String),
        Insert(usize, String),
        Truncate(usize, usize),
        Swap(usize, usize),
    }

    fn sdp_edit() -> impl Strategy<Value = SdpEdit> {
        let line = prop_oneof![
            "[a-z]=[ -~]{0,60}",
            "a=(rtpmap|fmtp|rid|simulcast|ssrc|mid|extmap|candidate|ice-ufrag|fingerprint|setup|group|msid|rtcp-fb):[ -~]{0,40}",
            "m=(audio|video|application) [0-9]{1,6} [A-Z/]{0,20}( [0-9]{1,4}){0,4}",
            ".{0,80}",
        ];
        prop_oneof![
            any::<usize>().prop_map(SdpEdit::Delete),
            any::<usize>().prop_map(SdpEdit::Duplicate),
            (any::<usize>(), line.clone()).prop_map(|(i, l)| SdpEdit::Replace(i, l)),
            (any::<usize>(), line).prop_map(|(i, l)| SdpEdit::Insert(i, l)),
            (any::<usize>(), any::<usize>()).prop_map(|(i, n)| SdpEdit::Truncate(i, n)),
            (any::<usize>(), any::<usize>()).prop_map(|(i, j)| SdpEdit::Swap(i, j)),
        ]
    }

    /// `offer` with `edits` applied to its lines.
    fn edited(offer: &str, edits: &[SdpEdit]) -> String {
        let mut lines: Vec<String> = offer.split("\r\n").map(str::to_owned).collect();
        for edit in edits {
            let n = lines.len().max(1);
            match edit.clone() {
                SdpEdit::Delete(i) if !lines.is_empty() => {
                    lines.remove(i % n);
                }
                SdpEdit::Duplicate(i) if !lines.is_empty() => {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                SdpEdit::Replace(i, l) if !lines.is_empty() => lines[i % n] = l,
                SdpEdit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l),
                SdpEdit::Truncate(i, k) if !lines.is_empty() => {
                    let l = &mut lines[i % n];
                    let cut = l.char_indices().map(|(at, _)| at).nth(k % (l.len() + 1));
                    if let Some(cut) = cut {
                        l.truncate(cut);
                    }
                }
                SdpEdit::Swap(i, j) if !lines.is_empty() => lines.swap(i % n, j % n),
                _ => {}
            }
        }
        lines.join("\r\n")
    }

    /// A join with `offer`, as publisher and as subscriber, into an engine
    /// that already has a participant: answered or refused with a
    /// [`JoinError`], never a panic; a refused join leaves no participant.
    fn join_never_panics(offer: &str) -> Result<(), TestCaseError> {
        let now = Instant::now();
        let mut net = MemNet::new(now);
        let room = RoomId::from("r");
        let _first = net.add_subscriber(&room);
        for (id, role) in [
            (ParticipantId(1), Role::Publish),
            (ParticipantId(2), Role::Subscribe),
        ] {
            let before = net.engine.participants.len();
            match net.engine.handle_join(&room, id, role, offer, now) {
                Ok(answer) => prop_assert!(answer.starts_with("v=0")),
                Err(JoinError::BadOffer(_) | JoinError::WrongDirection(_)) => {
                    prop_assert_eq!(net.engine.participants.len(), before);
                }
                Err(e) => prop_assert!(false, "unexpected join error {e}"),
            }
        }
        net.engine.handle_timeout(now + Duration::from_millis(100));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(256)))]

        /// Fuzz target: with no participant at all, every datagram is
        /// counted and dropped.
        #[test]
        fn a_datagram_to_an_engine_without_participants_is_dropped(
            data in datagram(),
            port in any::<u16>(),
        ) {
            let now = Instant::now();
            let mut net = MemNet::new(now);
            net.engine.handle_datagram(now, SocketAddr::from(([10, 0, 0, 1], port)), &data);
            net.engine.handle_timeout(now + Duration::from_millis(100));
            let ingress = net.engine.ingress();
            prop_assert_eq!(ingress.datagrams, 1);
            prop_assert_eq!(ingress.dropped(), 1);
            prop_assert!(net.engine.poll_transmit().is_none());
        }

        /// Fuzz target: arbitrary text as an SDP offer.
        #[test]
        fn any_text_as_an_offer_is_answered_or_refused(
            offer in prop_oneof![
                ".{0,400}",
                "v=0\r\n([a-z]=[ -~]{0,50}\r\n){0,30}",
            ],
        ) {
            join_never_panics(&offer)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(48)))]

        /// Fuzz target: a real publish offer (simulcast) with lines
        /// deleted, duplicated, replaced, inserted, cut or swapped.
        #[test]
        fn a_mutated_offer_is_answered_or_refused(
            edits in proptest::collection::vec(sdp_edit(), 1..8),
            simulcast in any::<bool>(),
        ) {
            let mut rtc = peer_rtc("127.0.0.1:7000".parse().unwrap(), Instant::now());
            let (offer, _pending, _, _) = crate::testing::offer_publish(&mut rtc, simulcast);
            join_never_panics(&edited(&offer, &edits))?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(12)))]

        /// Fuzz target: datagrams from the addresses of connected
        /// participants (a publisher sending simulcast and a subscriber)
        /// reach their sessions' ICE/DTLS/SRTP; the engine counts each one
        /// and never panics, and goes on running afterwards.
        #[test]
        fn datagrams_from_connected_participants_never_panic(
            batch in proptest::collection::vec((any::<bool>(), datagram()), 1..24),
        ) {
            let mut net = MemNet::new(Instant::now());
            let room = RoomId::from("r");
            let publisher = net.add_publisher(&room, true, 15);
            let subscriber = net.add_subscriber(&room);
            net.run_for(Duration::from_millis(1500));
            prop_assert!(net.subscriber(subscriber).video_packets > 0);
            let before = net.engine.ingress().datagrams;
            for (to_publisher, data) in &batch {
                let from = net.peers[if *to_publisher { publisher } else { subscriber }].addr;
                net.engine.handle_datagram(net.now, from, data);
            }
            prop_assert_eq!(net.engine.ingress().datagrams, before + batch.len() as u64);
            net.run_for(Duration::from_millis(500));
        }
    }

    #[test]
    fn stun_from_an_unknown_address_finds_its_participant_by_ufrag() {
        let now = Instant::now();
        let mut net = MemNet::new(now);
        let room = RoomId::from("r");
        // Participants that never connect, each with its own ufrag.
        let mut idle = Vec::new();
        for i in 0..20u16 {
            let mut rtc = peer_rtc(SocketAddr::from(([127, 0, 0, 1], 7000 + i)), now);
            let (offer, _pending) = offer_subscribe(&mut rtc);
            let id = ParticipantId(100 + u64::from(i));
            let answer = net
                .engine
                .handle_join(&room, id, Role::Subscribe, &offer, now)
                .unwrap();
            idle.push((id, answer));
        }
        // The map has every participant under the ufrag of its answer.
        for (id, answer) in &idle {
            let ufrag = answer
                .lines()
                .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                .unwrap()
                .trim();
            assert_eq!(net.engine.ufrags.get(ufrag), Some(id));
        }
        // Real peers connect from addresses the engine has never seen: their
        // STUN requests are found by ufrag, and media flows.
        let _publisher = net.add_publisher(&room, false, 15);
        let subscriber = net.add_subscriber(&room);
        net.run_for(Duration::from_secs(3));
        assert!(net.subscriber(subscriber).video_packets > 20);
        assert_eq!(net.engine.ingress().unmatched, 0);
        assert_eq!(net.engine.ingress().malformed, 0);
        // A request naming nobody's ufrag is dropped without trying anyone.
        let nobody = stun(&[&[0, 6, 0, 8][..], b"nobody:x"].concat());
        net.engine
            .handle_datagram(net.now, "127.0.0.1:9".parse().unwrap(), &nobody);
        let ingress = net.engine.ingress();
        assert_eq!(ingress.unmatched + ingress.malformed, 1);
        // Leaving removes the ufrag.
        net.engine.handle_leave(idle[0].0);
        assert_eq!(net.engine.ufrags.len(), 22 - 1);
    }
}
