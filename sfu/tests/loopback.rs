//! Loopback through the real worker threads: in-repo str0m peers publish
//! audio and three-layer simulcast video and subscribe through
//! [`EmbeddedSfu`]; every packet arrives decrypted and intact, sequence
//! numbers are contiguous, and the subscriber's preference picks its layer.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{MEDIA_DEADLINE, Peer, Streaming, Subscriber, contiguous, flowing};
use confer_sfu::core::simulcast::Preference;
use confer_sfu::{EmbeddedSfu, Role, RoomId, SfuConfig, SfuControl};

fn sfu() -> Arc<EmbeddedSfu> {
    let config = SfuConfig {
        workers: 1,
        pin_workers: false,
        ..SfuConfig::default()
    };
    EmbeddedSfu::start(&config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_publisher_to_subscriber_intact_and_preference_picks_the_layer() {
    let sfu = sfu();
    let room = RoomId::from("loopback");
    sfu.create_room(&room).await.unwrap();

    let mut publisher = Peer::new();
    let (offer, pending, audio, video) = publisher.offer_publish(true);
    let joined = sfu.join(&room, Role::Publish, offer).await.unwrap();
    publisher.accept_answer(pending, &joined.answer);

    let mut subscriber = Peer::new();
    let (offer, pending) = subscriber.offer_subscribe();
    let sub = sfu.join(&room, Role::Subscribe, offer).await.unwrap();
    subscriber.accept_answer(pending, &sub.answer);

    let streaming = Streaming::start(publisher, audio, video);
    let (mut subscriber, first) = tokio::task::spawn_blocking(move || {
        let mut first = Subscriber::default();
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut first, |s| {
            flowing(s) && s.keyframes >= 1 && s.seqs.get("audio").is_some_and(|a| contiguous(a))
        });
        (subscriber, first)
    })
    .await
    .unwrap();

    eprintln!(
        "first: audio {} video {} corrupt {} keyframes {} layers {:?}",
        first.audio_packets, first.video_packets, first.corrupt, first.keyframes, first.layers
    );
    assert!(first.connected, "subscriber connected");
    assert!(
        first.audio_packets > 50,
        "audio arrived: {}",
        first.audio_packets
    );
    assert!(
        first.video_packets > 30,
        "video arrived: {}",
        first.video_packets
    );
    assert_eq!(first.corrupt, 0, "every packet intact");
    assert!(first.keyframes >= 1);
    assert!(contiguous(&first.seqs["audio"]), "audio seq contiguous");
    assert!(contiguous(&first.seqs["video"]), "video seq contiguous");
    // No bandwidth limit on loopback: the full layer once the estimate
    // allows it, and only ever one layer at a time per packet run.
    assert!(first.layers.keys().all(|l| *l <= 2));

    // Thumbnail: the low layer only, after a keyframe switch.
    sfu.set_preference(
        sub.participant,
        Preference {
            max_height: Some(180),
            paused: false,
        },
    )
    .await
    .unwrap();
    let second = tokio::task::spawn_blocking(move || {
        let mut second = Subscriber {
            connected: true,
            ..Subscriber::default()
        };
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut second, |s| {
            s.last_layer == Some(0) && s.video_packets > 30 && contiguous(&s.seqs["video"])
        });
        second
    })
    .await
    .unwrap();
    let publisher = streaming.stop();
    eprintln!(
        "second: audio {} video {} layers {:?} kf {} pub kfreq {}",
        second.audio_packets,
        second.video_packets,
        second.layers,
        second.keyframes,
        publisher.keyframe_requests
    );
    assert_eq!(second.corrupt, 0);
    assert_eq!(
        second.last_layer,
        Some(0),
        "layers seen: {:?}",
        second.layers
    );
    assert!(
        contiguous(&second.seqs["video"]),
        "contiguous across the switch"
    );
    assert!(
        publisher.keyframe_requests >= 1,
        "the SFU asked for keyframes"
    );

    let stats = sfu.stats().await.unwrap();
    let all: Vec<_> = stats.workers.iter().flatten().collect();
    assert_eq!(all.len(), 2);
    sfu.leave(sub.participant).await.unwrap();
    sfu.leave(joined.participant).await.unwrap();
}
