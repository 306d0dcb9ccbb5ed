//! The engine in virtual time (`MemNet`): one publisher with three
//! simulcast layers and subscribers with different preferences and
//! bandwidths each get the right layer, switch only on keyframes, and see
//! intact packets with contiguous sequence numbers.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use confer_sfu::RoomId;
use confer_sfu::core::simulcast::Preference;
use confer_sfu::testing::{MemNet, contiguous};

#[test]
fn each_subscriber_gets_the_layer_that_fits() {
    let mut net = MemNet::new(Instant::now());
    let room = RoomId::from("virtual");
    let publisher = net.add_publisher(&room, true, 30);
    let full = net.add_subscriber(&room);
    let thumb = net.add_subscriber(&room);
    let narrow = net.add_subscriber(&room);
    // About 450 kbps down: the h layer (~290 kbps) fits, f (~860 kbps) does not.
    net.peers[narrow].downlink_bps = Some(450_000);
    let thumb_id = net.peers[thumb].id;
    net.engine.handle_preference(
        thumb_id,
        Preference {
            max_height: Some(180),
            paused: false,
        },
    );

    let started = Instant::now();
    net.run_for(Duration::from_secs(15));
    let took = started.elapsed();

    let report = |net: &mut MemNet, i: usize| {
        let s = net.subscriber(i);
        format!(
            "layers {:?} last {:?} video {} corrupt {} bad switches {}",
            s.layers, s.last_layer, s.video_packets, s.corrupt, s.bad_switches
        )
    };
    let (rf, rt, rn) = (
        report(&mut net, full),
        report(&mut net, thumb),
        report(&mut net, narrow),
    );
    eprintln!("full: {rf}\nthumb: {rt}\nnarrow: {rn}\n(virtual 15 s ran in {took:?})");

    for i in [full, thumb, narrow] {
        let s = net.subscriber(i);
        assert_eq!(s.corrupt, 0, "intact");
        assert_eq!(s.bad_switches, 0, "switches only on keyframes");
        assert!(s.audio_packets > 500, "audio flows");
    }
    assert_eq!(net.subscriber(full).last_layer, Some(2), "{rf}");
    assert_eq!(net.subscriber(thumb).last_layer, Some(0), "{rt}");
    assert!(!net.subscriber(thumb).layers.contains_key(&2), "{rt}");
    assert_eq!(net.subscriber(narrow).last_layer, Some(1), "{rn}");
    for i in [full, thumb] {
        let s = net.subscriber(i);
        assert!(contiguous(&s.seqs["video"]) && contiguous(&s.seqs["audio"]));
    }
    // However many switches, the publisher was not flooded with PLIs.
    let requests = net.publisher(publisher).keyframe_requests;
    assert!(
        requests <= 3 * 15 * 2,
        "at most 2 per second per layer, got {requests}"
    );
}
