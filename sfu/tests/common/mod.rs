//! The socket-based test peer; the behaviours and payload checks live in
//! `confer_sfu::testing`.

#![allow(dead_code, clippy::unwrap_used)]

pub mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub use confer_sfu::testing::*;
use str0m::change::SdpPendingOffer;
use str0m::media::Mid;
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output, Rtc};

/// A str0m peer on its own loopback socket.
pub struct Peer {
    pub rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let rtc = peer_rtc(local, Instant::now());
        Self { rtc, socket, local }
    }

    pub fn offer_publish(&mut self, simulcast: bool) -> (String, SdpPendingOffer, Mid, Mid) {
        offer_publish(&mut self.rtc, simulcast)
    }

    pub fn offer_subscribe(&mut self) -> (String, SdpPendingOffer) {
        offer_subscribe(&mut self.rtc)
    }

    pub fn accept_answer(&mut self, pending: SdpPendingOffer, answer: &str) {
        accept_answer(&mut self.rtc, pending, answer);
    }

    /// Runs until `until`, handing events and due work to `behaviour`.
    pub fn run(&mut self, until: Instant, behaviour: &mut dyn Behaviour) {
        self.run_until(until, behaviour, |_| false);
    }

    /// Runs until `done(behaviour)` holds (checked every turn) or
    /// `deadline` passes; returns whether `done` was reached. Tests wait
    /// for what they need this way, with a generous deadline, instead of
    /// running for a fixed time and hoping the machine was fast enough.
    pub fn run_until<B: Behaviour + ?Sized>(
        &mut self,
        deadline: Instant,
        behaviour: &mut B,
        mut done: impl FnMut(&B) -> bool,
    ) -> bool {
        let until = deadline;
        let mut buf = vec![0u8; 2048];
        loop {
            if done(behaviour) {
                return true;
            }
            let timeout = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => behaviour.on_event(&mut self.rtc, e, Instant::now()),
                    Err(e) => panic!("peer failed: {e}"),
                }
            };
            let now = Instant::now();
            if now >= until {
                return done(behaviour);
            }
            let app = behaviour.poll(&mut self.rtc, now);
            if app.is_some_and(|t| t <= now) {
                // More writes are due: drain the Rtc first (one mutation
                // between polls).
                continue;
            }
            let next = app.map_or(timeout, |t| t.min(timeout)).min(until);
            let wait = next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    let input = Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: self.local,
                            contents: buf[..n].try_into().unwrap(),
                        },
                    );
                    self.rtc.handle_input(input).unwrap();
                }
                Err(_) => {
                    self.rtc
                        .handle_input(Input::Timeout(Instant::now()))
                        .unwrap();
                }
            }
        }
    }
}

/// How long a media test waits for what it needs before it fails: long,
/// because a busy 2-core machine running a debug build may take seconds to
/// connect; a passing test returns as soon as its condition holds.
pub const MEDIA_DEADLINE: Duration = Duration::from_secs(30);

/// Media flows: more than 50 audio and 30 video packets arrived, and the
/// video's sequence numbers have no gap (a lost packet was retransmitted).
pub fn flowing(s: &Subscriber) -> bool {
    s.audio_packets > 50
        && s.video_packets > 30
        && s.seqs.get("video").is_some_and(|v| contiguous(v))
}

/// A publisher sending audio and simulcast video at 15 fps on its own
/// thread until stopped.
pub struct Streaming {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Publisher>,
}

impl Streaming {
    pub fn start(publisher: Peer, audio: Mid, video: Mid) -> Self {
        Self::start_tagged(publisher, audio, video, 0)
    }

    /// As [`Self::start`], writing `tag` into every payload so that
    /// subscribers can tell publishers apart.
    pub fn start_tagged(mut publisher: Peer, audio: Mid, video: Mid, tag: u8) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut behaviour = Publisher::new(audio, video, true, 15);
                behaviour.tag = tag;
                publisher.run_until(Instant::now() + MEDIA_DEADLINE * 3, &mut behaviour, |_| {
                    stop.load(std::sync::atomic::Ordering::Relaxed)
                });
                behaviour
            })
        };
        Self { stop, thread }
    }

    /// Stops sending; returns what the publisher did.
    pub fn stop(self) -> Publisher {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// This crate's `sfu` binary on loopback (see
/// [`confer_sfu::testing::Standalone`]); its HTTP base URL.
pub fn standalone(token: &str, env: &[(&str, &str)]) -> (Standalone, String) {
    let sfu = Standalone::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_sfu")), token, env);
    let base = sfu.base.clone();
    (sfu, base)
}
