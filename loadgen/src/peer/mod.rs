//! A str0m peer of the media load: its own UDP socket and tokio task; as a
//! publisher it sends Opus audio and three-layer VP8-shaped simulcast
//! video, as a subscriber it checks every packet it receives.
//!
//! Every payload ends with a 24-byte trailer: magic `c0 f1`, publisher
//! number (u32), layer (u8), frame number (u32), packet index in the frame
//! (u8), send time in µs since the run's epoch (u64) and an FNV-1a hash
//! (u32) of the payload between the VP8 descriptor (6 bytes, rewritten by
//! the SFU) and the hash. A subscriber that finds no trailer or a wrong
//! hash counts the packet as corrupt.
//!
//! A **counting** subscriber (`--counting`) completes ICE and DTLS-SRTP
//! like the others, then reads its socket in batches (`recvmmsg`, with
//! GRO) and only counts RTP datagrams from their clear header (SSRC and
//! sequence number: rate and loss); STUN, DTLS and RTCP still go to str0m.
//! It decrypts nothing, so one loadgen core absorbs several hundred
//! thousand packets a second; content, layers and latency are checked by
//! the full subscribers beside it. It offers no transport-wide congestion
//! feedback (it could not send any), so the SFU gives it no bandwidth
//! estimate: it gets the layers its preference asks for, unpaced.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use confer_sfu::core::vp8::{SYNTHETIC_DESCRIPTOR, synthetic_head};

use crate::measure::{histogram, micros_since};

mod counting;
use counting::{SeqCount, count_only};

/// Trailer magic.
const MAGIC: [u8; 2] = [0xc0, 0xf1];
/// Trailer length.
pub const TRAILER: usize = 24;
/// VP8 payload descriptor length used by the publisher (X, I with
/// 15-bit picture id, L with TL0PICIDX, T).
const VP8_DESCRIPTOR: usize = SYNTHETIC_DESCRIPTOR;
/// Largest RTP payload the publisher produces.
const MAX_PAYLOAD: usize = 1100;
/// Simulcast rids, low to high.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Target bitrate of each layer, bits per second (the libwebrtc layer
/// table for a 1280×720 source at 30 fps, 2000 kbps in all).
const LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_350_000];
/// Frame height of each layer.
const LAYER_HEIGHT: [u16; 3] = [180, 360, 720];
/// A keyframe is this many times a delta frame.
const KEYFRAME_FACTOR: usize = 6;

fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Appends the trailer; `skip` bytes at the start are not hashed.
fn seal(
    mut payload: Vec<u8>,
    skip: usize,
    publisher: u32,
    layer: u8,
    frame: u32,
    index: u8,
    sent: u64,
) -> Vec<u8> {
    payload.extend_from_slice(&MAGIC);
    payload.extend_from_slice(&publisher.to_be_bytes());
    payload.push(layer);
    payload.extend_from_slice(&frame.to_be_bytes());
    payload.push(index);
    payload.extend_from_slice(&sent.to_be_bytes());
    let hash = fnv1a(&payload[skip.min(payload.len())..]);
    payload.extend_from_slice(&hash.to_be_bytes());
    payload
}

/// What a trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Publisher number.
    pub publisher: u32,
    /// Simulcast layer.
    pub layer: u8,
    /// Send time, µs since the epoch.
    pub sent: u64,
}

fn open(payload: &[u8], skip: usize) -> Option<Trailer> {
    let n = payload.len();
    if n < TRAILER + skip {
        return None;
    }
    let t = &payload[n - TRAILER..];
    if t[..2] != MAGIC {
        return None;
    }
    let hash = u32::from_be_bytes(t[20..24].try_into().ok()?);
    if fnv1a(&payload[skip..n - 4]) != hash {
        return None;
    }
    Some(Trailer {
        publisher: u32::from_be_bytes(t[2..6].try_into().ok()?),
        layer: t[6],
        sent: u64::from_be_bytes(t[12..20].try_into().ok()?),
    })
}

/// Opus frames of a 440 Hz tone, 20 ms each, encoded once and sent in a
/// loop.
pub fn opus_frames() -> anyhow::Result<Arc<Vec<Vec<u8>>>> {
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
    encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
    let mut frames = Vec::with_capacity(50);
    let mut phase = 0.0f32;
    for _ in 0..50 {
        let pcm: Vec<i16> = (0..960)
            .map(|_| {
                phase += 2.0 * std::f32::consts::PI * 440.0 / 48_000.0;
                (phase.sin() * 8_000.0) as i16
            })
            .collect();
        frames.push(encoder.encode_vec(&pcm, 4000)?);
    }
    Ok(Arc::new(frames))
}

/// A publisher's schedule.
#[derive(Debug)]
pub struct Publisher {
    /// Number written into trailers.
    pub id: u32,
    audio: Mid,
    video: Option<Mid>,
    simulcast: bool,
    fps: u32,
    keyframe_every: u32,
    opus: Arc<Vec<Vec<u8>>>,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    audio_seq: SeqNo,
    audio_n: u64,
    video_seq: [SeqNo; 3],
    frame: u32,
    keyframe_wanted: [bool; 3],
    /// Layers the SFU says nobody needs (dynacast): not sent.
    paused: [bool; 3],
    queue: std::collections::VecDeque<(Mid, Option<Rid>, RtpWrite)>,
    epoch: Instant,
}

impl Publisher {
    /// A publisher of `audio` and, if given, `video` (three simulcast
    /// layers when `simulcast`, else only the full one).
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u32,
        audio: Mid,
        video: Option<Mid>,
        simulcast: bool,
        fps: u32,
        keyframe_secs: u32,
        opus: Arc<Vec<Vec<u8>>>,
        epoch: Instant,
    ) -> Self {
        Self {
            id,
            audio,
            video,
            simulcast,
            fps: fps.max(1),
            keyframe_every: (keyframe_secs * fps).max(1),
            opus,
            next_audio: None,
            next_video: None,
            audio_seq: SeqNo::from(u64::from(id) * 7 + 1),
            audio_n: 0,
            video_seq: [SeqNo::from(1), SeqNo::from(20_000), SeqNo::from(40_000)],
            frame: 0,
            keyframe_wanted: [true; 3],
            paused: [false; 3],
            queue: std::collections::VecDeque::new(),
            epoch,
        }
    }

    /// Pauses or resumes a layer (dynacast).
    pub fn set_paused(&mut self, rid: &str, paused: bool) {
        if let Some(i) = RIDS.iter().position(|r| *r == rid) {
            self.paused[i] = paused;
            if !paused {
                self.keyframe_wanted[i] = true;
            }
        }
    }

    fn start(&mut self, now: Instant) {
        self.next_audio.get_or_insert(now);
        if self.video.is_some() {
            self.next_video.get_or_insert(now);
        }
    }

    fn audio(&mut self, rtc: &Rtc, now: Instant) {
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let frame = &self.opus[(self.audio_n % self.opus.len() as u64) as usize];
        let payload = seal(
            frame.clone(),
            0,
            self.id,
            0,
            self.audio_n as u32,
            0,
            micros_since(self.epoch),
        );
        let ts = (self.audio_n as u32).wrapping_mul(960);
        self.audio_n += 1;
        let write =
            RtpWrite::new(pt, self.audio_seq.inc(), ts, now, payload).ext_vals(ExtensionValues {
                audio_level: Some(-30),
                voice_activity: Some(true),
                ..Default::default()
            });
        self.queue.push_back((self.audio, None, write));
    }

    fn video(&mut self, rtc: &Rtc, now: Instant) {
        let Some(mid) = self.video else { return };
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        let frame = self.frame;
        self.frame += 1;
        let layers: &[usize] = if self.simulcast { &[0, 1, 2] } else { &[2] };
        let ts = frame.wrapping_mul(90_000 / self.fps);
        for &l in layers {
            if self.paused[l] {
                continue;
            }
            let keyframe = std::mem::take(&mut self.keyframe_wanted[l])
                || frame.is_multiple_of(self.keyframe_every);
            let delta = (LAYER_BPS[l] / 8 / u64::from(self.fps)) as usize;
            // Delta frames shrink so that keyframes fit the average.
            let size = if keyframe {
                delta * KEYFRAME_FACTOR
            } else {
                delta * self.keyframe_every as usize
                    / (self.keyframe_every as usize + KEYFRAME_FACTOR - 1)
            };
            let packets = size.div_ceil(MAX_PAYLOAD).max(1);
            let sent = micros_since(self.epoch);
            for i in 0..packets {
                let start = i == 0;
                let mut body = synthetic_head(frame, start, keyframe, LAYER_HEIGHT[l]);
                let len = (size / packets).clamp(body.len() + 1, MAX_PAYLOAD - TRAILER);
                body.resize(len, (frame % 251) as u8);
                let payload = seal(body, VP8_DESCRIPTOR, self.id, l as u8, frame, i as u8, sent);
                let rid = self.simulcast.then(|| Rid::from(RIDS[l]));
                let seq = self.video_seq[l].inc();
                let write = RtpWrite::new(pt, seq, ts, now, payload)
                    .marker(i + 1 == packets)
                    .nackable(true);
                self.queue.push_back((mid, rid, write));
            }
        }
    }

    /// Queues what is due and writes one packet; returns when it next has
    /// work and how many packets it wrote.
    fn poll(&mut self, rtc: &mut Rtc, now: Instant) -> (Option<Instant>, u64) {
        if self.next_audio.is_some_and(|t| t <= now) {
            self.audio(rtc, now);
            self.next_audio = self
                .next_audio
                .map(|t| (t + Duration::from_millis(20)).max(now));
        }
        if self.next_video.is_some_and(|t| t <= now) {
            self.video(rtc, now);
            let step = Duration::from_micros(1_000_000 / u64::from(self.fps));
            self.next_video = self.next_video.map(|t| (t + step).max(now));
        }
        let mut wrote = 0;
        if let Some((mid, rid, write)) = self.queue.pop_front() {
            let mut api = rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, rid) {
                tx.write_rtp(write);
                wrote = 1;
            }
        }
        if !self.queue.is_empty() {
            return (Some(now), wrote);
        }
        let next = [self.next_audio, self.next_video]
            .into_iter()
            .flatten()
            .min();
        (next, wrote)
    }
}

#[derive(Debug, Default)]
struct StreamCheck {
    seqs: HashSet<u64>,
    min: Option<u64>,
    max: u64,
    layer: Option<u8>,
    /// RFC 3550 interarrival jitter, µs.
    jitter_us: f64,
    last_transit: Option<i64>,
}

/// What one peer measured (a subscriber's checks, a publisher's sends).
#[derive(Debug)]
pub struct PeerStats {
    /// ICE and DTLS came up.
    pub connected: bool,
    /// RTP packets written (publishers).
    pub sent: u64,
    /// RTP packets received, counted once.
    pub received: u64,
    /// Packets without a valid trailer.
    pub corrupt: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Video layer changes seen.
    pub layer_switches: u64,
    /// Send → receive latency, µs.
    pub latency: Histogram<u64>,
    streams: HashMap<Mid, StreamCheck>,
    /// Streams only counted (by SSRC), for a counting subscriber.
    counted: HashMap<u32, SeqCount>,
}

impl PeerStats {
    fn new() -> Self {
        Self {
            connected: false,
            sent: 0,
            received: 0,
            corrupt: 0,
            duplicates: 0,
            layer_switches: 0,
            latency: histogram(),
            streams: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    /// Packets expected from the sequence numbers seen (a gap is a loss).
    #[must_use]
    pub fn expected(&self) -> u64 {
        let checked: u64 = self
            .streams
            .values()
            .map(|s| s.min.map_or(0, |m| s.max - m + 1))
            .sum();
        let counted: u64 = self.counted.values().map(|c| c.max - c.first + 1).sum();
        checked + counted
    }

    /// Average jitter over the streams, ms.
    #[must_use]
    pub fn jitter_ms(&self) -> f64 {
        if self.streams.is_empty() {
            return 0.0;
        }
        self.streams.values().map(|s| s.jitter_us).sum::<f64>() / self.streams.len() as f64 / 1000.0
    }

    /// Takes the latency histogram, leaving an empty one (ramp steps).
    pub fn take_latency(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.latency, histogram())
    }

    fn packet(&mut self, mid: Mid, kind: MediaKind, seq: u64, payload: &[u8], epoch: Instant) {
        let skip = if kind == MediaKind::Video {
            VP8_DESCRIPTOR
        } else {
            0
        };
        let stream = self.streams.entry(mid).or_default();
        if !stream.seqs.insert(seq) {
            self.duplicates += 1;
            return;
        }
        stream.min = Some(stream.min.map_or(seq, |m| m.min(seq)));
        stream.max = stream.max.max(seq);
        self.received += 1;
        let Some(t) = open(payload, skip) else {
            self.corrupt += 1;
            return;
        };
        let now = micros_since(epoch);
        let transit = now as i64 - t.sent as i64;
        if let Some(last) = stream.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            stream.jitter_us += (d - stream.jitter_us) / 16.0;
        }
        stream.last_transit = Some(transit);
        let _ = self.latency.record(now.saturating_sub(t.sent).max(1));
        if kind == MediaKind::Video {
            if stream.layer.is_some_and(|l| l != t.layer) {
                self.layer_switches += 1;
            }
            stream.layer = Some(t.layer);
        }
    }
}

/// Control of a running peer.
#[derive(Debug)]
pub enum Control {
    /// Dynacast: pause (`true`) or resume a layer.
    Layer(String, bool),
}

/// A running peer.
#[derive(Debug)]
pub struct Peer {
    /// Its measurements.
    pub stats: Arc<Mutex<PeerStats>>,
    control: tokio::sync::mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Binds a socket on `ip` and builds an `Rtc` (full ICE, RTP mode,
    /// Opus and VP8) whose host candidate is that socket.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub async fn prepare(ip: std::net::IpAddr) -> anyhow::Result<(Rtc, tokio::net::UdpSocket)> {
        Self::prepare_as(ip, false).await
    }

    /// As [`Self::prepare`], for a counting subscriber when `counting`:
    /// without the transport-wide sequence number extension (it sends no
    /// congestion feedback).
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub async fn prepare_as(
        ip: std::net::IpAddr,
        counting: bool,
    ) -> anyhow::Result<(Rtc, tokio::net::UdpSocket)> {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let addr = socket.local_addr()?;
        let mut builder = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true);
        if counting {
            builder = builder
                .clear_extension_map()
                .set_extension(1, Extension::AudioLevel)
                .set_extension(4, Extension::RtpMid)
                .set_extension(10, Extension::RtpStreamId)
                .set_extension(11, Extension::RepairedRtpStreamId);
        }
        let mut rtc = builder.build(Instant::now());
        rtc.add_local_candidate(
            Candidate::host(addr, "udp").map_err(|e| anyhow::anyhow!("candidate: {e}"))?,
        );
        Ok((rtc, socket))
    }

    /// Starts driving a negotiated `rtc`.
    #[must_use]
    pub fn start(
        rtc: Rtc,
        socket: tokio::net::UdpSocket,
        publisher: Option<Publisher>,
        epoch: Instant,
    ) -> Self {
        Self::start_as(rtc, socket, publisher, epoch, false)
    }

    /// As [`Self::start`]; a subscriber that only counts once connected
    /// when `counting` (see the module docs).
    #[must_use]
    pub fn start_as(
        rtc: Rtc,
        socket: tokio::net::UdpSocket,
        publisher: Option<Publisher>,
        epoch: Instant,
        counting: bool,
    ) -> Self {
        let stats = Arc::new(Mutex::new(PeerStats::new()));
        let (control, rx) = tokio::sync::mpsc::channel(64);
        let publisher_is_none = publisher.is_none();
        let task = tokio::spawn(drive(
            rtc,
            socket,
            publisher,
            stats.clone(),
            rx,
            epoch,
            counting && publisher_is_none,
        ));
        Self {
            stats,
            control,
            task,
        }
    }

    /// A handle that sends controls to the peer.
    #[must_use]
    pub fn controller(&self) -> tokio::sync::mpsc::Sender<Control> {
        self.control.clone()
    }

    /// Stops the peer.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn drive(
    mut rtc: Rtc,
    socket: tokio::net::UdpSocket,
    mut publisher: Option<Publisher>,
    stats: Arc<Mutex<PeerStats>>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    epoch: Instant,
    counting: bool,
) {
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut buf = vec![0u8; 2048];
    loop {
        if counting && stats.lock().is_ok_and(|s| s.connected) {
            count_only(rtc, socket, local, &stats).await;
            return;
        }
        // Drain everything str0m has for us.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => on_event(&mut rtc, e, &mut publisher, &stats, epoch),
                Err(_) => return,
            }
        };
        if !rtc.is_alive() {
            return;
        }
        let now = Instant::now();
        let mut next = timeout;
        if let Some(p) = publisher.as_mut() {
            let (due, wrote) = p.poll(&mut rtc, now);
            if wrote > 0
                && let Ok(mut s) = stats.lock()
            {
                s.sent += wrote;
            }
            // A written packet goes out on the next drain, not after
            // the next sleep.
            if wrote > 0 || due.is_some_and(|t| t <= now) {
                continue;
            }
            if let Some(t) = due {
                next = next.min(t);
            }
        }
        if next <= now {
            // str0m has work now (its pacer releases a packet, a timer
            // fired): do it without sleeping, or every packet of a frame
            // would wait a timer tick.
            if rtc.handle_input(Input::Timeout(now)).is_err() {
                return;
            }
            continue;
        }
        let wait = next.saturating_duration_since(now);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = r else { return };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents,
                });
                if rtc.handle_input(input).is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(wait) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
            c = control.recv() => {
                if let (Some(Control::Layer(rid, paused)), Some(p)) = (c, publisher.as_mut()) {
                    p.set_paused(&rid, paused);
                }
            }
        }
    }
}

fn on_event(
    rtc: &mut Rtc,
    event: Event,
    publisher: &mut Option<Publisher>,
    stats: &Mutex<PeerStats>,
    epoch: Instant,
) {
    match event {
        Event::Connected => {
            if let Some(p) = publisher {
                p.start(Instant::now());
            }
            if let Ok(mut s) = stats.lock() {
                s.connected = true;
            }
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => rtc.disconnect(),
        Event::KeyframeRequest(req) => {
            if let Some(p) = publisher {
                let layer = req
                    .rid
                    .and_then(|r| RIDS.iter().position(|x| *x == &*r))
                    .unwrap_or(2);
                p.keyframe_wanted[layer] = true;
            }
        }
        Event::RtpPacket(packet) => {
            let Some(mid) = rtc
                .direct_api()
                .stream_rx(&packet.header.ssrc)
                .map(|rx| rx.mid())
            else {
                return;
            };
            let Some(kind) = rtc.media(mid).map(|m| m.kind()) else {
                return;
            };
            if let Ok(mut s) = stats.lock() {
                s.packet(mid, kind, *packet.seq_no, &packet.payload, epoch);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_opens_and_a_changed_one_does_not() {
        let sealed = seal(vec![1, 2, 3, 4, 5, 6, 7], 5, 9, 2, 42, 3, 123_456);
        let t = open(&sealed, 5).unwrap_or_else(|| panic!("opens"));
        assert_eq!((t.publisher, t.layer, t.sent), (9, 2, 123_456));
        // The descriptor may change (the SFU rewrites it)…
        let mut rewritten = sealed.clone();
        rewritten[2] ^= 0xff;
        assert!(open(&rewritten, 5).is_some());
        // …the rest may not.
        let mut broken = sealed;
        broken[6] ^= 1;
        assert!(open(&broken, 5).is_none());
    }
}
