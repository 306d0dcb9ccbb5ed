//! Hostile datagrams on a worker's UDP port, from a real socket: empty,
//! one byte, random, truncated STUN/DTLS/RTP/RTCP and 64 KiB. The worker
//! counts and drops every one, and still works: a publisher and a
//! subscriber join afterwards and media flows; `/metrics` shows the drops.
//! (Before the fix the empty datagram alone killed the worker: GRO stride
//! 0 → `chunks(0)` panicked, and every later join failed.)

#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{MEDIA_DEADLINE, Peer, Streaming, Subscriber, contiguous, flowing};
use confer_sfu::http::{HttpState, app};
use confer_sfu::{EmbeddedSfu, Role, RoomId, SfuConfig, SfuControl};
use rand::{Rng, SeedableRng};

const TOKEN: &str = "metrics-token";

/// Every kind of garbage the issue lists, and a few more.
fn hostile() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut out = vec![
        Vec::new(),
        vec![0],
        vec![0x80],
        vec![22],
        // A STUN header whose length promises more than there is.
        [&[0, 1, 0, 8][..], &[0x21, 0x12, 0xa4, 0x42], &[7; 12]].concat(),
        // A STUN binding request with a USERNAME naming nobody, no
        // integrity.
        [
            &[0, 1, 0, 12][..],
            &[0x21, 0x12, 0xa4, 0x42],
            &[9; 12],
            &[0, 6, 0, 8],
            b"nobody:x",
        ]
        .concat(),
        // A USERNAME whose length runs past the end.
        [
            &[0, 1, 0, 4][..],
            &[0x21, 0x12, 0xa4, 0x42],
            &[9; 12],
            &[0, 6, 0xff, 0xff],
        ]
        .concat(),
        // Truncated DTLS handshake, RTP, RTCP.
        vec![22, 0xfe, 0xfd, 0, 0],
        vec![0x80, 96, 0, 1, 0, 0],
        vec![0x80, 200, 0, 6],
        vec![0x81, 205, 0, 2, 0, 0, 0, 1],
        // The largest UDP payload over IPv4, looking like RTP.
        vec![0x80; 65_507],
    ];
    for len in [2, 11, 12, 19, 20, 21, 100, 1200, 1500] {
        let mut d = vec![0u8; len];
        rng.fill(&mut d[..]);
        out.push(d);
    }
    for first in [0u8, 1, 20, 63, 64, 127, 128, 191, 192, 255] {
        let mut d = vec![0u8; 40];
        rng.fill(&mut d[..]);
        d[0] = first;
        out.push(d);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_counted_and_dropped_and_the_worker_goes_on() {
    let config = SfuConfig {
        workers: 1,
        pin_workers: false,
        ..SfuConfig::default()
    };
    let sfu = EmbeddedSfu::start(&config).unwrap();
    let worker = sfu.worker_addrs()[0];

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let garbage = hostile();
    for d in &garbage {
        attacker.send_to(d, worker).unwrap();
    }
    let sent = garbage.len() as u64;
    // The worker publishes its counters every turn (at least every 100 ms).
    let deadline = Instant::now() + MEDIA_DEADLINE;
    let ingress = loop {
        let health = sfu.health();
        let ingress = health.workers[0].ingress;
        if ingress.datagrams >= sent || Instant::now() > deadline {
            break ingress;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ingress.datagrams, sent, "{ingress:?}");
    assert_eq!(ingress.dropped(), sent, "every one dropped: {ingress:?}");
    assert!(ingress.malformed >= 4, "{ingress:?}");
    assert!(ingress.unmatched >= 4, "{ingress:?}");
    assert!(sfu.health().is_ok(), "{:?}", sfu.health());

    // The worker still works: a publisher and a subscriber join and media
    // flows between them, with garbage arriving all along.
    let room = RoomId::from("after-the-attack");
    let mut publisher = Peer::new();
    let (offer, pending, audio, video) = publisher.offer_publish(true);
    let joined = sfu.join(&room, Role::Publish, offer).await.unwrap();
    publisher.accept_answer(pending, &joined.answer);
    let mut subscriber = Peer::new();
    let (offer, pending) = subscriber.offer_subscribe();
    let sub = sfu.join(&room, Role::Subscribe, offer).await.unwrap();
    subscriber.accept_answer(pending, &sub.answer);

    let streaming = Streaming::start(publisher, audio, video);
    let quiet = Arc::new(AtomicBool::new(false));
    let noise = {
        let quiet = quiet.clone();
        std::thread::spawn(move || {
            let mut again = 0u64;
            while !quiet.load(Ordering::Relaxed) {
                for d in &garbage {
                    attacker.send_to(d, worker).unwrap();
                    again += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            again
        })
    };
    let received = tokio::task::spawn_blocking(move || {
        let mut s = Subscriber::default();
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut s, flowing);
        s
    })
    .await
    .unwrap();
    streaming.stop();
    quiet.store(true, Ordering::Relaxed);
    let again = noise.join().unwrap();
    assert!(received.connected, "subscriber connected");
    assert!(
        flowing(&received),
        "audio {} video {}, video contiguous: {}",
        received.audio_packets,
        received.video_packets,
        contiguous(&received.seqs["video"])
    );
    assert_eq!(received.corrupt, 0);
    let health = sfu.health();
    assert!(health.is_ok(), "{health:?}");
    assert!(
        health.workers[0].ingress.dropped() >= sent + again / 2,
        "{health:?}, sent {}",
        sent + again
    );

    // The counters are in /metrics.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        sfu: sfu.clone(),
        token: Some(TOKEN.to_owned()),
        metrics_open: false,
    };
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let metrics = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sfu_ingress_dropped_total{worker=\"0\",reason=\"malformed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sfu_worker_up{worker=\"0\"} 1"),
        "{metrics}"
    );
    sfu.leave(sub.participant).await.unwrap();
    sfu.leave(joined.participant).await.unwrap();
}
