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
        let mut buf = vec![0u8; 2048];
        loop {
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
                return;
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
