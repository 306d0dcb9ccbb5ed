//! Calls as the tests see them: str0m peers on loopback UDP that carry
//! checked media, people with a WebSocket each, and the steps of the call
//! protocol (start, snapshots, peer-to-peer negotiation through
//! `call_signal`, SFU sessions).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{App, TestServer, Ws, check_frames, protocol_schemas, user_token};

pub use media::{LivePeer, Publisher};

/// A str0m peer on its own loopback socket, driven by a thread, that the
/// test negotiates with and reads counters from while media flows.
pub mod media {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    pub use confer_sfu::testing::{Behaviour, Publisher, Subscriber};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    pub struct Inner {
        pub rtc: Rtc,
        pub publisher: Option<Publisher>,
        pub subscriber: Subscriber,
    }

    pub struct LivePeer {
        inner: Arc<Mutex<Inner>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
        pub addr: SocketAddr,
    }

    impl LivePeer {
        /// A peer; with `candidate_in_sdp` its host candidate is in its
        /// offers (SFU sessions), otherwise it is trickled by the test.
        pub fn new(candidate_in_sdp: bool) -> Self {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = socket.local_addr().unwrap();
            let mut rtc = Rtc::builder()
                .set_rtp_mode(true)
                .clear_codecs()
                .enable_opus(true, false)
                .enable_vp8(true)
                .build(Instant::now());
            if candidate_in_sdp {
                rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            }
            let inner = Arc::new(Mutex::new(Inner {
                rtc,
                publisher: None,
                subscriber: Subscriber::default(),
            }));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let inner = inner.clone();
                let stop = stop.clone();
                std::thread::spawn(move || drive(&socket, addr, &inner, &stop))
            };
            Self {
                inner,
                stop,
                thread: Some(thread),
                addr,
            }
        }

        pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
            f(&mut self.inner.lock().unwrap())
        }

        /// The local host candidate, for trickling.
        pub fn candidate(&self) -> String {
            self.with(|i| {
                i.rtc
                    .add_local_candidate(Candidate::host(self.addr, "udp").unwrap())
                    .unwrap()
                    .to_sdp_string()
            })
        }

        /// Packets received per (kind, publisher tag).
        pub fn received(&self, kind: &'static str, tag: u8) -> u64 {
            self.with(|i| i.subscriber.by_tag.get(&(kind, tag)).copied().unwrap_or(0))
        }

        pub fn corrupt(&self) -> u64 {
            self.with(|i| i.subscriber.corrupt)
        }
    }

    impl Drop for LivePeer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn dispatch(inner: &mut Inner, event: Event) {
        let now = Instant::now();
        let Inner {
            rtc,
            publisher,
            subscriber,
        } = inner;
        match event {
            Event::Connected => {
                if let Some(p) = publisher {
                    p.on_event(rtc, Event::Connected, now);
                }
                subscriber.on_event(rtc, Event::Connected, now);
            }
            e @ Event::KeyframeRequest(_) => {
                if let Some(p) = publisher {
                    p.on_event(rtc, e, now);
                }
            }
            e @ Event::RtpPacket(_) => subscriber.on_event(rtc, e, now),
            _ => {}
        }
    }

    fn drive(socket: &UdpSocket, addr: SocketAddr, inner: &Mutex<Inner>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let wait = {
                let mut g = inner.lock().unwrap();
                let timeout = loop {
                    match g.rtc.poll_output() {
                        Ok(Output::Timeout(t)) => break t,
                        Ok(Output::Transmit(t)) => {
                            let _ = socket.send_to(&t.contents, t.destination);
                        }
                        Ok(Output::Event(e)) => dispatch(&mut g, e),
                        Err(_) => return,
                    }
                };
                if !g.rtc.is_alive() {
                    return;
                }
                let now = Instant::now();
                let Inner { rtc, publisher, .. } = &mut *g;
                let app = publisher.as_mut().and_then(|p| p.poll(rtc, now));
                if app.is_some_and(|t| t <= now) {
                    continue;
                }
                let next = app.map_or(timeout, |t| t.min(timeout));
                next.saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), Duration::from_millis(20))
            };
            socket.set_read_timeout(Some(wait)).unwrap();
            let input = match socket.recv_from(&mut buf) {
                Ok((n, source)) => Some((n, source)),
                Err(_) => None,
            };
            let mut g = inner.lock().unwrap();
            let result = match input {
                Some((n, source)) => g.rtc.handle_input(Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: addr,
                        contents: buf[..n].try_into().unwrap(),
                    },
                )),
                None => g.rtc.handle_input(Input::Timeout(Instant::now())),
            };
            if result.is_err() {
                return;
            }
        }
    }
}

/// `(audio mid, video mid)` of an SDP.
pub fn mids_of(sdp: &str) -> (str0m::media::Mid, str0m::media::Mid) {
    let mut kind = "";
    let mut found: HashMap<&str, String> = HashMap::new();
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            kind = rest.split(' ').next().unwrap_or("");
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            found.entry(kind).or_insert_with(|| mid.trim().to_owned());
        }
    }
    (
        str0m::media::Mid::from(found["audio"].as_str()),
        str0m::media::Mid::from(found["video"].as_str()),
    )
}

pub struct Person {
    pub ws: Ws,
    pub user: String,
    pub token: String,
    pub tag: u8,
}

pub async fn people(server: &TestServer, names: &[&str]) -> (Vec<Person>, App) {
    let app = server.register("calls@example.com", "ERP").await;
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (token, user) = user_token(server, &app, name, &[]).await;
        out.push(Person {
            ws: Ws::connect(server, &token, None).await,
            user,
            token,
            tag: u8::try_from(i + 1).unwrap(),
        });
    }
    (out, app)
}

pub async fn conversation(people: &mut [Person]) -> Value {
    let members: Vec<&str> = people[1..].iter().map(|p| p.user.as_str()).collect();
    let ack = people[0]
        .ws
        .request(json!({"type": "create_conversation", "title": "Call room", "members": members}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["conversation"]["id"].clone()
}

/// Checks every frame the people sent and received against the schemas
/// in docs/protocol.md; returns the frame types (and event kinds) seen.
pub fn conforms(people: &[Person]) -> std::collections::BTreeSet<String> {
    let client = protocol_schemas("### Client frames");
    let server = protocol_schemas("### Server frames");
    let mut seen = std::collections::BTreeSet::new();
    for p in people {
        check_frames(&client, &p.ws.sent, "client");
        seen.extend(check_frames(&server, &p.ws.received, "server"));
    }
    seen
}

pub fn assert_seen(seen: &std::collections::BTreeSet<String>, expected: &[&str]) {
    let missing: Vec<&&str> = expected.iter().filter(|e| !seen.contains(**e)).collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}");
}

/// Starts a call in `conversation`; returns its id.
pub async fn start_call(ws: &mut Ws, conversation: &Value, media: &str) -> Value {
    let ack = ws
        .request(json!({"type": "call_start", "conversation_id": conversation, "media": media}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["call"]["id"].clone()
}

/// The latest `call` snapshot a person received.
pub async fn snapshot(ws: &mut Ws) -> Value {
    ws.ephemeral_of("call").await["event"]["call"].clone()
}

pub fn state_of(call: &Value, user: &str) -> String {
    call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == user)
        .map(|p| p["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Negotiates a peer-to-peer session between the offerer and the answerer
/// through `call_signal`, trickling one host candidate each way; both
/// then send audio and video tagged with their number.
pub async fn p2p(
    call: &Value,
    offerer: &mut Person,
    answerer: &mut Person,
) -> (LivePeer, LivePeer) {
    use str0m::change::{SdpAnswer, SdpOffer};
    use str0m::media::{Direction, MediaKind};

    let a = LivePeer::new(false);
    let b = LivePeer::new(false);
    let (offer, pending) = a.with(|i| {
        let mut api = i.rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        (offer.to_sdp_string(), pending)
    });
    let (audio, video) = mids_of(&offer);
    let ack = offerer
        .ws
        .request(json!({"type": "call_signal", "call_id": call, "to": answerer.user, "signal": {"type": "offer", "sdp": offer}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = answerer.ws.ephemeral_of("call_signal").await;
    assert_eq!(got["event"]["from"], offerer.user.as_str());
    let answer = b.with(|i| {
        let offer =
            SdpOffer::from_sdp_string(got["event"]["signal"]["sdp"].as_str().unwrap()).unwrap();
        i.rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string()
    });
    answerer
        .ws
        .request(json!({"type": "call_signal", "call_id": call, "to": offerer.user, "signal": {"type": "answer", "sdp": answer}}))
        .await;
    let got = offerer.ws.ephemeral_of("call_signal").await;
    a.with(|i| {
        let answer =
            SdpAnswer::from_sdp_string(got["event"]["signal"]["sdp"].as_str().unwrap()).unwrap();
        i.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    });
    let mut pa = Publisher::new(audio, video, false, 15);
    pa.tag = offerer.tag;
    let mut pb = Publisher::new(audio, video, false, 15);
    pb.tag = answerer.tag;
    a.with(|i| i.publisher = Some(pa));
    b.with(|i| i.publisher = Some(pb));
    // Trickle ICE: one host candidate each way (the offer and answer had
    // none, so nothing connects before this).
    trickle(call, offerer, answerer, &a, &b).await;
    trickle(call, answerer, offerer, &b, &a).await;
    (a, b)
}

/// Sends `from`'s host candidate to `to`, whose peer adds it.
pub async fn trickle(
    call: &Value,
    from: &mut Person,
    to: &mut Person,
    from_peer: &LivePeer,
    to_peer: &LivePeer,
) {
    let candidate = from_peer.candidate();
    let ack = from
        .ws
        .request(json!({"type": "call_signal", "call_id": call, "to": to.user, "signal": {"type": "candidate", "candidate": candidate}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = to.ws.ephemeral_of("call_signal").await;
    let c =
        str0m::Candidate::from_sdp_string(got["event"]["signal"]["candidate"].as_str().unwrap())
            .unwrap();
    to_peer.with(|i| i.rtc.add_remote_candidate(c));
}

/// A participant's two SFU sessions: publishing audio and three-layer
/// simulcast video tagged with its number, and receiving `others` audio
/// and `others` video slots.
pub struct SfuMedia {
    pub publish: LivePeer,
    pub subscribe: LivePeer,
}

pub async fn sfu_sessions(call: &Value, person: &mut Person, others: usize) -> SfuMedia {
    use confer_sfu::testing::{accept_answer, offer_publish, offer_slots};
    let publish = LivePeer::new(true);
    let (offer, pending, audio, video) = publish.with(|i| offer_publish(&mut i.rtc, true));
    let mut publisher = Publisher::new(audio, video, true, 15);
    publisher.tag = person.tag;
    publish.with(|i| i.publisher = Some(publisher));
    let answer = person
        .ws
        .request(json!({"type": "call_publish", "call_id": call, "sdp": offer}))
        .await;
    assert_eq!(answer["type"], "call_answer", "{answer}");
    publish.with(|i| accept_answer(&mut i.rtc, pending, answer["sdp"].as_str().unwrap()));

    let subscribe = LivePeer::new(true);
    let (offer, pending) = subscribe.with(|i| offer_slots(&mut i.rtc, others, others));
    let answer = person
        .ws
        .request(json!({"type": "call_subscribe", "call_id": call, "sdp": offer}))
        .await;
    assert_eq!(answer["type"], "call_answer", "{answer}");
    subscribe.with(|i| accept_answer(&mut i.rtc, pending, answer["sdp"].as_str().unwrap()));
    SfuMedia { publish, subscribe }
}

/// Waits (10 s at most) until `peer` received audio and video from every
/// tag in `from`; returns how long it took.
pub async fn until_media(peer: &LivePeer, from: &[u8], packets: u64) -> Duration {
    let started = Instant::now();
    loop {
        let done = from.iter().all(|t| {
            peer.received("audio", *t) >= packets && peer.received("video", *t) >= packets
        });
        if done {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "media from {from:?} did not arrive: {:?}",
            peer.with(|i| i.subscriber.by_tag.clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
