//! How the peers of a room join it on each system: WHIP/WHEP on a
//! standalone `sfu`, calls through `signalling`'s WebSocket, or a Janus
//! VideoRoom; and the SDP offers they make.

use super::*;

/// A room's peers, and what keeps their sessions alive.
pub(super) struct Room {
    pub(super) publishers: Vec<Peer>,
    pub(super) subscribers: Vec<Peer>,
    /// WebSocket connections (signalling) or Janus handles.
    pub(super) _keep: Vec<Conn>,
    pub(super) _janus: Option<crate::janus::Room>,
}

/// Where peers join.
pub(super) enum Door {
    Signalling {
        base: String,
        http: reqwest::Client,
        app: (String, String),
    },
    Whip {
        base: String,
        http: reqwest::Client,
        token: Option<String>,
    },
    Janus(crate::janus::Janus),
}

impl Door {
    pub(super) fn system(&self) -> &'static str {
        match self {
            Self::Signalling { .. } => "signalling",
            Self::Whip { .. } => "sfu",
            Self::Janus(_) => "janus",
        }
    }
}

/// An offer to publish audio and (simulcast) video.
pub fn offer_publish(
    rtc: &mut Rtc,
    simulcast: bool,
    video: bool,
) -> anyhow::Result<(String, SdpPendingOffer, Mid, Option<Mid>)> {
    let mut api = rtc.sdp_api();
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("lg".into()),
        Some("a".into()),
        None,
    );
    let video = video.then(|| {
        let sim = simulcast.then(|| {
            // Highest first, as browsers offer them (Janus reads the order;
            // Confer reads the rid names).
            let mut s = Simulcast::new();
            for rid in RIDS.iter().rev() {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("lg".into()),
            Some("v".into()),
            sim,
        )
    });
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("nothing to offer"))?;
    Ok((offer.to_sdp_string(), pending, audio, video))
}

/// An offer to receive `audio` audio and `video` video streams.
pub fn offer_subscribe(
    rtc: &mut Rtc,
    audio: usize,
    video: usize,
) -> anyhow::Result<(String, SdpPendingOffer)> {
    let mut api = rtc.sdp_api();
    for _ in 0..audio {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    for _ in 0..video {
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    }
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("nothing to offer"))?;
    Ok((offer.to_sdp_string(), pending))
}

fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> anyhow::Result<()> {
    let answer = SdpAnswer::from_sdp_string(answer).context("parsing the answer")?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .context("applying the answer")?;
    Ok(())
}

pub(super) async fn join_room(
    door: &Door,
    args: &MediaArgs,
    index: usize,
    run_id: u32,
    epoch: Instant,
    opus: &Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<Room> {
    let video = !args.audio_only;
    let simulcast = !args.no_simulcast;
    let room_name = format!("lg-{run_id:08x}-{index}");
    let publisher = |n: usize, audio: Mid, video_mid: Option<Mid>| {
        Publisher::new(
            u32::try_from(index * 1000 + n).unwrap_or(u32::MAX),
            audio,
            video_mid,
            simulcast,
            args.fps,
            args.keyframe_secs,
            opus.clone(),
            epoch,
        )
    };
    match door {
        Door::Whip { base, http, token } => {
            let post = |path: String, sdp: String| {
                let mut r = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/sdp")
                    .body(sdp);
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                async move {
                    let resp = r.send().await?;
                    if resp.status() != reqwest::StatusCode::CREATED {
                        bail!("{path}: {} {}", resp.status(), resp.text().await?);
                    }
                    Ok::<String, anyhow::Error>(resp.text().await?)
                }
            };
            let whip = format!("/whip/{room_name}");
            let whep = format!("/whep/{room_name}");
            let publishers = join_publishers(args, epoch, &publisher, async |_, offer| {
                post(whip.clone(), offer).await
            })
            .await?;
            let subscribers = join_subscribers(args, epoch, async |_, offer| {
                post(whep.clone(), offer).await
            })
            .await?;
            Ok(Room {
                publishers,
                subscribers,
                _keep: Vec::new(),
                _janus: None,
            })
        }
        Door::Signalling { base, http, app } => {
            let ws_base = base
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1);
            let count = args.publishers + args.subscribers;
            let mut conns = Vec::with_capacity(count);
            let mut events = Vec::new();
            let mut ids = Vec::with_capacity(count);
            for n in 0..count {
                let r = http
                    .post(format!("{base}/api/v1/tokens"))
                    .basic_auth(&app.0, Some(&app.1))
                    .json(&json!({"external_id": format!("{room_name}-{n}"), "name": format!("Peer {n}")}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("POST /api/v1/tokens: {} {}", r.status(), r.text().await?);
                }
                let v: Value = r.json().await?;
                let token = v["token"].as_str().unwrap_or_default();
                ids.push(v["user_id"].as_str().unwrap_or_default().to_owned());
                let shared = Arc::new(crate::client::Shared::default());
                if n < args.publishers {
                    let (tx, rx) = tokio::sync::mpsc::channel(256);
                    if let Ok(mut e) = shared.ephemerals.lock() {
                        *e = Some(tx);
                    }
                    events.push(rx);
                }
                let (conn, _) = Conn::connect(
                    format!("{ws_base}/api/v1/ws?token={token}"),
                    epoch,
                    shared,
                    None,
                )
                .await?;
                conns.push(conn);
            }
            let ack = conns[0]
                .request(
                    json!({"type": "create_conversation", "title": room_name, "members": ids[1..]}),
                )
                .await?;
            let conversation = ack["conversation"]["id"].clone();
            let ack = conns[0]
                .request(json!({"type": "call_start", "conversation_id": conversation, "media": if video { "video" } else { "audio" }}))
                .await?;
            let call = ack["call"]["id"].clone();
            for c in &conns[1..] {
                c.request(json!({"type": "call_join", "call_id": call}))
                    .await?;
            }
            let answer_of = |v: Value| v["sdp"].as_str().unwrap_or_default().to_owned();
            let publishers = join_publishers(args, epoch, &publisher, async |n, offer| {
                let answer = conns[n]
                    .request(json!({"type": "call_publish", "call_id": call, "sdp": offer}))
                    .await?;
                Ok(answer_of(answer))
            })
            .await?;
            // Dynacast: the publisher stops encoding layers nobody needs,
            // as a browser would.
            for (peer, mut rx) in publishers.iter().zip(events) {
                let control = peer.controller();
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        if e["kind"] == "call_layer"
                            && let (Some(rid), Some(needed)) =
                                (e["rid"].as_str(), e["needed"].as_bool())
                        {
                            let _ = control.try_send(Control::Layer(rid.to_owned(), !needed));
                        }
                    }
                });
            }
            let subscribers = join_subscribers(args, epoch, async |n, offer| {
                let answer = conns[args.publishers + n]
                    .request(json!({"type": "call_subscribe", "call_id": call, "sdp": offer}))
                    .await?;
                Ok(answer_of(answer))
            })
            .await?;
            Ok(Room {
                publishers,
                subscribers,
                _keep: conns,
                _janus: None,
            })
        }
        Door::Janus(janus) => {
            let room = janus.create_room(args.publishers).await?;
            let mut feeds = Vec::new();
            let publishers = join_publishers(args, epoch, &publisher, async |_, offer| {
                let (feed, answer) = room.publish(&offer).await?;
                feeds.push(feed);
                Ok(answer)
            })
            .await?;
            // Janus offers a feed to subscribers only once its publisher's
            // media is up.
            let deadline = Instant::now() + Duration::from_secs(15);
            while !publishers
                .iter()
                .all(|p| p.stats.lock().is_ok_and(|s| s.sent > 0))
            {
                if Instant::now() > deadline {
                    bail!("Janus publishers did not connect in 15 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut subscribers = Vec::new();
            for n in 0..args.subscribers {
                let counting = args.counts(n);
                let (mut rtc, socket) = Peer::prepare_as(args.bind, counting).await?;
                // Janus offers to subscribers; we answer.
                let mut tries = 0;
                let offer = loop {
                    match room.subscribe(&feeds).await {
                        Ok(offer) => break offer,
                        Err(e) if tries < 50 && e.to_string().contains("No such feed") => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                let offer = str0m::change::SdpOffer::from_sdp_string(&offer)
                    .context("parsing Janus's offer")?;
                let answer = rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .context("answering Janus")?;
                room.start_subscription(&answer.to_sdp_string()).await?;
                subscribers.push(Peer::start_as(rtc, socket, None, epoch, counting));
            }
            Ok(Room {
                publishers,
                subscribers,
                _keep: Vec::new(),
                _janus: Some(room),
            })
        }
    }
}

/// A room's publishers: each binds a peer, offers audio and (simulcast)
/// video, lets `exchange` turn publisher `n`'s offer into the server's
/// answer, and starts sending.
async fn join_publishers(
    args: &MediaArgs,
    epoch: Instant,
    make: &impl Fn(usize, Mid, Option<Mid>) -> Publisher,
    mut exchange: impl AsyncFnMut(usize, String) -> anyhow::Result<String>,
) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::with_capacity(args.publishers);
    for n in 0..args.publishers {
        let (mut rtc, socket) = Peer::prepare(args.bind).await?;
        let (offer, pending, audio, video) =
            offer_publish(&mut rtc, !args.no_simulcast, !args.audio_only)?;
        let answer = exchange(n, offer).await?;
        accept(&mut rtc, pending, &answer)?;
        peers.push(Peer::start(rtc, socket, Some(make(n, audio, video)), epoch));
    }
    Ok(peers)
}

/// A room's subscribers: each offers one audio and one video slot per
/// publisher and lets `exchange` turn subscriber `n`'s offer into the
/// server's answer.
async fn join_subscribers(
    args: &MediaArgs,
    epoch: Instant,
    mut exchange: impl AsyncFnMut(usize, String) -> anyhow::Result<String>,
) -> anyhow::Result<Vec<Peer>> {
    let video_slots = if args.audio_only { 0 } else { args.publishers };
    let mut peers = Vec::with_capacity(args.subscribers);
    for n in 0..args.subscribers {
        let counting = args.counts(n);
        let (mut rtc, socket) = Peer::prepare_as(args.bind, counting).await?;
        let (offer, pending) = offer_subscribe(&mut rtc, args.publishers, video_slots)?;
        let answer = exchange(n, offer).await?;
        accept(&mut rtc, pending, &answer)?;
        peers.push(Peer::start_as(rtc, socket, None, epoch, counting));
    }
    Ok(peers)
}
