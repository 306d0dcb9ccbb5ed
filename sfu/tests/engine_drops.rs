//! A participant the engine drops on its own — here one that never
//! connects, past a short connect timeout — leaves placement: the worker's
//! load and the room's count return to zero, as after an explicit leave.
//! (Before, placement forgot participants only on `leave`, so a client
//! that never connected counted against its worker forever.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Peer;
use confer_sfu::{EmbeddedSfu, Role, RoomId, SfuConfig, SfuControl, SfuEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_connects_leaves_placement() {
    let config = SfuConfig {
        workers: 2,
        pin_workers: false,
        connect_timeout_secs: 1,
        ..SfuConfig::default()
    };
    let sfu = EmbeddedSfu::start(&config).unwrap();
    let mut events = sfu.events(sfu.last_event());
    let room = RoomId::from("silent");
    // Offers only: these peers never send a datagram.
    let mut ids = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let mut peer = Peer::new();
        let (offer, _pending) = peer.offer_subscribe();
        ids.push(
            sfu.join(&room, Role::Subscribe, offer)
                .await
                .unwrap()
                .participant,
        );
        peers.push(peer);
    }
    assert_eq!(sfu.placed_participants().iter().sum::<usize>(), 3);

    let mut gone = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while gone.len() < ids.len() {
            for e in events.next().await.unwrap() {
                if let SfuEvent::Disconnected { participant, .. } = e.event {
                    gone.push(participant);
                }
            }
        }
    })
    .await
    .expect("the engine drops them after the connect timeout");
    gone.sort();
    ids.sort();
    assert_eq!(gone, ids);

    let placed = sfu.placed_participants();
    assert_eq!(placed, vec![0, 0], "load counts back to zero");
    for id in ids {
        assert!(sfu.leave(id).await.is_err(), "forgotten");
    }
    // The empty room is no longer placed: its next participant goes to the
    // least loaded worker, and the counts stay right.
    let mut peer = Peer::new();
    let (offer, _pending) = peer.offer_subscribe();
    let joined = sfu.join(&room, Role::Subscribe, offer).await.unwrap();
    assert_eq!(sfu.placed_participants().iter().sum::<usize>(), 1);
    sfu.leave(joined.participant).await.unwrap();
    assert_eq!(sfu.placed_participants(), vec![0, 0]);
    let stats = sfu.stats().await.unwrap();
    assert!(stats.answered.iter().all(|a| *a));
}
