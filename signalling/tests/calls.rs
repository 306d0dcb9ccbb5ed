//! Calls end to end: real WebSocket clients speak the call protocol, and
//! str0m peers on loopback UDP carry the media, directly (peer-to-peer,
//! negotiated through `call_signal`) or through the SFU that `signalling`
//! runs in-process (`call_publish` / `call_subscribe`). Every media packet
//! carries a checked trailer naming its publisher.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::{sfu_node, sfu_node_with};
use common::{TestServer, Ws, default_clock, test_config};
use confer_signalling::SignallingConfig;
use confer_signalling::config::SfuNodeConfig;
use serde_json::{Value, json};

use common::calls::*;

/// Media tests run one at a time: real-time peers are CPU-bound on a
/// small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Snapshots until call `id` has ended; returns the last.
async fn ended(ws: &mut Ws, id: &Value) -> Value {
    loop {
        let call = snapshot(ws).await;
        if call["state"] == "ended" && &call["id"] == id {
            return call;
        }
    }
}

async fn sfu_is_idle(server: &TestServer) -> bool {
    let stats = server.services.sfu.stats().await.unwrap();
    stats.workers.iter().all(Vec::is_empty)
}

/// Waits (10 s at most) until the SFU has no session left.
async fn until_sfu_idle(server: &TestServer) {
    let started = Instant::now();
    while !sfu_is_idle(server).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SFU sessions still open 10 s after the call ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (10 s at most) until `peer` has received more `kind` packets
/// from `tag` than `before`: media keeps flowing.
async fn until_more(peer: &LivePeer, kind: &'static str, tag: u8, before: u64) {
    let started = Instant::now();
    while peer.received(kind, tag) <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no more {kind} from {tag} within 10 s (still {before})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_person_call_is_peer_to_peer_and_recorded_in_the_conversation() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = TestServer::start().await;
    let (mut p, _app) = people(&server, &["ann", "bob"]).await;
    let conv = conversation(&mut p).await;
    let ack = p[0]
        .ws
        .request(json!({"type": "call_start", "conversation_id": conv, "media": "video"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let call = ack["call"]["id"].clone();
    assert_eq!(state_of(&ack["call"], &p[0].user), "joined");

    let ring = snapshot(&mut p[1].ws).await;
    assert_eq!(state_of(&ring, &p[1].user), "ringing", "{ring}");
    let join = p[1]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(join["type"], "ack", "{join}");
    assert!(join["ice_servers"].is_array());
    let ta = p[0].ws.ephemeral_of("call_topology").await["event"].clone();
    let tb = p[1].ws.ephemeral_of("call_topology").await["event"].clone();
    assert_eq!(ta["topology"], "p2p");
    assert_eq!(ta["peer"], p[1].user.as_str());
    assert_eq!(ta["offerer"], true);
    assert_eq!(tb["offerer"], false);

    let (first, rest) = p.split_at_mut(1);
    let (a, b) = p2p(&call, &mut first[0], &mut rest[0]).await;
    let took = until_media(&a, &[2], 30).await;
    until_media(&b, &[1], 30).await;
    eprintln!("peer-to-peer media flowing {took:?} after negotiation");
    assert_eq!(a.corrupt() + b.corrupt(), 0);
    // The SFU carried none of it: it has no participant at all.
    assert!(sfu_is_idle(&server).await);

    // Ann hangs up: one person left with nobody ringing ends the call.
    let left = p[0]
        .ws
        .request(json!({"type": "call_leave", "call_id": call}))
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    let end = ended(&mut p[1].ws, &call).await;
    assert_eq!(end["reason"], "completed", "{end}");
    drop((a, b));

    let history = p[1]
        .ws
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    let messages = history["messages"].as_array().unwrap();
    let started = &messages[messages.len() - 2];
    let finished = &messages[messages.len() - 1];
    assert_eq!(started["data"]["call"]["event"], "started", "{history}");
    assert_eq!(started["author"]["user_id"], p[0].user.as_str());
    assert_eq!(finished["data"]["call"]["event"], "ended");
    assert_eq!(finished["data"]["call"]["reason"], "completed");
    assert_eq!(finished["author"]["kind"], "app");
    assert!(finished["text"].as_str().unwrap().starts_with("Call ended"));
    let mut who: Vec<String> = finished["data"]["call"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    who.sort();
    let mut expected = vec![p[0].user.clone(), p[1].user.clone()];
    expected.sort();
    assert_eq!(who, expected);
    let seen = conforms(&p);
    assert_seen(
        &seen,
        &[
            "ephemeral.call",
            "ephemeral.call_topology",
            "ephemeral.call_signal",
            "ack",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_person_call_goes_through_the_sfu_with_in_call_features() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = TestServer::start().await;
    three_person_sfu_call(&server).await;
}

/// The same call with the SFU in another process's place: signalling
/// (`sfu.nodes`) drives the standalone SFU's own HTTP front (its control
/// API, over loopback HTTP with its token), and every in-call feature
/// still works, the SFU's events included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_person_call_goes_through_a_standalone_sfu() {
    let _serial = SERIAL.lock().await;
    let (base, sfu, served) = confer_sfu::testing::serve_front("sfu-token").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config: SignallingConfig = test_config(dir.path());
    config.sfu.nodes = vec![SfuNodeConfig::new(base, Some("sfu-token".to_owned()))];
    let server = TestServer::start_with(config, default_clock()).await;
    three_person_sfu_call(&server).await;
    // Everything went through the standalone SFU, none through another.
    assert!(confer_sfu::SfuControl::last_event(sfu.as_ref()) > 0);
    served.abort();
}

/// Three people in a video call through the SFU: media, named slots,
/// mute, dynacast, screen sharing, per-slot quality, the active speaker,
/// and the end.
async fn three_person_sfu_call(server: &TestServer) {
    let (mut p, _app) = people(server, &["ann", "bob", "carol"]).await;
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "video").await;
    for i in [1, 2] {
        let join = p[i]
            .ws
            .request(json!({"type": "call_join", "call_id": call}))
            .await;
        assert_eq!(join["type"], "ack", "{join}");
    }
    // Everyone ends on the SFU topology (Ann and Bob saw p2p first).
    for person in &mut p {
        loop {
            let t = person.ws.ephemeral_of("call_topology").await;
            if t["event"]["topology"] == "sfu" {
                break;
            }
        }
    }
    let mut media = Vec::new();
    for person in &mut p {
        media.push(sfu_sessions(&call, person, 2).await);
    }
    for (i, m) in media.iter().enumerate() {
        let others: Vec<u8> = (1..=3).filter(|t| usize::from(*t) != i + 1).collect();
        until_media(&m.subscribe, &others, 30).await;
        assert_eq!(m.subscribe.corrupt(), 0);
    }

    // Each receive slot is named: four slots, showing the two others.
    for (i, person) in p.iter_mut().enumerate() {
        let mut slots: HashMap<String, String> = HashMap::new();
        while slots.len() < 4 {
            let e = person.ws.ephemeral_of("call_slot").await["event"].clone();
            if let Some(user) = e["user_id"].as_str() {
                slots.insert(e["mid"].as_str().unwrap().to_owned(), user.to_owned());
            }
        }
        let mut shown: Vec<&String> = slots.values().collect();
        shown.sort();
        shown.dedup();
        assert_eq!(shown.len(), 2, "person {i}: {slots:?}");
        assert!(!shown.contains(&&person.user));
    }

    // Mute: the others see Bob's microphone off.
    let muted = p[1]
        .ws
        .request(json!({"type": "call_media", "call_id": call, "audio": false}))
        .await;
    assert_eq!(muted["type"], "ack", "{muted}");
    loop {
        let c = snapshot(&mut p[0].ws).await;
        let bob = c["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["user_id"] == p[1].user.as_str())
            .unwrap()
            .clone();
        if bob["audio"] == false {
            break;
        }
    }

    // Dynacast: Ann and Carol show everyone as thumbnails, so nobody needs
    // Bob's full layer and Bob is asked to pause it.
    for i in [0, 2] {
        let q = p[i]
            .ws
            .request(json!({"type": "call_quality", "call_id": call, "quality": "thumbnail"}))
            .await;
        assert_eq!(q["type"], "ack", "{q}");
    }
    loop {
        let e = p[1].ws.ephemeral_of("call_layer").await["event"].clone();
        if e["rid"] == "f" && e["needed"] == false {
            break;
        }
    }
    // Screen sharing: Ann adds a video track to her publish session and
    // names it; Bob adds a video slot to his subscribe session and is told
    // that it shows Ann's screen.
    {
        use str0m::change::SdpAnswer;
        use str0m::media::{Direction, MediaKind};
        let (offer, pending, screen_mid) = media[0].publish.with(|i| {
            let mut api = i.rtc.sdp_api();
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            (offer.to_sdp_string(), pending, mid.to_string())
        });
        let answer = p[0]
            .ws
            .request(json!({"type": "call_publish", "call_id": call, "sdp": offer, "screen_mid": screen_mid}))
            .await;
        assert_eq!(answer["type"], "call_answer", "{answer}");
        media[0].publish.with(|i| {
            let a = SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap();
            i.rtc.sdp_api().accept_answer(pending, a).unwrap();
        });
        p[0].ws
            .request(json!({"type": "call_media", "call_id": call, "screen": true}))
            .await;
        let (offer, pending) = media[1]
            .subscribe
            .with(|i| confer_sfu::testing::offer_slots(&mut i.rtc, 0, 1));
        let answer = p[1]
            .ws
            .request(json!({"type": "call_subscribe", "call_id": call, "sdp": offer}))
            .await;
        assert_eq!(answer["type"], "call_answer", "{answer}");
        media[1].subscribe.with(|i| {
            confer_sfu::testing::accept_answer(
                &mut i.rtc,
                pending,
                answer["sdp"].as_str().unwrap(),
            );
        });
        loop {
            let e = p[1].ws.ephemeral_of("call_slot").await["event"].clone();
            if e["screen"] == true {
                assert_eq!(e["user_id"], p[0].user.as_str(), "{e}");
                break;
            }
        }
        // Bob's other slots still get Ann's and Carol's camera video.
        let before = media[1].subscribe.received("video", 1);
        until_more(&media[1].subscribe, "video", 1, before).await;
    }

    // A quality for one slot (spotlight) is accepted too.
    let q = p[0]
        .ws
        .request(
            json!({"type": "call_quality", "call_id": call, "mid": "1", "quality": "spotlight"}),
        )
        .await;
    assert_eq!(q["type"], "ack", "{q}");

    // The active speaker comes from the SFU's audio levels.
    let speaker = p[0].ws.ephemeral_of("call_speaker").await["event"].clone();
    assert_eq!(speaker["call_id"], call);

    for person in &mut p {
        person
            .ws
            .request(json!({"type": "call_leave", "call_id": call}))
            .await;
    }
    drop(media);
    let end = ended(&mut p[0].ws, &call).await;
    assert_eq!(end["reason"], "completed");
    until_sfu_idle(server).await;
    let seen = conforms(&p);
    assert_seen(
        &seen,
        &[
            "call_answer",
            "ephemeral.call",
            "ephemeral.call_topology",
            "ephemeral.call_slot",
            "ephemeral.call_speaker",
            "ephemeral.call_layer",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_to_peer_call_upgrades_when_the_third_joins_and_media_resumes() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = TestServer::start().await;
    let (mut p, _app) = people(&server, &["ann", "bob", "carol"]).await;
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "video").await;
    p[1].ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    for i in [0, 1] {
        assert_eq!(
            p[i].ws.ephemeral_of("call_topology").await["event"]["topology"],
            "p2p"
        );
    }
    let (head, tail) = p.split_at_mut(1);
    let (a, b) = p2p(&call, &mut head[0], &mut tail[0]).await;
    until_media(&a, &[2], 30).await;
    until_media(&b, &[1], 30).await;

    // Carol joins: everyone is told to move to the SFU. The peer-to-peer
    // media keeps flowing until the SFU media arrives (make before break).
    let upgraded_at = Instant::now();
    let join = p[2]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(join["type"], "ack", "{join}");
    let mut media = Vec::new();
    for person in &mut p {
        let t = person.ws.ephemeral_of("call_topology").await;
        assert_eq!(t["event"]["topology"], "sfu", "{t}");
        media.push(sfu_sessions(&call, person, 2).await);
    }
    let mut resumed = Vec::new();
    for (i, m) in media.iter().enumerate() {
        let others: Vec<u8> = (1..=3).filter(|t| usize::from(*t) != i + 1).collect();
        until_media(&m.subscribe, &others, 5).await;
        resumed.push(upgraded_at.elapsed());
    }
    eprintln!("media through the SFU for all three within {resumed:?} of the third join");
    let p2p_before = a.received("video", 2);
    drop((a, b));
    assert!(p2p_before > 30);

    // Nobody dropped: all three are still joined.
    let state = server.services.calls.active_for(p[0].user.parse().unwrap());
    assert_eq!(state.len(), 1);
    for person in &p {
        let user: confer_signalling::ids::UserId = person.user.parse().unwrap();
        let me = state[0]
            .participants
            .iter()
            .find(|x| x.user_id == user)
            .unwrap();
        assert_eq!(me.state, confer_signalling::calls::MemberState::Joined);
    }
    for m in &media {
        assert_eq!(m.subscribe.corrupt(), 0);
        assert!(
            m.publish
                .with(|i| i.publisher.as_ref().unwrap().packets_sent)
                > 0
        );
    }
}

/// A server whose calls ring for `ring_secs`, go back to peer-to-peer
/// when two remain if `back_to_p2p`, and wait `grace_secs` for a lost
/// connection.
async fn server_with(
    ring_secs: u64,
    back_to_p2p: bool,
    grace_secs: u64,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config: SignallingConfig = test_config(dir.path());
    config.calls.ring_timeout_secs = ring_secs;
    config.calls.back_to_p2p = back_to_p2p;
    config.calls.reconnect_grace_secs = grace_secs;
    config.calls.turn = Some(confer_signalling::config::TurnConfig {
        urls: vec!["turn:turn.example.com:3478?transport=udp".to_owned()],
        secret: "a-test-secret-of-16+".to_owned(),
        ttl_secs: 3600,
    });
    (TestServer::start_with(config, default_clock()).await, dir)
}

async fn last_message(ws: &mut Ws, conv: &Value) -> Value {
    let history = ws
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_declines_busy_callees_and_unanswered_calls_end_as_documented() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = server_with(1, false, 20).await;
    let (mut p, app) = people(&server, &["ann", "bob", "carol", "eve"]).await;
    let mut ids = Vec::new();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let other = p[b].user.clone();
        let ack = p[a]
            .ws
            .request(json!({"type": "create_conversation", "title": "pair", "members": [other]}))
            .await;
        ids.push(ack["conversation"]["id"].clone());
    }
    let (ab, ac, bc) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // Eve is in none of them: she can neither start nor join.
    let refused = p[3]
        .ws
        .request(json!({"type": "call_start", "conversation_id": ab, "media": "audio"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let call = start_call(&mut p[0].ws, &ab, "audio").await;
    let refused = p[3]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(refused["id"].is_string(), "the error names its request");
    // The application's bot cannot call.
    let mut bot = Ws::connect_bot(&server, &app).await;
    let refused = bot
        .request(json!({"type": "call_start", "conversation_id": ab, "media": "audio"}))
        .await;
    assert_eq!(refused["code"], "invalid_request", "{refused}");
    // A second call in the same conversation is refused with the first's id.
    let refused = p[1]
        .ws
        .request(json!({"type": "call_start", "conversation_id": ab, "media": "audio"}))
        .await;
    assert_eq!(refused["code"], "call_in_progress", "{refused}");
    // Signalling before both joined has no peer.
    let to = p[1].user.clone();
    let refused = p[0]
        .ws
        .request(json!({"type": "call_signal", "call_id": call, "to": to, "signal": {}}))
        .await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    // Publishing to the SFU in a peer-to-peer call is the wrong topology.
    let refused = p[0]
        .ws
        .request(json!({"type": "call_publish", "call_id": call, "sdp": "v=0"}))
        .await;
    assert_eq!(refused["code"], "wrong_topology", "{refused}");

    // Declined: Bob says no; Ann alone with nobody ringing → ended.
    let declined = p[1]
        .ws
        .request(json!({"type": "call_decline", "call_id": call}))
        .await;
    assert_eq!(declined["type"], "ack", "{declined}");
    let end = ended(&mut p[0].ws, &call).await;
    assert_eq!(end["reason"], "declined", "{end}");
    assert_eq!(state_of(&end, &p[1].user), "declined");
    let m = last_message(&mut p[0].ws, &ab).await;
    assert_eq!(m["text"], "Call declined");
    assert_eq!(m["data"]["call"]["reason"], "declined");
    // Declining again: the call is gone.
    let refused = p[1]
        .ws
        .request(json!({"type": "call_decline", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "not_found", "{refused}");

    // Busy: Bob and Carol are in a call; Ann calls Carol.
    let bc_call = p[1]
        .ws
        .request(json!({"type": "call_start", "conversation_id": bc, "media": "audio"}))
        .await["call"]["id"]
        .clone();
    let joined = p[2]
        .ws
        .request(json!({"type": "call_join", "call_id": bc_call}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    let busy = p[0]
        .ws
        .request(json!({"type": "call_start", "conversation_id": ac, "media": "video"}))
        .await;
    assert_eq!(busy["type"], "ack", "{busy}");
    let end = ended(&mut p[0].ws, &busy["call"]["id"]).await;
    assert_eq!(end["reason"], "busy", "{end}");
    assert_eq!(state_of(&end, &p[2].user), "busy");
    assert_eq!(
        last_message(&mut p[0].ws, &ac).await["text"],
        "Call not answered: busy"
    );
    // Carol may not start another call while in one.
    let refused = p[2]
        .ws
        .request(json!({"type": "call_start", "conversation_id": ac, "media": "audio"}))
        .await;
    assert_eq!(refused["code"], "busy", "{refused}");
    p[1].ws
        .request(json!({"type": "call_leave", "call_id": bc_call}))
        .await;
    assert_eq!(ended(&mut p[2].ws, &bc_call).await["reason"], "completed");

    // Unanswered: nobody answers within ring_timeout_secs (1 s) → missed.
    let call = start_call(&mut p[0].ws, &ab, "audio").await;
    assert_eq!(
        state_of(&snapshot(&mut p[1].ws).await, &p[1].user),
        "ringing"
    );
    let end = ended(&mut p[1].ws, &call).await;
    assert_eq!(end["reason"], "missed", "{end}");
    assert_eq!(state_of(&end, &p[1].user), "missed");
    assert_eq!(last_message(&mut p[1].ws, &ab).await["text"], "Missed call");
    let refused = p[1]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "not_found", "{refused}");

    // Cancelled: Ann hangs up while Bob's phone still rings.
    let call = start_call(&mut p[0].ws, &ab, "audio").await;
    p[0].ws
        .request(json!({"type": "call_leave", "call_id": call}))
        .await;
    assert_eq!(ended(&mut p[1].ws, &call).await["reason"], "cancelled");

    // With [calls.turn], each user gets a TURN credential of its own.
    let ack = p[1]
        .ws
        .request(json!({"type": "call_start", "conversation_id": bc, "media": "audio"}))
        .await;
    let turn = &ack["ice_servers"][0];
    assert!(
        turn["username"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", p[1].user)),
        "{ack}"
    );
    assert!(turn["credential"].as_str().unwrap().len() == 28, "{ack}");
    p[1].ws
        .request(json!({"type": "call_leave", "call_id": ack["call"]["id"]}))
        .await;

    assert!(sfu_is_idle(&server).await);
    assert_seen(&conforms(&p), &["error", "ephemeral.call"]);
}

/// The 35th participant is refused; a member removed from the
/// conversation, or locked, is dropped from its call; with `back_to_p2p`
/// the last two go back to peer-to-peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_limit_removal_and_the_way_back_to_peer_to_peer() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = server_with(45, true, 20).await;
    let names: Vec<String> = (0..35).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (mut p, app) = people(&server, &names).await;
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "audio").await;
    for person in p.iter_mut().take(34).skip(1) {
        let ack = person
            .ws
            .request(json!({"type": "call_join", "call_id": call}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = p[34]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "call_full", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("34"),
        "{refused}"
    );
    // Signalling peer-to-peer in an SFU call is the wrong topology.
    let to = p[1].user.clone();
    let refused = p[0]
        .ws
        .request(json!({"type": "call_signal", "call_id": call, "to": to, "signal": {}}))
        .await;
    assert_eq!(refused["code"], "wrong_topology", "{refused}");

    // The application removes user1 from the conversation: dropped.
    let mut bot = Ws::connect_bot(&server, &app).await;
    let removed = bot
        .request(json!({"type": "remove_member", "conversation_id": conv, "user_id": p[1].user}))
        .await;
    assert_eq!(removed["type"], "ack", "{removed}");
    loop {
        let c = snapshot(&mut p[0].ws).await;
        if state_of(&c, &p[1].user) == "left" {
            break;
        }
    }
    let refused = p[1]
        .ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // The application locks user3: dropped at once, without the grace
    // period a lost connection gets.
    let locked = server
        .post(&format!("/api/v1/users/{}/lock", p[3].user))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert!(locked.status().is_success(), "{}", locked.status());
    loop {
        let c = snapshot(&mut p[0].ws).await;
        if state_of(&c, &p[3].user) == "left" {
            break;
        }
    }

    // Everyone but user0 and user2 leaves; the two are told to go back
    // to peer-to-peer, user0 (who joined first) making the offer.
    for person in p.iter_mut().take(34).skip(4) {
        let ack = person
            .ws
            .request(json!({"type": "call_leave", "call_id": call}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for (i, offerer) in [(0, true), (2, false)] {
        loop {
            let t = p[i].ws.ephemeral_of("call_topology").await["event"].clone();
            if t["topology"] == "p2p" {
                assert_eq!(t["offerer"], offerer, "{t}");
                break;
            }
        }
    }
}

/// A device whose WebSocket breaks keeps its place and its media for the
/// grace period: it reconnects, sees the call in `welcome`, takes its
/// place back with `call_join` and is told its slots again. One that does
/// not come back leaves when the grace period ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_loses_its_websocket_comes_back_to_its_call() {
    let _serial = SERIAL.lock().await;
    let (server, _dir) = server_with(45, false, 2).await;
    let (mut p, _app) = people(&server, &["ann", "bob", "carol"]).await;
    let conv = conversation(&mut p).await;
    let call = p[0]
        .ws
        .request(json!({"type": "call_start", "conversation_id": conv, "media": "video", "device_id": "dev-0"}))
        .await["call"]["id"]
        .clone();
    for i in [1, 2] {
        p[i].ws
            .request(json!({"type": "call_join", "call_id": call, "device_id": format!("dev-{i}")}))
            .await;
    }
    let mut media = Vec::new();
    for person in &mut p {
        loop {
            let t = person.ws.ephemeral_of("call_topology").await;
            if t["event"]["topology"] == "sfu" {
                break;
            }
        }
        media.push(sfu_sessions(&call, person, 2).await);
    }
    until_media(&media[1].subscribe, &[1, 3], 20).await;

    // Bob's WebSocket breaks; his media goes on meanwhile.
    let placeholder = Ws::connect(&server, &p[1].token, None).await;
    drop(std::mem::replace(&mut p[1].ws, placeholder));
    let before = media[1].subscribe.received("video", 1);
    until_more(&media[1].subscribe, "video", 1, before).await;
    // (The placeholder connection is a second device of Bob's: it is not
    // the one in the call.)
    let refused = p[1]
        .ws
        .request(json!({"type": "call_media", "call_id": call, "audio": false}))
        .await;
    assert_eq!(refused["code"], "not_joined", "{refused}");

    // Bob's client reconnects and takes its place back.
    p[1].ws = Ws::connect(&server, &p[1].token, None).await;
    let calls = p[1].ws.welcome["calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(state_of(&calls[0], &p[1].user), "joined");
    let back = p[1]
        .ws
        .request(json!({"type": "call_join", "call_id": call, "device_id": "dev-1"}))
        .await;
    assert_eq!(back["type"], "ack", "{back}");
    let t = p[1].ws.ephemeral_of("call_topology").await;
    assert_eq!(t["event"]["topology"], "sfu");
    let mut slots = HashMap::new();
    while slots.len() < 4 {
        let e = p[1].ws.ephemeral_of("call_slot").await["event"].clone();
        slots.insert(e["mid"].as_str().unwrap().to_owned(), e["user_id"].clone());
    }
    let ok = p[1]
        .ws
        .request(json!({"type": "call_media", "call_id": call, "video": false}))
        .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    // The same sessions still carry media.
    let before = media[1].subscribe.received("audio", 3);
    until_more(&media[1].subscribe, "audio", 3, before).await;

    // Carol answers on another device: the first is told the call moved,
    // its media ends, and it can no longer hang up for her.
    let mut phone = Ws::connect(&server, &p[2].token, None).await;
    let moved = phone
        .request(json!({"type": "call_join", "call_id": call, "device_id": "carol-phone"}))
        .await;
    assert_eq!(moved["type"], "ack", "{moved}");
    let e = p[2].ws.ephemeral_of("call_moved").await;
    assert_eq!(e["event"]["call_id"], call);
    let refused = p[2]
        .ws
        .request(json!({"type": "call_leave", "call_id": call}))
        .await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    assert_eq!(
        phone.ephemeral_of("call_topology").await["event"]["topology"],
        "sfu"
    );
    let seen = conforms(&p);
    assert_seen(&seen, &["ephemeral.call_moved", "ephemeral.call_slot"]);
    drop(std::mem::replace(&mut p[2].ws, phone));

    // Carol's phone loses its connection for good: she leaves after 2 s.
    let lost_at = Instant::now();
    let placeholder = Ws::connect(&server, &p[2].token, None).await;
    drop(std::mem::replace(&mut p[2].ws, placeholder));
    loop {
        let c = snapshot(&mut p[0].ws).await;
        if state_of(&c, &p[2].user) == "left" {
            break;
        }
    }
    let waited = lost_at.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    drop(media);
}

/// A call going on when the server stops is recorded as interrupted when
/// it starts again: the conversation never keeps a start without an end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_by_a_restart_is_recorded_as_interrupted() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = default_clock();
    let server = TestServer::start_in(dir.path(), clock.clone()).await;
    let (mut p, _app) = people(&server, &["ann", "bob"]).await;
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "audio").await;
    drop(p);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), clock).await;
    let rows = server
        .services
        .messaging
        .store()
        .history(conv.as_str().unwrap().parse().unwrap(), None, None, 10)
        .await
        .unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last.body.text, "Call interrupted: the server restarted");
    let data = last.body.data.as_ref().unwrap();
    assert_eq!(data["call"]["id"], call);
    assert_eq!(data["call"]["reason"], "interrupted");
    assert!(
        server
            .services
            .messaging
            .store()
            .open_calls()
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

/// Ann, Bob and Carol in a video call on the SFU, each with both
/// sessions open and media reaching Ann: the people, the call id and their
/// media.
async fn three_on_the_sfu(server: &TestServer) -> (Vec<Person>, Value, Vec<SfuMedia>) {
    let (mut p, _app) = people(server, &["ann", "bob", "carol"]).await;
    let conv = conversation(&mut p).await;
    let call = start_call(&mut p[0].ws, &conv, "video").await;
    for i in [1, 2] {
        let join = p[i]
            .ws
            .request(json!({"type": "call_join", "call_id": call}))
            .await;
        assert_eq!(join["type"], "ack", "{join}");
    }
    for person in &mut p {
        while person.ws.ephemeral_of("call_topology").await["event"]["topology"] != "sfu" {}
    }
    let mut media = Vec::new();
    for person in &mut p {
        media.push(sfu_sessions(&call, person, 2).await);
    }
    until_media(&media[0].subscribe, &[2, 3], 10).await;
    (p, call, media)
}

/// A call too big for one SFU node spans two: with room for four sessions
/// on the first node, the third person's sessions (publish, then its
/// linked subscribe) go to the second, the nodes relay each other's
/// tracks, and everyone receives everyone else. When the second node dies
/// the call goes on: its sessions reopen on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_big_for_one_sfu_node_spans_two() {
    let _serial = SERIAL.lock().await;
    let relay = [("CONFER_SFU_RELAY__LISTEN", "127.0.0.1:0")];
    let mut nodes = [
        sfu_node_with("node-token", &relay),
        sfu_node_with("node-token", &relay),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut config = on_sfu_nodes(dir.path(), &nodes);
    config.sfu.nodes[0].max_participants = 4;
    let server = TestServer::start_with(config, default_clock()).await;
    let sfu = server.services.sfu.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sfu.nodes().iter().all(|n| n.relay) {
        assert!(std::time::Instant::now() < deadline, "{:?}", sfu.nodes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut p, call, mut media) = three_on_the_sfu(&server).await;
    everyone_receives_everyone(&media).await;
    let reports = sfu.nodes();
    assert_eq!(
        reports.iter().map(|n| n.participants).collect::<Vec<_>>(),
        [4, 2],
        "{reports:?}"
    );
    assert!(reports.iter().all(|n| n.rooms == 1), "{reports:?}");

    // The second node dies: only Carol's sessions are lost; she reopens
    // them on the first node (over its limit: the call is in progress, and
    // no other node is up), which has dropped the dead node's tracks, and
    // everyone receives everyone again.
    nodes[1].kill();
    let lost = p[2].ws.ephemeral_of("call_media_lost").await;
    assert_eq!(lost["event"]["reason"], "node_failed", "{lost}");
    let carol = media.pop().unwrap();
    drop(carol);
    let heard = |m: &SfuMedia| {
        (
            m.subscribe.received("audio", 3),
            m.subscribe.received("video", 3),
        )
    };
    let before = [heard(&media[0]), heard(&media[1])];
    media.push(sfu_sessions(&call, &mut p[2], 2).await);
    until_media(&media[2].subscribe, &[1, 2], 10).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (0..2).any(|i| {
        let (audio, video) = heard(&media[i]);
        audio < before[i].0 + 20 || video < before[i].1 + 20
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "Carol's new sessions are not heard"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reports = sfu.nodes();
    assert!(reports[0].up && !reports[1].up, "{reports:?}");
    assert_eq!(reports[0].participants, 6, "{reports:?}");
}

/// Everyone of the call opens both sessions afresh (after
/// `call_media_lost`), and media flows between all three again.
async fn reopen_media(call: &Value, p: &mut [Person]) -> Vec<SfuMedia> {
    let mut media = Vec::new();
    for person in p.iter_mut() {
        media.push(sfu_sessions(call, person, 2).await);
    }
    everyone_receives_everyone(&media).await;
    media
}

/// Waits until each of three people receives the other two.
async fn everyone_receives_everyone(media: &[SfuMedia]) {
    for (i, m) in media.iter().enumerate() {
        let others: Vec<u8> = (1..=3).filter(|t| usize::from(*t) != i + 1).collect();
        until_media(&m.subscribe, &others, 10).await;
    }
}

/// A test configuration whose calls go to the standalone SFU `nodes`.
fn on_sfu_nodes(
    dir: &std::path::Path,
    nodes: &[confer_sfu::testing::Standalone],
) -> SignallingConfig {
    let mut config: SignallingConfig = test_config(dir);
    config.sfu.nodes = nodes
        .iter()
        .map(|n| SfuNodeConfig::new(&n.base, Some("node-token".to_owned())))
        .collect();
    config
}

/// An SFU worker that dies under a call (made to panic through the SFU's
/// `#[doc(hidden)]` test hook: nothing a client sends can do it) does not
/// leave the call pointing at dead sessions: every joined device is told
/// `call_media_lost`, the call goes on, and the sessions it opens afresh
/// land on the live worker and carry media again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_dead_sfu_worker_reopens_its_media_on_a_live_one() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config: SignallingConfig = test_config(dir.path());
    config.sfu.workers = 2;
    config.sfu.pin_workers = false;
    let server = TestServer::start_with(config, default_clock()).await;
    let (mut p, call, media) = three_on_the_sfu(&server).await;

    let sfu = server.services.sfu.clone();
    let placed = loop {
        // Workers publish their participant counts every turn.
        if let Some(i) = sfu
            .health()
            .workers
            .iter()
            .position(|w| w.participants == 6)
        {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sfu.fail_worker_for_tests(placed).unwrap();
    for person in &mut p {
        let lost = person.ws.ephemeral_of("call_media_lost").await;
        assert_eq!(lost["event"]["call_id"], call, "{lost}");
        assert_eq!(lost["event"]["reason"], "worker_failed", "{lost}");
    }
    assert_eq!(sfu.health().alive(), 1);
    let metrics = server
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("sfu_worker_up{{worker=\"{placed}\"}} 0")),
        "{metrics}"
    );
    assert!(metrics.contains("sfu_ingress_dropped_total{"), "{metrics}");
    drop(media);
    // The call goes on with everyone in it (`call_publish` answers only a
    // joined device): new sessions go to the live worker, and media flows
    // again.
    let _media = reopen_media(&call, &mut p).await;
    assert_eq!(sfu.health().workers[1 - placed].participants, 6);
    let seen = conforms(&p);
    assert_seen(&seen, &["ephemeral.call_media_lost"]);
}

/// Calls placed on two standalone SFU nodes (`[[sfu.nodes]]`): the node
/// carrying a call is killed with SIGKILL; every device is told
/// `call_media_lost` (`node_failed`), the call goes on, and the sessions
/// the devices open afresh land on the other node and carry media again.
/// `/metrics` shows the nodes, the dead one down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_dead_sfu_node_reopens_its_media_on_another() {
    let _serial = SERIAL.lock().await;
    let mut nodes = [sfu_node("node-token"), sfu_node("node-token")];
    let dir = tempfile::tempdir().unwrap();
    let config = on_sfu_nodes(dir.path(), &nodes);
    let server = TestServer::start_with(config, default_clock()).await;
    let (mut p, call, media) = three_on_the_sfu(&server).await;

    let sfu = server.services.sfu.clone();
    let placed = sfu.nodes().iter().position(|n| n.rooms == 1).unwrap();
    nodes[placed].kill();
    for person in &mut p {
        let lost = person.ws.ephemeral_of("call_media_lost").await;
        assert_eq!(lost["event"]["call_id"], call, "{lost}");
        assert_eq!(lost["event"]["reason"], "node_failed", "{lost}");
    }
    let metrics = server
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dead = &nodes[placed].base;
    assert!(
        metrics.contains(&format!("sfu_node_up{{node=\"{dead}\"}} 0")),
        "{metrics}"
    );
    // One node down is not the signalling node out of service.
    let health: Value = server
        .get("/healthz")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["components"]["sfu"]["status"], "up", "{health}");
    drop(media);
    let _media = reopen_media(&call, &mut p).await;
    let reports = sfu.nodes();
    assert_eq!(reports[1 - placed].rooms, 1, "{reports:?}");
    assert_eq!(reports[1 - placed].participants, 6, "{reports:?}");
    let seen = conforms(&p);
    assert_seen(&seen, &["ephemeral.call_media_lost"]);
}
