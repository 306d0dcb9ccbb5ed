//! The relay on loopback QUIC: trust (token, pinned certificate), redial,
//! announcements again, packets and needs both ways.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::engine::RelayedPacket;
use crate::ids::{ParticipantId, RoomId};

/// A relay on loopback whose sink records what arrives; its queue.
fn relay(token: &str) -> (Arc<Relay>, mpsc::Sender<RelayOut>, Arc<Mutex<Vec<RelayIn>>>) {
    let got: Arc<Mutex<Vec<RelayIn>>> = Arc::default();
    let sink: Sink = {
        let got = got.clone();
        Arc::new(move |input| got.lock().unwrap().push(input))
    };
    let (tx, rx) = mpsc::channel(64);
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
    };
    let relay = Relay::start(&config, Some(token.to_owned()), sink, rx, Arc::default()).unwrap();
    (relay, tx, got)
}

fn track(room: &str) -> TrackRef {
    TrackRef {
        room: RoomId::from(room),
        publisher: ParticipantId(1),
        mid: "0".into(),
    }
}

fn info() -> TrackInfo {
    TrackInfo {
        video: false,
        params: str0m::format::CodecConfig::new_with_defaults().params()[0],
        rids: [None, None, None],
    }
}

fn packet(room: &str, seq: u64) -> RelayedPacket {
    RelayedPacket {
        track: track(room),
        layer: 0,
        seq,
        timestamp: 0,
        marker: false,
        audio_level: Some(-30),
        voice_activity: None,
        payload: Arc::from(&[7u8; 100][..]),
    }
}

/// Sends packets of `room`'s track to `node` until `got` has one of
/// them, or `wait` passes; whether one arrived.
async fn packets_arrive(
    tx: &mpsc::Sender<RelayOut>,
    node: NodeId,
    room: &str,
    got: &Mutex<Vec<RelayIn>>,
    wait: Duration,
) -> bool {
    let deadline = Instant::now() + wait;
    let mut seq = 0;
    while Instant::now() < deadline {
        seq += 1;
        let packet = packet(room, seq);
        tx.send(RelayOut::Packet { node, packet }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let arrived = got
            .lock()
            .unwrap()
            .iter()
            .any(|i| matches!(i, RelayIn::Packet(p) if p.track.room.as_str() == room));
        if arrived {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_cross_only_to_a_peer_that_is_who_it_says_and_knows_its_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (a, a_tx, a_got) = relay("a-token");
    let (b, b_tx, b_got) = relay("b-token");

    // A dials B with the wrong token: B's workers get nothing.
    let wrong_token = RelayPeer {
        relay: b.info().clone(),
        token: Some("a-token".to_owned()),
    };
    let node = a.node(&wrong_token);
    a_tx.send(RelayOut::Announce {
        node,
        track: track("r"),
        info: info(),
    })
    .await
    .unwrap();
    assert!(!packets_arrive(&a_tx, node, "r", &b_got, Duration::from_millis(1500)).await);
    assert!(
        b_got.lock().unwrap().is_empty(),
        "{:?}",
        b_got.lock().unwrap()
    );

    // A third node that pins the wrong certificate for B does not even
    // complete the handshake.
    let (c, c_tx, _) = relay("c-token");
    let wrong_pin = RelayPeer {
        relay: RelayInfo {
            addr: b.info().addr,
            fingerprint: "00".repeat(32),
        },
        token: Some("b-token".to_owned()),
    };
    let c_node = c.node(&wrong_pin);
    c_tx.send(RelayOut::Announce {
        node: c_node,
        track: track("pinned"),
        info: info(),
    })
    .await
    .unwrap();
    assert!(!packets_arrive(&c_tx, c_node, "pinned", &b_got, Duration::from_millis(1500)).await);

    // With the right token, A dials again; the track it announced
    // while refused is announced again, its packets cross, and B's
    // needs come back to A.
    let right = RelayPeer {
        token: Some("b-token".to_owned()),
        ..wrong_token
    };
    assert_eq!(a.node(&right), node, "one node per address");
    assert!(packets_arrive(&a_tx, node, "r", &b_got, Duration::from_secs(10)).await);
    let (from, announced) = {
        let got = b_got.lock().unwrap();
        let announced = got.iter().find_map(|i| match i {
            RelayIn::Announce { node, track, info } => Some((*node, (track.clone(), info.clone()))),
            _ => None,
        });
        announced.unwrap()
    };
    assert_eq!(announced, (track("r"), info()));
    b_tx.send(RelayOut::Needs {
        node: from,
        track: track("r"),
        layers: [true, false, false],
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let needs = a_got.lock().unwrap().iter().any(|i| {
            matches!(i, RelayIn::Needs { node: n, layers, .. } if *n == node && *layers == [true, false, false])
        });
        if needs {
            break;
        }
        assert!(Instant::now() < deadline, "needs did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let RelayIn::Packet(p) = b_got
        .lock()
        .unwrap()
        .iter()
        .find(|i| matches!(i, RelayIn::Packet(_)))
        .cloned()
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!((p.audio_level, p.payload.len()), (Some(-30), 100));
}
