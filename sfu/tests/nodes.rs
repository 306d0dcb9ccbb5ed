//! A media cluster of two standalone `sfu` processes on loopback, driven
//! as one by `SfuNodes`: rooms placed by headroom, a node refusing a
//! wrong token, a node killed with SIGKILL under a call whose sessions
//! are reported lost and carry media again on the other node, and a call
//! too big for one node spanning both over their QUIC relays (media both
//! ways, layers switching across the relay, every relayed datagram
//! accounted for).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MEDIA_DEADLINE, Peer, Streaming, Subscriber, flowing, standalone};
use confer_sfu::api::{LostReason, ParticipantId, Role, RoomId, SfuControl, SfuError, SfuEvent};
use confer_sfu::nodes::{NodeSpec, SfuNodes};
use str0m::media::Mid;

const TOKEN: &str = "node-token";

fn spec(base: &str, max_participants: u64) -> NodeSpec {
    NodeSpec {
        max_participants,
        ..NodeSpec::new(base, Some(TOKEN.to_owned()))
    }
}

/// Joins a session with a fresh peer's offer; its id.
async fn join(sfu: &SfuNodes, room: &RoomId, role: Role) -> Result<ParticipantId, SfuError> {
    let mut peer = Peer::new();
    let (offer, _) = match role {
        Role::Publish => {
            let (offer, pending, _, _) = peer.offer_publish(false);
            (offer, pending)
        }
        _ => peer.offer_subscribe(),
    };
    let id = ParticipantId::random();
    sfu.join_as(room, id, role, offer, None).await.map(|_| id)
}

/// Rooms placed on each node, from the nodes' reports.
fn rooms_per_node(sfu: &SfuNodes) -> Vec<u64> {
    sfu.nodes().iter().map(|n| n.rooms).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_go_to_the_node_with_the_most_headroom() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (_a, a) = standalone(TOKEN, &[]);
    let (_b, b) = standalone(TOKEN, &[]);

    // A node that refuses the token is a mistake found at start.
    let wrong = NodeSpec::new(&a, Some("wrong".to_owned()));
    let refused = SfuNodes::connect(vec![wrong, spec(&b, 2)]).await;
    match refused {
        Err(SfuError::Start(why)) => assert!(why.contains("401"), "{why}"),
        other => panic!("a wrong token was accepted: {other:?}"),
    }

    // Two sessions fill a node here.
    let sfu = SfuNodes::connect(vec![spec(&a, 2), spec(&b, 2)])
        .await
        .unwrap();
    assert!(sfu.health().is_ok());
    let first = RoomId::from("first");
    join(&sfu, &first, Role::Publish).await.unwrap();
    // Both idle: the tie goes to the node with fewer rooms (the first).
    assert_eq!(rooms_per_node(&sfu), [1, 0]);
    join(&sfu, &first, Role::Subscribe).await.unwrap();
    // The first node is full; the next room goes to the second, though
    // the first has as many rooms.
    let second = RoomId::from("second");
    sfu.create_room(&second).await.unwrap();
    assert_eq!(rooms_per_node(&sfu), [1, 1]);
    // A placed room keeps its node.
    join(&sfu, &second, Role::Publish).await.unwrap();
    join(&sfu, &second, Role::Subscribe).await.unwrap();
    assert_eq!(rooms_per_node(&sfu), [1, 1]);
    // Both full: a new room is refused, an existing one still joins.
    assert!(matches!(
        sfu.create_room(&RoomId::from("third")).await,
        Err(SfuError::Overloaded)
    ));
    join(&sfu, &first, Role::Subscribe).await.unwrap();
    let reports = sfu.nodes();
    assert_eq!(reports[0].participants, 3);
    assert!(reports.iter().all(|n| n.up && n.headroom <= 0.0));
    let mut metrics = String::new();
    confer_sfu::http::write_node_reports(&mut metrics, &reports);
    assert!(
        metrics.contains(&format!("sfu_node_participants{{node=\"{a}\"}} 3")),
        "{metrics}"
    );

    // Sessions that leave make room, and their room is placed afresh.
    sfu.close_room(&first).await.unwrap();
    assert_eq!(rooms_per_node(&sfu), [0, 1]);
    // The first node's own report still counts the closed sessions
    // until its next health answer; once it has, it takes the room.
    let third = RoomId::from("third");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sfu.create_room(&third).await {
            Ok(()) => break,
            Err(SfuError::Overloaded) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no room for a call on an emptied node: {e}"),
        }
    }
    assert_eq!(rooms_per_node(&sfu), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_call_loses_its_sessions_and_the_call_resumes_on_the_other() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (mut a, a_base) = standalone(TOKEN, &[]);
    let (_b, b_base) = standalone(TOKEN, &[]);
    let sfu: Arc<SfuNodes> = SfuNodes::connect(vec![spec(&a_base, 100), spec(&b_base, 100)])
        .await
        .unwrap();
    let mut events = sfu.events(sfu.last_event());
    let room = RoomId::from("call");

    let (first, p, s) = call(&sfu, &room).await;
    // Both idle: the first node takes it.
    assert_eq!(rooms_per_node(&sfu), [1, 0]);
    let received = media(first).await;
    assert!(flowing(&received), "no media before the kill");

    a.kill();
    let killed = Instant::now();
    let mut lost = Vec::new();
    while lost.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the sessions are reported lost")
            .unwrap();
        for e in batch {
            if let SfuEvent::ParticipantLost {
                participant,
                reason,
                ..
            } = e.event
            {
                assert_eq!(reason, LostReason::NodeFailed);
                lost.push(participant);
            }
        }
    }
    lost.sort_by_key(|p| p.0);
    let mut expected = vec![p, s];
    expected.sort_by_key(|p| p.0);
    assert_eq!(lost, expected);
    let noticed = killed.elapsed();
    let reports = sfu.nodes();
    assert!(!reports[0].up && reports[1].up, "{reports:?}");
    assert_eq!(rooms_per_node(&sfu), [0, 0]);
    // The media cluster as a whole is still in service.
    assert!(sfu.health().is_ok(), "{:?}", sfu.health());
    // Nothing of the lost sessions is left to drive.
    assert!(matches!(
        sfu.leave(p).await,
        Err(SfuError::UnknownParticipant)
    ));

    // The same call opens new sessions: they go to the live node.
    let (again, _, _) = call(&sfu, &room).await;
    assert_eq!(rooms_per_node(&sfu), [0, 1]);
    let received = media(again).await;
    assert!(flowing(&received), "no media on the other node");
    let resumed = killed.elapsed();
    eprintln!("node killed: sessions lost after {noticed:?}, media again after {resumed:?}");
    assert!(
        resumed < Duration::from_secs(5),
        "media resumed only {resumed:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_big_for_one_node_spans_two_over_the_relay() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let relay = [("CONFER_SFU_RELAY__LISTEN", "127.0.0.1:0")];
    let (_a, a) = standalone(TOKEN, &relay);
    let (_b, b) = standalone(TOKEN, &relay);
    // Two sessions fill the first node.
    let sfu = SfuNodes::connect(vec![spec(&a, 2), spec(&b, 100)])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sfu.nodes().iter().all(|n| n.relay) {
        assert!(
            Instant::now() < deadline,
            "relays not reported: {:?}",
            sfu.nodes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let room = RoomId::from("all-hands");
    // A publisher and a viewer of both publishers on the first node; the
    // call then spans the second, where the other publisher and viewer go.
    let (first, first_audio, first_video) = publish(&sfu, &room).await;
    let (near, _) = view_both(&sfu, &room).await;
    assert_eq!(rooms_per_node(&sfu), [1, 0]);
    let (second, second_audio, second_video) = publish(&sfu, &room).await;
    let (far, far_id) = view_both(&sfu, &room).await;
    assert_eq!(rooms_per_node(&sfu), [1, 1]);

    let streams = [
        Streaming::start_tagged(first, first_audio, first_video, 1),
        Streaming::start_tagged(second, second_audio, second_video, 2),
    ];
    // Each phase runs until what it waits for holds, or fails at the
    // deadline: a slow machine takes longer, never fails for it.
    let run = |mut peer: Peer, mut got: Subscriber, done: fn(&Subscriber) -> bool| {
        tokio::task::spawn_blocking(move || {
            let reached = peer.run_until(Instant::now() + MEDIA_DEADLINE, &mut got, done);
            (peer, got, reached)
        })
    };
    // Media both ways: each viewer gets the publisher on its own node and
    // the one on the other, through the relay.
    let both = |s: &Subscriber| {
        [("audio", 1), ("audio", 2), ("video", 1), ("video", 2)]
            .iter()
            .all(|k| s.by_tag.get(k).copied().unwrap_or(0) > 30)
    };
    let near_rx = run(near, Subscriber::default(), both);
    let (far, got, reached) = run(far, Subscriber::default(), both).await.unwrap();
    assert!(reached, "far viewer: {:?}", got.by_tag);
    let (_near, near_got, reached) = near_rx.await.unwrap();
    assert!(reached, "near viewer: {:?}", near_got.by_tag);
    assert_eq!(near_got.corrupt, 0);

    // Layers switch across the relay: thumbnails, then the full picture
    // again, each switch on a keyframe.
    let thumbnail = confer_sfu::api::Preference {
        max_height: Some(180),
        paused: false,
    };
    sfu.set_preference(far_id, thumbnail).await.unwrap();
    let at_layer_0 = |s: &Subscriber| {
        s.last_layer == Some(0) && s.video_log.iter().rev().take(40).all(|e| e.1 == 0)
    };
    let (far, got, reached) = run(far, got, at_layer_0).await.unwrap();
    assert!(reached, "no switch to thumbnails: {:?}", got.layers);
    sfu.set_preference(far_id, confer_sfu::api::Preference::default())
        .await
        .unwrap();
    let above_0 = |s: &Subscriber| s.last_layer.is_some_and(|l| l > 0);
    let (_far, got, reached) = run(far, got, above_0).await.unwrap();
    assert!(reached, "no switch back up: {:?}", got.layers);
    assert_eq!(got.corrupt, 0);
    eprintln!(
        "far viewer: layers {:?}, by publisher {:?}",
        got.layers, got.by_tag
    );
    for s in streams {
        s.stop();
    }

    // Every datagram one node's relay sent, the other's received.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [from_a, from_b] = [&a, &b].map(|base| relay_counts(base));
    let (from_a, from_b) = (from_a.await, from_b.await);
    eprintln!("relay a: {from_a:?}, b: {from_b:?}");
    assert!(from_a["sent"] > 100 && from_b["sent"] > 100);
    assert_eq!(from_a["sent"], from_b["received"]);
    assert_eq!(from_b["sent"], from_a["received"]);
    assert_eq!(from_a["malformed"] + from_b["malformed"], 0);
}

/// A publisher of audio and simulcast video joined to `room`, not yet
/// connected, with its mids.
async fn publish(sfu: &SfuNodes, room: &RoomId) -> (Peer, Mid, Mid) {
    let mut peer = Peer::new();
    let (offer, pending, audio, video) = peer.offer_publish(true);
    let joined = sfu
        .join_as(room, ParticipantId::random(), Role::Publish, offer, None)
        .await
        .unwrap();
    peer.accept_answer(pending, &joined.answer);
    (peer, audio, video)
}

/// A viewer with room for two publishers joined to `room`; its id.
async fn view_both(sfu: &SfuNodes, room: &RoomId) -> (Peer, ParticipantId) {
    let mut peer = Peer::new();
    let (offer, pending) = confer_sfu::testing::offer_slots(&mut peer.rtc, 2, 2);
    let id = ParticipantId::random();
    let joined = sfu
        .join_as(room, id, Role::Subscribe, offer, None)
        .await
        .unwrap();
    peer.accept_answer(pending, &joined.answer);
    (peer, id)
}

/// A node's relay counters, from its `/metrics`.
async fn relay_counts(base: &str) -> std::collections::BTreeMap<String, u64> {
    let text = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("sfu_relay_")?.split_once("_total ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A publisher (with its audio and video mids) and a subscriber joined to
/// `room`, not yet connected.
struct Call {
    publisher: Peer,
    audio: Mid,
    video: Mid,
    subscriber: Peer,
}

async fn call(sfu: &SfuNodes, room: &RoomId) -> (Call, ParticipantId, ParticipantId) {
    let mut publisher = Peer::new();
    let (offer, pending, audio, video) = publisher.offer_publish(true);
    let (p, s) = (ParticipantId::random(), ParticipantId::random());
    let joined = sfu
        .join_as(room, p, Role::Publish, offer, None)
        .await
        .unwrap();
    publisher.accept_answer(pending, &joined.answer);
    let mut subscriber = Peer::new();
    let (offer, pending) = subscriber.offer_subscribe();
    let joined = sfu
        .join_as(room, s, Role::Subscribe, offer, None)
        .await
        .unwrap();
    subscriber.accept_answer(pending, &joined.answer);
    let call = Call {
        publisher,
        audio,
        video,
        subscriber,
    };
    (call, p, s)
}

/// Streams from the publisher until the subscriber receives media (or
/// [`MEDIA_DEADLINE`] passes); what it received.
async fn media(call: Call) -> Subscriber {
    let Call {
        publisher,
        audio,
        video,
        mut subscriber,
    } = call;
    let streaming = Streaming::start(publisher, audio, video);
    let received = tokio::task::spawn_blocking(move || {
        let mut got = Subscriber::default();
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut got, flowing);
        got
    })
    .await
    .unwrap();
    streaming.stop();
    received
}
