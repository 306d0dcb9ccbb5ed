//! Per-packet costs of the SFU: forwarding one SRTP packet from a
//! publisher to N subscribers through the engine (decrypt once, rewrite and
//! encrypt N times), the layer decision, and stream rewriting.

use std::hint::black_box;
use std::time::{Duration, Instant};

use confer_sfu::RoomId;
use confer_sfu::core::rewrite::StreamRewriter;
use confer_sfu::core::simulcast::{LayerSelector, LayerView, Preference, choose_layer};
use confer_sfu::core::vp8::Vp8Descriptor;
use confer_sfu::testing::{MemNet, seal};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use str0m::{Input, Output};
use str0m::format::Codec;
use str0m::media::Rid;
use str0m::rtp::{RtpWrite, SeqNo};

/// A room with one publisher and `n` subscribers, connected and settled on
/// the full layer in virtual time.
fn room(n: usize) -> (MemNet, usize) {
    let mut net = MemNet::new(Instant::now());
    let room = RoomId::from("bench");
    let publisher = net.add_publisher(&room, true, 30);
    for _ in 0..n {
        net.add_subscriber(&room);
    }
    net.run_for(Duration::from_secs(5));
    (net, publisher)
}

/// `count` SRTP datagrams of the publisher's f layer, 1100-byte payloads,
/// one per 20 virtual microseconds, with the time each is due.
fn datagrams(net: &mut MemNet, publisher: usize, count: u64, seq: &mut u64) -> Vec<(Instant, Vec<u8>)> {
    let video = net.publisher(publisher).video;
    let peer = &mut net.peers[publisher];
    let pt = peer
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .map(|p| p.pt())
        .expect("VP8 negotiated");
    let mut out = Vec::with_capacity(count as usize);
    let mut now = net.now;
    for _ in 0..count {
        now += Duration::from_micros(20);
        peer.rtc.handle_input(Input::Timeout(now)).expect("publisher alive");
        *seq += 1;
        let frame = (*seq / 4) as u32;
        let mut body = vec![0x80, 0xc0, 0x80, (frame & 0x7f) as u8, frame as u8];
        body.extend(seal(vec![0x5a; 1080], 2, frame, (*seq % 4) as u8));
        {
            let mut api = peer.rtc.direct_api();
            let tx = api
                .stream_tx_by_mid(video, Some(Rid::from("f")))
                .expect("f layer declared");
            tx.write_rtp(RtpWrite::new(pt, SeqNo::from(1_000_000 + *seq), frame * 3000, now, body).nackable(true));
        }
        loop {
            match peer.rtc.poll_output().expect("publisher alive") {
                Output::Transmit(t) => out.push((now, t.contents.into())),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
    }
    net.now = now;
    out
}

/// Feeds the datagrams to the engine; returns how many datagrams it sent.
fn feed(net: &mut MemNet, from: std::net::SocketAddr, packets: &[(Instant, Vec<u8>)]) -> usize {
    let mut sent = 0;
    for (at, p) in packets {
        net.engine.handle_datagram(*at, from, p);
        while let Some(t) = net.engine.poll_transmit() {
            black_box(t);
            sent += 1;
        }
    }
    sent
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("sfu_forward");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 30] {
        let (mut net, publisher) = room(n);
        let from = net.peers[publisher].addr;
        let mut seq = 0u64;
        // Sanity: each packet really goes out n times.
        let probe = datagrams(&mut net, publisher, 100, &mut seq);
        let sent = feed(&mut net, from, &probe);
        assert!(sent >= 90 * n, "only {sent} datagrams for 100 packets to {n} subscribers");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("one_packet_to_n", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let packets = datagrams(&mut net, publisher, iters, &mut seq);
                let started = Instant::now();
                feed(&mut net, from, &packets);
                started.elapsed()
            });
        });
    }
    group.finish();
}

fn decisions(c: &mut Criterion) {
    let layers = [
        LayerView { layer: 0, active: true, bitrate_bps: 150_000, height: Some(180) },
        LayerView { layer: 1, active: true, bitrate_bps: 500_000, height: Some(360) },
        LayerView { layer: 2, active: true, bitrate_bps: 1_700_000, height: Some(720) },
    ];
    c.bench_function("layer/choose", |b| {
        b.iter(|| choose_layer(black_box(&layers), black_box(Some(1_000_000)), Preference::default()));
    });
    let mut selector = LayerSelector::default();
    selector.set_target(Some(1));
    let mut i = 0u32;
    c.bench_function("layer/handle_packet", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(selector.handle_packet((i % 3) as u8, i.is_multiple_of(90)))
        });
    });
    let mut rewriter = StreamRewriter::new(90_000);
    let mut payload = vec![0x90, 0xe0, 0x92, 0x34, 0x07, 0x40, 0x10];
    payload.resize(1100, 0);
    let now = Instant::now();
    let mut seq = 0u64;
    c.bench_function("rewrite/vp8_packet", |b| {
        b.iter(|| {
            seq += 1;
            let d = Vp8Descriptor::parse(&payload).expect("valid descriptor");
            black_box(rewriter.rewrite((1, 2), seq, (seq * 3000) as u32, now, Some((&d, &mut payload))))
        });
    });
}

criterion_group!(benches, forward, decisions);
criterion_main!(benches);
