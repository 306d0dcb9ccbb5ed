//! The engine's own tests: ingress by ufrag and hostile input.

use proptest::prelude::*;

use super::sdp::STUN_MAGIC;
use super::*;
use crate::testing::{MemNet, offer_subscribe, peer_rtc};

/// A STUN binding request with `attrs` after the header.
fn stun(attrs: &[u8]) -> Vec<u8> {
    let len = u16::try_from(attrs.len()).unwrap();
    [
        &[0, 1][..],
        &len.to_be_bytes(),
        &STUN_MAGIC,
        &[7; 12],
        attrs,
    ]
    .concat()
}

#[test]
fn the_local_ufrag_is_read_from_username() {
    // PRIORITY, then USERNAME "ab1:xyz" (7 bytes, padded to 8).
    let attrs = [
        &[0, 0x24, 0, 4, 1, 2, 3, 4][..],
        &[0, 6, 0, 7],
        b"ab1:xyz",
        &[0],
    ]
    .concat();
    assert_eq!(stun_local_ufrag(&stun(&attrs)), Some("ab1"));
    let no_colon = [&[0, 6, 0, 4][..], b"ab12"].concat();
    assert_eq!(stun_local_ufrag(&stun(&no_colon)), None);
    let past_the_end = [&[0, 6, 0, 9][..], b"ab1:xyz"].concat();
    assert_eq!(stun_local_ufrag(&stun(&past_the_end)), None);
    let not_utf8 = [&[0, 6, 0, 4][..], &[0xff, b':', 0xfe, 0x80]].concat();
    assert_eq!(stun_local_ufrag(&stun(&not_utf8)), None);
    let mut rtp = stun(&[&[0, 6, 0, 7][..], b"ab1:xyz", &[0]].concat());
    rtp[0] = 0x80;
    assert_eq!(stun_local_ufrag(&rtp), None);
    let mut no_magic = stun(&[&[0, 6, 0, 7][..], b"ab1:xyz", &[0]].concat());
    no_magic[4] = 0;
    assert_eq!(stun_local_ufrag(&no_magic), None);
    assert_eq!(stun_local_ufrag(&[]), None);
}

proptest! {
    #[test]
    fn reading_the_ufrag_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = stun_local_ufrag(&data);
    }

    #[test]
    fn any_datagram_is_counted_and_dropped(
        data in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let now = Instant::now();
        let mut net = MemNet::new(now);
        let room = RoomId::from("r");
        let id = ParticipantId(1);
        let mut rtc = peer_rtc("127.0.0.1:7000".parse().unwrap(), now);
        let (offer, _pending) = offer_subscribe(&mut rtc);
        net.engine.handle_join(&room, id, Role::Subscribe, &offer, now).unwrap();
        net.engine.handle_datagram(now, "127.0.0.1:9".parse().unwrap(), &data);
        let ingress = net.engine.ingress();
        prop_assert_eq!(ingress.datagrams, 1);
        prop_assert_eq!(ingress.dropped(), 1);
    }
}

/// Fuzz input for the datagram path: arbitrary bytes, bytes behind a
/// first byte of each RFC 7983 class (STUN, DTLS, RTP/RTCP), and STUN
/// headers (right magic) with arbitrary attributes.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1500),
        (
            prop_oneof![0u8..=3, 20u8..=63, 128u8..=191],
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(first, rest)| [&[first][..], &rest].concat()),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|attrs| stun(&attrs)),
    ]
}

/// One edit of an SDP offer's lines.
#[derive(Clone, Debug)]
enum SdpEdit {
    Delete(usize),
    Duplicate(usize),
    Replace(usize, String),
    Insert(usize, String),
    Truncate(usize, usize),
    Swap(usize, usize),
}

fn sdp_edit() -> impl Strategy<Value = SdpEdit> {
    let line = prop_oneof![
        "[a-z]=[ -~]{0,60}",
        "a=(rtpmap|fmtp|rid|simulcast|ssrc|mid|extmap|candidate|ice-ufrag|fingerprint|setup|group|msid|rtcp-fb):[ -~]{0,40}",
        "m=(audio|video|application) [0-9]{1,6} [A-Z/]{0,20}( [0-9]{1,4}){0,4}",
        ".{0,80}",
    ];
    prop_oneof![
        any::<usize>().prop_map(SdpEdit::Delete),
        any::<usize>().prop_map(SdpEdit::Duplicate),
        (any::<usize>(), line.clone()).prop_map(|(i, l)| SdpEdit::Replace(i, l)),
        (any::<usize>(), line).prop_map(|(i, l)| SdpEdit::Insert(i, l)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| SdpEdit::Truncate(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| SdpEdit::Swap(i, j)),
    ]
}

/// `offer` with `edits` applied to its lines.
fn edited(offer: &str, edits: &[SdpEdit]) -> String {
    let mut lines: Vec<String> = offer.split("\r\n").map(str::to_owned).collect();
    for edit in edits {
        let n = lines.len().max(1);
        match edit.clone() {
            SdpEdit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            SdpEdit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            SdpEdit::Replace(i, l) if !lines.is_empty() => lines[i % n] = l,
            SdpEdit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l),
            SdpEdit::Truncate(i, k) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                let cut = l.char_indices().map(|(at, _)| at).nth(k % (l.len() + 1));
                if let Some(cut) = cut {
                    l.truncate(cut);
                }
            }
            SdpEdit::Swap(i, j) if !lines.is_empty() => lines.swap(i % n, j % n),
            _ => {}
        }
    }
    lines.join("\r\n")
}

/// A join with `offer`, as publisher and as subscriber, into an engine
/// that already has a participant: answered or refused with a
/// [`JoinError`], never a panic; a refused join leaves no participant.
fn join_never_panics(offer: &str) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let mut net = MemNet::new(now);
    let room = RoomId::from("r");
    let _first = net.add_subscriber(&room);
    for (id, role) in [
        (ParticipantId(1), Role::Publish),
        (ParticipantId(2), Role::Subscribe),
    ] {
        let before = net.engine.participants.len();
        match net.engine.handle_join(&room, id, role, offer, now) {
            Ok(answer) => prop_assert!(answer.starts_with("v=0")),
            Err(JoinError::BadOffer(_) | JoinError::WrongDirection(_)) => {
                prop_assert_eq!(net.engine.participants.len(), before);
            }
            Err(e) => prop_assert!(false, "unexpected join error {e}"),
        }
    }
    net.engine.handle_timeout(now + Duration::from_millis(100));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(256)))]

    /// Fuzz target: with no participant at all, every datagram is
    /// counted and dropped.
    #[test]
    fn a_datagram_to_an_engine_without_participants_is_dropped(
        data in datagram(),
        port in any::<u16>(),
    ) {
        let now = Instant::now();
        let mut net = MemNet::new(now);
        net.engine.handle_datagram(now, SocketAddr::from(([10, 0, 0, 1], port)), &data);
        net.engine.handle_timeout(now + Duration::from_millis(100));
        let ingress = net.engine.ingress();
        prop_assert_eq!(ingress.datagrams, 1);
        prop_assert_eq!(ingress.dropped(), 1);
        prop_assert!(net.engine.poll_transmit().is_none());
    }

    /// Fuzz target: arbitrary text as an SDP offer.
    #[test]
    fn any_text_as_an_offer_is_answered_or_refused(
        offer in prop_oneof![
            ".{0,400}",
            "v=0\r\n([a-z]=[ -~]{0,50}\r\n){0,30}",
        ],
    ) {
        join_never_panics(&offer)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(48)))]

    /// Fuzz target: a real publish offer (simulcast) with lines
    /// deleted, duplicated, replaced, inserted, cut or swapped.
    #[test]
    fn a_mutated_offer_is_answered_or_refused(
        edits in proptest::collection::vec(sdp_edit(), 1..8),
        simulcast in any::<bool>(),
    ) {
        let mut rtc = peer_rtc("127.0.0.1:7000".parse().unwrap(), Instant::now());
        let (offer, _pending, _, _) = crate::testing::offer_publish(&mut rtc, simulcast);
        join_never_panics(&edited(&offer, &edits))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::testing::fuzz_cases(12)))]

    /// Fuzz target: datagrams from the addresses of connected
    /// participants (a publisher sending simulcast and a subscriber)
    /// reach their sessions' ICE/DTLS/SRTP; the engine counts each one
    /// and never panics, and goes on running afterwards.
    #[test]
    fn datagrams_from_connected_participants_never_panic(
        batch in proptest::collection::vec((any::<bool>(), datagram()), 1..24),
    ) {
        let mut net = MemNet::new(Instant::now());
        let room = RoomId::from("r");
        let publisher = net.add_publisher(&room, true, 15);
        let subscriber = net.add_subscriber(&room);
        net.run_for(Duration::from_millis(1500));
        prop_assert!(net.subscriber(subscriber).video_packets > 0);
        let before = net.engine.ingress().datagrams;
        for (to_publisher, data) in &batch {
            let from = net.peers[if *to_publisher { publisher } else { subscriber }].addr;
            net.engine.handle_datagram(net.now, from, data);
        }
        prop_assert_eq!(net.engine.ingress().datagrams, before + batch.len() as u64);
        net.run_for(Duration::from_millis(500));
    }
}

#[test]
fn stun_from_an_unknown_address_finds_its_participant_by_ufrag() {
    let now = Instant::now();
    let mut net = MemNet::new(now);
    let room = RoomId::from("r");
    // Participants that never connect, each with its own ufrag.
    let mut idle = Vec::new();
    for i in 0..20u16 {
        let mut rtc = peer_rtc(SocketAddr::from(([127, 0, 0, 1], 7000 + i)), now);
        let (offer, _pending) = offer_subscribe(&mut rtc);
        let id = ParticipantId(100 + u64::from(i));
        let answer = net
            .engine
            .handle_join(&room, id, Role::Subscribe, &offer, now)
            .unwrap();
        idle.push((id, answer));
    }
    // The map has every participant under the ufrag of its answer.
    for (id, answer) in &idle {
        let ufrag = answer
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .trim();
        assert_eq!(net.engine.ufrags.get(ufrag), Some(id));
    }
    // Real peers connect from addresses the engine has never seen: their
    // STUN requests are found by ufrag, and media flows.
    let _publisher = net.add_publisher(&room, false, 15);
    let subscriber = net.add_subscriber(&room);
    net.run_for(Duration::from_secs(3));
    assert!(net.subscriber(subscriber).video_packets > 20);
    assert_eq!(net.engine.ingress().unmatched, 0);
    assert_eq!(net.engine.ingress().malformed, 0);
    // A request naming nobody's ufrag is dropped without trying anyone.
    let nobody = stun(&[&[0, 6, 0, 8][..], b"nobody:x"].concat());
    net.engine
        .handle_datagram(net.now, "127.0.0.1:9".parse().unwrap(), &nobody);
    let ingress = net.engine.ingress();
    assert_eq!(ingress.unmatched + ingress.malformed, 1);
    // Leaving removes the ufrag.
    net.engine.handle_leave(idle[0].0);
    assert_eq!(net.engine.ufrags.len(), 22 - 1);
}
