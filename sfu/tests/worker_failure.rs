//! A worker that dies (here through the `#[doc(hidden)]` test hook
//! `fail_worker_for_tests`, which makes it panic as a bug would; nothing
//! else can kill one from outside) is noticed at once: its participants are
//! reported lost, health names it, `stats` answers without waiting for it,
//! placement never chooses it again, and the room moves to a live worker
//! on the next join.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Peer;
use confer_sfu::events::EventStream;
use confer_sfu::http::{HttpState, app};
use confer_sfu::{EmbeddedSfu, LostReason, Role, RoomId, SfuConfig, SfuControl, SfuEvent};

async fn next_lost(events: &mut EventStream) -> SfuEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            for e in events.next().await.unwrap() {
                if matches!(e.event, SfuEvent::ParticipantLost { .. }) {
                    return e.event;
                }
            }
        }
    })
    .await
    .expect("a ParticipantLost event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_noticed_and_its_room_moves() {
    let config = SfuConfig {
        workers: 2,
        pin_workers: false,
        ..SfuConfig::default()
    };
    let sfu = EmbeddedSfu::start(&config).unwrap();
    let mut events = sfu.events(sfu.last_event());
    let room = RoomId::from("doomed");
    let mut first = Peer::new();
    let (offer, _pending) = first.offer_subscribe();
    let joined = sfu.join(&room, Role::Subscribe, offer).await.unwrap();
    let placed = sfu.placed_participants();
    let doomed = placed.iter().position(|n| *n == 1).unwrap();
    assert!(sfu.health().is_ok());

    sfu.fail_worker_for_tests(doomed).unwrap();
    let lost = next_lost(&mut events).await;
    assert_eq!(
        lost,
        SfuEvent::ParticipantLost {
            room: room.clone(),
            participant: joined.participant,
            reason: LostReason::WorkerFailed,
        }
    );

    let health = sfu.health();
    assert_eq!(health.alive(), 1, "{health:?}");
    assert!(!health.workers[doomed].alive);
    assert!(
        health
            .problem()
            .unwrap()
            .contains("1 of 2 SFU workers dead"),
        "{health:?}"
    );
    assert_eq!(sfu.placed_participants()[doomed], 0);
    // Stats skip the dead worker instead of failing or waiting on it.
    let stats = tokio::time::timeout(Duration::from_secs(2), sfu.stats())
        .await
        .expect("stats answer at once")
        .unwrap();
    assert!(!stats.answered[doomed] && stats.answered[1 - doomed]);
    // The lost participant is gone from placement.
    assert!(sfu.leave(joined.participant).await.is_err());

    // The same room, and new ones, go to the live worker, which works.
    for name in ["doomed", "fresh-1", "fresh-2"] {
        let mut peer = Peer::new();
        let (offer, _pending) = peer.offer_subscribe();
        sfu.join(&RoomId::from(name), Role::Subscribe, offer)
            .await
            .unwrap();
    }
    let placed = sfu.placed_participants();
    assert_eq!(placed[doomed], 0, "{placed:?}");
    assert_eq!(placed[1 - doomed], 3, "{placed:?}");

    // The standalone front's /healthz says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        sfu: sfu.clone(),
        token: None,
        metrics_open: false,
    };
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.unwrap();
    assert!(body.contains("1 of 2 SFU workers dead"), "{body}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("sfu_worker_up{{worker=\"{doomed}\"}} 0")),
        "{metrics}"
    );
}
