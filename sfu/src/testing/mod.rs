//! Test support shared by the SFU's tests and benchmarks (not used by the
//! server itself): str0m peer behaviours — a publisher sending Opus-shaped
//! audio and three-layer simulcast VP8-shaped video, a subscriber that
//! checks every packet it receives — [`MemNet`], which connects such
//! peers to an [`Engine`] in memory, in virtual time, and [`serve_front`],
//! an SFU behind its HTTP front for the tests of other crates.
//!
//! Every payload ends with a 16-byte trailer — magic, layer, frame, packet
//! index, length and an FNV-1a checksum of everything between the VP8
//! descriptor and the trailer — so the subscriber can prove that what it
//! decrypted is exactly what the publisher encrypted (the SFU may rewrite
//! only the descriptor).

// Test support: a panic here is the failure of the test that uses it.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    missing_docs,
    missing_debug_implementations
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::vp8::{SYNTHETIC_DESCRIPTOR, Vp8Descriptor};

mod cluster;
mod servers;
use crate::engine::{Engine, EngineConfig, Role};
use crate::ids::{ParticipantId, RoomId};
pub use cluster::MemCluster;
pub use servers::{Standalone, serve_front};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub const MAGIC: [u8; 2] = [0xc0, 0xfe];
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Packets per frame and bytes per packet of each layer.
pub const LAYER_SHAPE: [(u8, usize); 3] = [(1, 300), (2, 600), (4, 900)];
/// Heights written into keyframe headers.
pub const LAYER_HEIGHT: [u16; 3] = [180, 360, 720];

pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Appends the integrity trailer over `body`.
pub fn seal(mut body: Vec<u8>, layer: u8, frame: u32, index: u8) -> Vec<u8> {
    let sum = fnv1a(&body);
    let len = body.len() as u32;
    body.extend_from_slice(&MAGIC);
    body.push(layer);
    body.extend_from_slice(&frame.to_be_bytes());
    body.push(index);
    body.extend_from_slice(&len.to_be_bytes()[2..]);
    body.extend_from_slice(&sum.to_be_bytes());
    body
}

/// Checks a trailer; returns (layer, frame, index).
pub fn open(data: &[u8]) -> Option<(u8, u32, u8)> {
    if data.len() < 14 {
        return None;
    }
    let (body, t) = data.split_at(data.len() - 14);
    if t[0..2] != MAGIC {
        return None;
    }
    let frame = u32::from_be_bytes([t[3], t[4], t[5], t[6]]);
    let len = u16::from_be_bytes([t[8], t[9]]) as usize;
    let sum = u32::from_be_bytes([t[10], t[11], t[12], t[13]]);
    (len == body.len() && fnv1a(body) == sum).then_some((t[2], frame, t[7]))
}

pub trait Behaviour: std::any::Any {
    fn on_event(&mut self, rtc: &mut Rtc, event: Event, now: Instant);
    /// Does due work; returns when it next has work.
    fn poll(&mut self, rtc: &mut Rtc, now: Instant) -> Option<Instant>;
    /// For reading a behaviour's results back.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// Sends audio every 20 ms and video frames at `fps` on every layer.
pub struct Publisher {
    pub audio: Mid,
    pub video: Mid,
    pub simulcast: bool,
    pub fps: u32,
    pub connected: bool,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    audio_seq: SeqNo,
    pub video_seq: [SeqNo; 3],
    /// The next frame's number (its picture id and TL0PICIDX).
    pub frame: u32,
    pub keyframe_wanted: [bool; 3],
    pub keyframe_requests: u32,
    pub packets_sent: u64,
    /// Written into every trailer (high nibble of the layer byte) so that
    /// subscribers can tell publishers apart.
    pub tag: u8,
    /// RFC 6464 level of the audio, -dBov (0 loudest, -127 silence).
    pub audio_level: i8,
    /// Layers not sent (as a browser does when told nobody needs them).
    pub paused: [bool; 3],
    queue: std::collections::VecDeque<(Mid, Option<Rid>, RtpWrite)>,
}

impl Publisher {
    pub fn new(audio: Mid, video: Mid, simulcast: bool, fps: u32) -> Self {
        Self {
            audio,
            video,
            simulcast,
            fps,
            connected: false,
            next_audio: None,
            next_video: None,
            audio_seq: SeqNo::from(1),
            video_seq: [SeqNo::from(1), SeqNo::from(40_000), SeqNo::from(65_000)],
            frame: 0,
            keyframe_wanted: [true; 3],
            keyframe_requests: 0,
            packets_sent: 0,
            tag: 0,
            audio_level: -25,
            paused: [false; 3],
            queue: std::collections::VecDeque::new(),
        }
    }

    fn send_audio(&mut self, rtc: &mut Rtc, now: Instant) {
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let n = *self.audio_seq;
        let payload = seal(vec![(n % 251) as u8; 80], self.tag << 4, n as u32, 0);
        let ext = ExtensionValues {
            audio_level: Some(self.audio_level),
            voice_activity: Some(true),
            ..Default::default()
        };
        let write = RtpWrite::new(
            pt,
            self.audio_seq.inc(),
            (n as u32).wrapping_mul(960),
            now,
            payload,
        )
        .ext_vals(ext);
        self.queue.push_back((self.audio, None, write));
    }

    fn send_video(&mut self, rtc: &mut Rtc, now: Instant) {
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        let frame = self.frame;
        self.frame += 1;
        let layers: &[u8] = if self.simulcast { &[0, 1, 2] } else { &[2] };
        for &layer in layers {
            let l = usize::from(layer);
            if self.paused[l] {
                continue;
            }
            let keyframe =
                std::mem::take(&mut self.keyframe_wanted[l]) || frame.is_multiple_of(150);
            let (packets, size) = LAYER_SHAPE[l];
            let ts = frame.wrapping_mul(90_000 / self.fps);
            for i in 0..packets {
                let start = i == 0;
                let mut body =
                    crate::core::vp8::synthetic_head(frame, start, keyframe, LAYER_HEIGHT[l]);
                body.resize(size, (frame % 200) as u8 ^ i);
                // The trailer covers what follows the descriptor.
                let sealed = {
                    let head = body[..SYNTHETIC_DESCRIPTOR].to_vec();
                    let mut out = head;
                    out.extend(seal(
                        body[SYNTHETIC_DESCRIPTOR..].to_vec(),
                        (self.tag << 4) | layer,
                        frame,
                        i,
                    ));
                    out
                };
                let rid = self.simulcast.then(|| Rid::from(RIDS[l]));
                let seq = self.video_seq[l].inc();
                let write = RtpWrite::new(pt, seq, ts, now, sealed)
                    .marker(i + 1 == packets)
                    .nackable(true);
                self.queue.push_back((self.video, rid, write));
            }
        }
    }
}

impl Behaviour for Publisher {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn on_event(&mut self, _rtc: &mut Rtc, event: Event, now: Instant) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.next_audio = Some(now);
                self.next_video = Some(now);
            }
            Event::KeyframeRequest(req) => {
                self.keyframe_requests += 1;
                let layer = req
                    .rid
                    .and_then(|r| RIDS.iter().position(|x| *x == &*r))
                    .unwrap_or(2);
                self.keyframe_wanted[layer] = true;
            }
            _ => {}
        }
    }

    fn poll(&mut self, rtc: &mut Rtc, now: Instant) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        if self.next_audio.is_some_and(|t| t <= now) {
            self.send_audio(rtc, now);
            self.next_audio = Some(now + Duration::from_millis(20));
        }
        if self.next_video.is_some_and(|t| t <= now) {
            self.send_video(rtc, now);
            self.next_video = Some(now + Duration::from_millis(1000 / u64::from(self.fps)));
        }
        // One write per call: the peer loop drains the Rtc in between.
        if let Some((mid, rid, write)) = self.queue.pop_front() {
            let mut api = rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, rid) {
                tx.write_rtp(write);
                self.packets_sent += 1;
            }
        }
        if !self.queue.is_empty() {
            return Some(now);
        }
        [self.next_audio, self.next_video]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Receives and checks everything.
#[derive(Default)]
pub struct Subscriber {
    pub connected: bool,
    pub audio_packets: u64,
    pub video_packets: u64,
    pub corrupt: u64,
    pub keyframes: u64,
    /// Video packets by layer (from the trailer).
    pub layers: BTreeMap<u8, u64>,
    /// Layer of the last video packet.
    pub last_layer: Option<u8>,
    /// Sequence numbers per kind, in arrival order.
    pub seqs: BTreeMap<&'static str, Vec<u64>>,
    pub video_mid: Option<Mid>,
    pub keyframe_asked: bool,
    /// (sequence number, layer, starts a keyframe) of every video packet.
    pub video_log: Vec<(u64, u8, bool)>,
    /// Publisher tag of the last audio and video packet.
    pub last_audio_tag: Option<u8>,
    pub last_video_tag: Option<u8>,
    /// Packets per (kind, publisher tag).
    pub by_tag: BTreeMap<(&'static str, u8), u64>,
    /// (sequence number, picture id, TL0PICIDX) of every video packet
    /// that starts a frame.
    pub frame_starts: Vec<(u64, u16, u8)>,
}

impl Subscriber {
    /// Layer changes, in sequence-number order (a lost and retransmitted
    /// packet arrives late but belongs where its number says), whose first
    /// packet does not start a keyframe.
    pub fn bad_switches(&self) -> usize {
        let mut log = self.video_log.clone();
        log.sort_unstable_by_key(|e| e.0);
        log.dedup_by_key(|e| e.0);
        log.windows(2)
            .filter(|w| w[0].1 != w[1].1 && !w[1].2)
            .count()
    }

    /// The largest step of picture id, and of TL0PICIDX, from one frame
    /// to the next in sequence-number order (1 for an unbroken stream; a
    /// lost frame makes 2). The SFU keeps both continuous across layer
    /// switches and source changes (every test frame is a TL0 frame).
    pub fn largest_picture_id_steps(&self) -> (u16, u8) {
        let mut starts = self.frame_starts.clone();
        starts.sort_unstable_by_key(|e| e.0);
        starts.dedup_by_key(|e| e.0);
        starts.windows(2).fold((0, 0), |(pid, tl0), w| {
            (
                pid.max(w[1].1.wrapping_sub(w[0].1) & 0x7fff),
                tl0.max(w[1].2.wrapping_sub(w[0].2)),
            )
        })
    }
}

impl Behaviour for Subscriber {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn on_event(&mut self, rtc: &mut Rtc, event: Event, _now: Instant) {
        match event {
            Event::Connected => self.connected = true,
            Event::RtpPacket(p) => {
                let mid = rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|rx| rx.mid());
                let Some(mid) = mid else { return };
                let kind = rtc.media(mid).map(|m| m.kind());
                match kind {
                    Some(MediaKind::Audio) => {
                        self.audio_packets += 1;
                        self.seqs.entry("audio").or_default().push(*p.seq_no);
                        match open(&p.payload) {
                            Some((tagged, _, _)) => {
                                self.last_audio_tag = Some(tagged >> 4);
                                *self.by_tag.entry(("audio", tagged >> 4)).or_default() += 1;
                            }
                            None => self.corrupt += 1,
                        }
                    }
                    Some(MediaKind::Video) => {
                        self.video_mid = Some(mid);
                        self.video_packets += 1;
                        self.seqs.entry("video").or_default().push(*p.seq_no);
                        let Ok(d) = Vp8Descriptor::parse(&p.payload) else {
                            self.corrupt += 1;
                            return;
                        };
                        if d.start_of_frame && d.keyframe {
                            self.keyframes += 1;
                        }
                        if d.start_of_frame
                            && let (Some((pid, _)), Some(tl0)) = (d.picture_id, d.tl0picidx)
                        {
                            self.frame_starts.push((*p.seq_no, pid, tl0));
                        }
                        match open(&p.payload[SYNTHETIC_DESCRIPTOR..]) {
                            Some((tagged, _, _)) => {
                                let layer = tagged & 0x0f;
                                self.last_video_tag = Some(tagged >> 4);
                                *self.by_tag.entry(("video", tagged >> 4)).or_default() += 1;
                                self.video_log.push((
                                    *p.seq_no,
                                    layer,
                                    d.start_of_frame && d.keyframe,
                                ));
                                *self.layers.entry(layer).or_default() += 1;
                                self.last_layer = Some(layer);
                            }
                            None => self.corrupt += 1,
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    fn poll(&mut self, rtc: &mut Rtc, _now: Instant) -> Option<Instant> {
        if self.keyframe_asked
            && let Some(mid) = self.video_mid
        {
            let mut api = rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.keyframe_asked = false;
            }
        }
        None
    }
}

/// Whether a list of sequence numbers has no gaps and no repeats once
/// sorted (loopback loses nothing).
pub fn contiguous(seqs: &[u64]) -> bool {
    let mut s = seqs.to_vec();
    s.sort_unstable();
    s.windows(2).all(|w| w[1] == w[0] + 1)
}

/// A full-ICE str0m peer in RTP mode with a host candidate at `addr`.
pub fn peer_rtc(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    rtc
}

/// An offer to publish audio and (simulcast) video: (offer, pending, audio mid, video mid).
pub fn offer_publish(rtc: &mut Rtc, simulcast: bool) -> (String, SdpPendingOffer, Mid, Mid) {
    let mut api = rtc.sdp_api();
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("s".into()),
        Some("a".into()),
        None,
    );
    let sim = simulcast.then(|| {
        let mut s = Simulcast::new();
        for rid in RIDS {
            s.add_send_layer(SimulcastLayer::new(rid));
        }
        s
    });
    let video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("s".into()),
        Some("v".into()),
        sim,
    );
    let (offer, pending) = api.apply().unwrap();
    (offer.to_sdp_string(), pending, audio, video)
}

/// An offer to receive one audio and one video stream.
pub fn offer_subscribe(rtc: &mut Rtc) -> (String, SdpPendingOffer) {
    offer_slots(rtc, 1, 1)
}

/// An offer adding `audio` audio and `video` video receive slots (a first
/// offer, or a renegotiation of a session that has some already).
pub fn offer_slots(rtc: &mut Rtc, audio: usize, video: usize) -> (String, SdpPendingOffer) {
    let mut api = rtc.sdp_api();
    for _ in 0..audio {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    for _ in 0..video {
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    }
    let (offer, pending) = api.apply().unwrap();
    (offer.to_sdp_string(), pending)
}

/// Cases a fuzz property runs: `PROPTEST_CASES` when set (what
/// `scripts/fuzz.sh` sets), else `default` — a few seconds in the normal
/// test run.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Applies the SFU's answer.
pub fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) {
    let answer = SdpAnswer::from_sdp_string(answer).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
}

/// One peer of a [`MemNet`].
pub struct MemPeer {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub behaviour: Box<dyn Behaviour>,
    pub id: ParticipantId,
    /// Downlink cap (SFU → peer) in bits per second; packets over it are
    /// dropped, as a congested bottleneck would.
    pub downlink_bps: Option<u64>,
    /// Share of SFU → peer datagrams lost, drawn from a seeded generator.
    pub downlink_loss: f64,
    rng: u64,
    budget_bits: f64,
    budget_at: Instant,
    deadline: Instant,
}

/// An [`Engine`] and str0m peers exchanging datagrams in memory, in
/// virtual time: time jumps to the next deadline, so ten seconds of media
/// run in a fraction of that.
pub struct MemNet {
    pub engine: Engine,
    pub engine_addr: SocketAddr,
    pub now: Instant,
    pub peers: Vec<MemPeer>,
    /// Wall-clock time spent inside the engine (benchmarks).
    pub engine_busy: Duration,
    next_port: u16,
}

impl MemNet {
    /// An empty network with an engine at 127.0.0.1:5000.
    pub fn new(now: Instant) -> Self {
        let engine_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let engine = Engine::new(EngineConfig {
            local: engine_addr,
            announced: None,
            keyframe_min_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
        });
        Self {
            engine,
            engine_addr,
            now,
            peers: Vec::new(),
            engine_busy: Duration::ZERO,
            next_port: 6000,
        }
    }

    /// Adds a publisher of audio and (simulcast) video at `fps`.
    pub fn add_publisher(&mut self, room: &RoomId, simulcast: bool, fps: u32) -> usize {
        let addr = self.next_addr();
        let mut rtc = peer_rtc(addr, self.now);
        let (offer, pending, audio, video) = offer_publish(&mut rtc, simulcast);
        let id = ParticipantId(u64::from(addr.port()));
        let answer = self
            .engine
            .handle_join(room, id, Role::Publish, &offer, self.now)
            .unwrap();
        accept_answer(&mut rtc, pending, &answer);
        self.push(
            rtc,
            addr,
            id,
            Box::new(Publisher::new(audio, video, simulcast, fps)),
        )
    }

    /// Adds a subscriber of one audio and one video stream.
    pub fn add_subscriber(&mut self, room: &RoomId) -> usize {
        self.add_subscriber_with(room, 1, 1)
    }

    /// Adds more receive slots to subscriber `i` by renegotiating its
    /// session.
    pub fn add_slots(&mut self, i: usize, audio: usize, video: usize) {
        let peer = &mut self.peers[i];
        let (offer, pending) = offer_slots(&mut peer.rtc, audio, video);
        let answer = self
            .engine
            .handle_renegotiate(peer.id, &offer, self.now)
            .unwrap();
        accept_answer(&mut peer.rtc, pending, &answer);
    }

    /// Adds a subscriber with `audio` and `video` receive slots.
    pub fn add_subscriber_with(&mut self, room: &RoomId, audio: usize, video: usize) -> usize {
        let addr = self.next_addr();
        let mut rtc = peer_rtc(addr, self.now);
        let (offer, pending) = offer_slots(&mut rtc, audio, video);
        let id = ParticipantId(u64::from(addr.port()));
        let answer = self
            .engine
            .handle_join(room, id, Role::Subscribe, &offer, self.now)
            .unwrap();
        accept_answer(&mut rtc, pending, &answer);
        self.push(rtc, addr, id, Box::new(Subscriber::default()))
    }

    fn next_addr(&mut self) -> SocketAddr {
        self.next_port += 1;
        SocketAddr::from(([127, 0, 0, 1], self.next_port))
    }

    fn push(
        &mut self,
        rtc: Rtc,
        addr: SocketAddr,
        id: ParticipantId,
        behaviour: Box<dyn Behaviour>,
    ) -> usize {
        self.peers.push(MemPeer {
            rtc,
            addr,
            behaviour,
            id,
            downlink_bps: None,
            downlink_loss: 0.0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(addr.port()),
            budget_bits: 0.0,
            budget_at: self.now,
            deadline: self.now,
        });
        self.peers.len() - 1
    }

    /// The subscriber behaviour of peer `i`.
    pub fn subscriber(&mut self, i: usize) -> &mut Subscriber {
        self.peers[i]
            .behaviour
            .as_any()
            .downcast_mut::<Subscriber>()
            .unwrap()
    }

    /// The publisher behaviour of peer `i`.
    pub fn publisher(&mut self, i: usize) -> &mut Publisher {
        self.peers[i]
            .behaviour
            .as_any()
            .downcast_mut::<Publisher>()
            .unwrap()
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            self.step();
            let next = self.next_deadline().unwrap_or(until).min(until);
            // Always move on by at least a millisecond.
            self.now = next.max(self.now + Duration::from_millis(1));
        }
    }

    /// When a peer or the engine next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .map(|p| p.deadline)
            .chain(self.engine.poll_timeout())
            .min()
    }

    /// Gives its peers ports (and so participant ids) from `port` on, so
    /// that two networks of one [`MemCluster`] never share an id.
    #[must_use]
    pub fn with_ports_from(mut self, port: u16) -> Self {
        self.next_port = port;
        self
    }

    /// Delivers everything that is ready at `now`.
    pub fn step(&mut self) {
        let now = self.now;
        for i in 0..self.peers.len() {
            let peer = &mut self.peers[i];
            if peer.deadline <= now {
                peer.rtc.handle_input(Input::Timeout(now)).unwrap();
            }
            loop {
                // Drain, then let the behaviour make one write, until it
                // has nothing more to do now.
                drain_peer(peer, &mut self.engine, &mut self.engine_busy, now);
                match peer.behaviour.poll(&mut peer.rtc, now) {
                    Some(t) if t <= now => {}
                    Some(t) => {
                        peer.deadline = peer.deadline.min(t);
                        break;
                    }
                    None => break,
                }
            }
        }
        let started = Instant::now();
        self.engine.handle_timeout(now);
        let mut out = Vec::new();
        while let Some(t) = self.engine.poll_transmit() {
            out.push(t);
        }
        self.engine_busy += started.elapsed();
        for t in out {
            let Some(peer) = self.peers.iter_mut().find(|p| p.addr == t.destination) else {
                continue;
            };
            if peer.downlink_loss > 0.0 {
                peer.rng ^= peer.rng << 13;
                peer.rng ^= peer.rng >> 7;
                peer.rng ^= peer.rng << 17;
                if (peer.rng % 1_000_000) as f64 / 1_000_000.0 < peer.downlink_loss {
                    continue;
                }
            }
            if let Some(cap) = peer.downlink_bps {
                let elapsed = now.saturating_duration_since(peer.budget_at).as_secs_f64();
                peer.budget_bits = (peer.budget_bits + elapsed * cap as f64).min(cap as f64 * 0.05);
                peer.budget_at = now;
                let bits = (t.contents.len() * 8) as f64;
                if peer.budget_bits < bits {
                    continue;
                }
                peer.budget_bits -= bits;
            }
            let data: Vec<u8> = t.contents.into();
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: self.engine_addr,
                    destination: peer.addr,
                    contents: data.as_slice().try_into().unwrap(),
                },
            );
            peer.rtc.handle_input(input).unwrap();
            drain_peer(peer, &mut self.engine, &mut self.engine_busy, now);
        }
    }

    /// Packets the engine has forwarded to subscribers so far.
    pub fn forwarded(&self) -> u64 {
        self.engine.stats().iter().map(|s| s.tx.packets).sum()
    }
}

/// Polls a peer until it has only a timeout left: its datagrams go straight
/// into the engine (timed in `busy`), its events to its behaviour.
fn drain_peer(peer: &mut MemPeer, engine: &mut Engine, busy: &mut Duration, now: Instant) {
    loop {
        match peer.rtc.poll_output().unwrap() {
            Output::Timeout(t) => {
                peer.deadline = t;
                return;
            }
            Output::Transmit(t) => {
                let data: Vec<u8> = t.contents.into();
                let started = Instant::now();
                engine.handle_datagram(now, peer.addr, &data);
                *busy += started.elapsed();
            }
            Output::Event(e) => peer.behaviour.on_event(&mut peer.rtc, e, now),
        }
    }
}
