//! Per-packet costs of the SFU: forwarding one SRTP packet from a
//! publisher to N subscribers through the engine (decrypt once, rewrite and
//! encrypt N times), the layer decision, and stream rewriting.

use std::hint::black_box;
use std::time::{Duration, Instant};

use confer_sfu::RoomId;
use confer_sfu::core::rewrite::StreamRewriter;
use confer_sfu::core::simulcast::{LayerSelector, LayerView, Preference, choose_layer};
use confer_sfu::core::vp8::Vp8Descriptor;
use confer_sfu::testing::MemNet;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

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

/// Cost per forwarded packet: the engine's wall-clock time (decrypting
/// what publishers send, choosing, rewriting, encrypting for each
/// subscriber, RTCP, STUN and timers) divided by the packets it forwarded,
/// in a room running in virtual time. Peers' own work is not counted.
fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("sfu_forward");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for n in [1usize, 10, 30, 100] {
        let (mut net, _publisher) = room(n);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("per_packet_one_publisher_to_n", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let (busy0, sent0) = (net.engine_busy, net.forwarded());
                    while net.forwarded() - sent0 < iters {
                        net.run_for(Duration::from_millis(20));
                    }
                    let forwarded = net.forwarded() - sent0;
                    let busy = net.engine_busy - busy0;
                    busy.mul_f64(iters as f64 / forwarded as f64)
                });
            },
        );
    }
    group.finish();
}

fn decisions(c: &mut Criterion) {
    let layers = [
        LayerView {
            layer: 0,
            active: true,
            bitrate_bps: 150_000,
            height: Some(180),
        },
        LayerView {
            layer: 1,
            active: true,
            bitrate_bps: 500_000,
            height: Some(360),
        },
        LayerView {
            layer: 2,
            active: true,
            bitrate_bps: 1_700_000,
            height: Some(720),
        },
    ];
    c.bench_function("layer/choose", |b| {
        b.iter(|| {
            choose_layer(
                black_box(&layers),
                black_box(Some(1_000_000)),
                Preference::default(),
            )
        });
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
            black_box(rewriter.rewrite((1, 2), seq, (seq * 3000) as u32, now, Some(&d)))
        });
    });
}

criterion_group!(benches, forward, decisions);
criterion_main!(benches);
