//! Property tests of forwarding: a publisher sends three simulcast layers
//! of VP8-shaped packets; the subscriber's target layer changes at random;
//! a seeded impairment loses and reorders packets. Whatever happens, the
//! subscriber's sequence numbers never repeat, and without loss and
//! reordering they are exactly 1, 2, 3, … across every switch.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::time::{Duration, Instant};

use confer_sfu::core::keyframe::KeyframeRequester;
use confer_sfu::core::rewrite::StreamRewriter;
use confer_sfu::core::simulcast::{Decision, LayerSelector};
use confer_sfu::core::vp8::Vp8Descriptor;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Packet {
    layer: u8,
    seq: u64,
    timestamp: u32,
    at: Instant,
    payload: Vec<u8>,
}

/// VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then a
/// frame header byte on frame starts (bit 0 clear for keyframes).
fn vp8_payload(start: bool, keyframe: bool, picture_id: u16) -> Vec<u8> {
    let first = if start { 0x90 } else { 0x80 };
    let mut p = vec![
        first,
        0xc0,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
        0,
    ];
    p.push(if keyframe { 0x10 } else { 0x11 });
    p.extend_from_slice(&[0xaa; 20]);
    p
}

/// Three layers, `frames` frames each of 1–3 packets; keyframes every
/// `gop` frames. Each layer has its own sequence and picture id space.
fn publish(frames: u32, gop: u32, t0: Instant) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut seq = [1_000u64, 50_000, 65_000];
    for f in 0..frames {
        let at = t0 + Duration::from_millis(u64::from(f) * 33);
        for layer in 0..3u8 {
            let packets = 1 + layer;
            for i in 0..packets {
                let l = usize::from(layer);
                out.push(Packet {
                    layer,
                    seq: seq[l],
                    timestamp: 3000 * f + u32::from(layer) * 7,
                    at,
                    payload: vp8_payload(
                        i == 0,
                        f % gop == 0,
                        (f as u16).wrapping_add(u16::from(layer) * 1000) & 0x7fff,
                    ),
                });
                seq[l] += 1;
            }
        }
    }
    out
}

/// Seeded impairment: drop with probability `loss`, swap neighbours with
/// probability `reorder`.
fn impair(mut packets: Vec<Packet>, seed: u64, loss: f64, reorder: f64) -> Vec<Packet> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 10_000) as f64 / 10_000.0
    };
    packets.retain(|_| next() >= loss);
    for i in 1..packets.len() {
        if next() < reorder {
            packets.swap(i - 1, i);
        }
    }
    packets
}

/// Runs the subscriber side; returns forwarded (output seq, layer, picture id).
fn forward(packets: &[Packet], switches: &[(usize, u8)]) -> Vec<(u64, u8, u16)> {
    let mut selector = LayerSelector::default();
    selector.set_target(Some(0));
    let mut rewriter = StreamRewriter::new(90_000);
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        if let Some((_, target)) = switches.iter().find(|(at, _)| *at == i) {
            selector.set_target(Some(*target));
        }
        let d = Vp8Descriptor::parse(&p.payload).expect("test payloads are valid");
        match selector.handle_packet(p.layer, d.start_of_frame && d.keyframe) {
            Decision::Drop => continue,
            Decision::Forward | Decision::Switch { .. } => {}
        }
        if let Some(r) = rewriter.rewrite((7, p.layer), p.seq, p.timestamp, p.at, Some(&d)) {
            let pid = r.vp8.and_then(|ids| ids.picture_id).unwrap();
            out.push((r.seq, p.layer, pid));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn clean_input_gives_contiguous_output_across_switches(
        gop in 1u32..10,
        switches in prop::collection::vec((0usize..1200, 0u8..3), 0..12),
    ) {
        let packets = publish(200, gop, Instant::now());
        let out = forward(&packets, &switches);
        let seqs: Vec<u64> = out.iter().map(|o| o.0).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        prop_assert_eq!(seqs, expected);
        // Picture ids advance by one per frame across every switch.
        let mut frames: Vec<u16> = out.iter().map(|o| o.2).collect();
        frames.dedup();
        for w in frames.windows(2) {
            prop_assert_eq!(w[1], (w[0] + 1) & 0x7fff);
        }
    }

    #[test]
    fn impaired_input_never_repeats_an_output_number(
        seed in any::<u64>(),
        loss in 0.0f64..0.3,
        reorder in 0.0f64..0.3,
        switches in prop::collection::vec((0usize..1200, 0u8..3), 0..12),
    ) {
        let packets = impair(publish(200, 5, Instant::now()), seed, loss, reorder);
        let out = forward(&packets, &switches);
        let mut seqs: Vec<u64> = out.iter().map(|o| o.0).collect();
        seqs.sort_unstable();
        let before = seqs.len();
        seqs.dedup();
        prop_assert_eq!(before, seqs.len());
        prop_assert!(seqs.first().is_none_or(|s| *s >= 1));
    }
}

#[test]
fn keyframe_requests_stay_throttled_under_heavy_loss() {
    // Every packet makes every one of 30 subscribers ask for a keyframe
    // that never arrives (all lost): 10 s of virtual time.
    let t0 = Instant::now();
    let mut requester = KeyframeRequester::default();
    let mut sent = 0;
    for ms in 0..10_000u64 {
        let now = t0 + Duration::from_millis(ms);
        for _ in 0..30 {
            requester.handle_request(now);
        }
        if requester.poll_request(now) {
            sent += 1;
        }
    }
    assert_eq!(sent, 20, "one PLI per 500 ms, however many subscribers ask");
}
