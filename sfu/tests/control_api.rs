//! The standalone `sfu` binary speaks the control API (`/control…`), and
//! `RemoteSfu` drives it as signalling drives the SFU in its own process:
//! sessions joined with the caller's ids, media forwarded between real
//! str0m peers over loopback UDP, numbered events read by long polls,
//! counters and health, refusals with the error they stand for, and the
//! bearer token required.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{MEDIA_DEADLINE, Peer, Standalone, Streaming, Subscriber, flowing, standalone};
use confer_sfu::api::{ParticipantId, Role, RoomId, SfuControl, SfuError, SfuEvent};
use confer_sfu::remote::RemoteSfu;

const TOKEN: &str = "control-token";

/// The binary on loopback with one worker; its HTTP base URL.
fn spawn() -> (Standalone, String) {
    standalone(TOKEN, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_sfu_is_driven_over_its_control_api() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (_sfu, base) = spawn();
    // The token is required.
    let anonymous = reqwest::Client::new()
        .post(format!("{base}/control"))
        .body(r#"{"command":"create_room","room":"r"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    // HTTP/1.1 (above) and HTTP/2 by prior knowledge, as `RemoteSfu` asks.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(format!("{base}/control/health"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), reqwest::StatusCode::OK);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert!(matches!(
        RemoteSfu::connect(&base, Some("wrong".to_owned())).await,
        Err(SfuError::Start(_))
    ));

    let remote = RemoteSfu::connect(&base, Some(TOKEN.to_owned()))
        .await
        .unwrap();
    assert_eq!(remote.health().alive(), 1);
    assert!(remote.health().is_ok());
    let mut events = remote.events(remote.last_event());

    let room = RoomId::from("remote-room");
    remote.create_room(&room).await.unwrap();
    let mut publisher = Peer::new();
    let (offer, pending, audio, video) = publisher.offer_publish(true);
    let (p, s) = (ParticipantId::random(), ParticipantId::random());
    let joined = remote
        .join_as(&room, p, Role::Publish, offer, None)
        .await
        .unwrap();
    assert_eq!(joined.participant, p);
    publisher.accept_answer(pending, &joined.answer);
    let mut subscriber = Peer::new();
    let (offer, pending) = subscriber.offer_subscribe();
    let joined = remote
        .join_as(&room, s, Role::Subscribe, offer, None)
        .await
        .unwrap();
    subscriber.accept_answer(pending, &joined.answer);

    let streaming = Streaming::start(publisher, audio, video);
    let received = tokio::task::spawn_blocking(move || {
        let mut got = Subscriber::default();
        subscriber.run_until(Instant::now() + MEDIA_DEADLINE, &mut got, flowing);
        got
    })
    .await
    .unwrap();
    streaming.stop();
    assert!(flowing(&received), "no media through the standalone SFU");

    // Both sessions connected, and the subscriber's slots were filled:
    // the events arrived numbered, in order, from the other process.
    let mut seen = Vec::new();
    let deadline = Instant::now() + MEDIA_DEADLINE;
    while !(seen
        .iter()
        .any(|e| matches!(e, SfuEvent::Connected { participant, .. } if *participant == s))
        && seen
            .iter()
            .any(|e| matches!(e, SfuEvent::SlotChanged { participant, .. } if *participant == s)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, events.next())
            .await
            .expect("the events arrive")
            .unwrap();
        for w in batch.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        seen.extend(batch.into_iter().map(|e| e.event));
    }
    assert!(remote.last_event() >= events.position());

    let stats = remote.stats().await.unwrap();
    assert_eq!(stats.workers.iter().map(Vec::len).sum::<usize>(), 2);
    assert!(stats.workers[0].iter().any(|p| p.rx.packets > 0));

    // Refusals come back as the errors they stand for.
    let mut other = Peer::new();
    let (offer, _) = other.offer_subscribe();
    let duplicate = remote.join_as(&room, s, Role::Subscribe, offer, None).await;
    assert!(matches!(duplicate, Err(SfuError::DuplicateParticipant)));
    let garbage = remote
        .join_as(
            &room,
            ParticipantId::random(),
            Role::Publish,
            "v=0".to_owned(),
            None,
        )
        .await;
    assert!(matches!(garbage, Err(SfuError::Join(_))), "{garbage:?}");
    remote.leave(s).await.unwrap();
    assert!(matches!(
        remote.leave(s).await,
        Err(SfuError::UnknownParticipant)
    ));
    remote.close_room(&room).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote.stats().await.unwrap().workers[0]
        .iter()
        .any(|x| x.participant == p)
    {
        assert!(
            Instant::now() < deadline,
            "closing the room left its sessions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stopped SFU is reported by health (without a round trip), and its
/// commands fail as unavailable rather than hang.
#[tokio::test]
async fn an_sfu_that_stopped_is_reported_unreachable() {
    let (sfu, base) = spawn();
    let remote = RemoteSfu::connect(&base, Some(TOKEN.to_owned()))
        .await
        .unwrap();
    drop(sfu);
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote.health().is_ok() {
        assert!(
            Instant::now() < deadline,
            "health still ok 10 s after the SFU stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        remote
            .health()
            .problem()
            .unwrap()
            .contains("does not answer")
    );
    let started = Instant::now();
    let create = remote.create_room(&RoomId::from("r")).await;
    assert!(matches!(create, Err(SfuError::Unavailable)));
    assert!(started.elapsed() < Duration::from_secs(11));
}

/// A connection that sends nothing is closed after the header read
/// timeout, HTTP/2 being served too (hyper's own header timeout does not
/// cover the wait for the first bytes then).
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;

    let (_sfu, base) = standalone(TOKEN, &[("CONFER_SFU_HEADER_READ_TIMEOUT_SECS", "1")]);
    let addr = base.trim_start_matches("http://");
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A request head trickled a byte at a time, never finished (slowloris),
/// is cut off after the header read timeout too.
#[tokio::test]
async fn a_trickled_request_head_is_cut_off_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_sfu, base) = standalone(TOKEN, &[("CONFER_SFU_HEADER_READ_TIMEOUT_SECS", "1")]);
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        write.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            write.write_all(b"X").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(closed.is_ok(), "the trickled connection was never closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
}
