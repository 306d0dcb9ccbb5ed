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
            s.layers,
            s.last_layer,
            s.video_packets,
            s.corrupt,
            s.bad_switches()
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
        assert_eq!(s.bad_switches(), 0, "switches only on keyframes");
        assert!(!s.frame_starts.is_empty());
        // A few frames may be skipped at a layer switch (a gap the decoder
        // sees as loss); a rewrite that failed would jump by thousands.
        let (pid, tl0) = s.largest_picture_id_steps();
        assert!(
            pid <= 10 && tl0 <= 10,
            "picture ids jump by {pid}, TL0PICIDX by {tl0}"
        );
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

#[test]
fn lost_packets_are_retransmitted() {
    let mut net = MemNet::new(Instant::now());
    let room = RoomId::from("lossy");
    net.add_publisher(&room, true, 30);
    let lossy = net.add_subscriber(&room);
    net.peers[lossy].downlink_loss = 0.05;
    net.run_for(Duration::from_secs(10));
    let s = net.subscriber(lossy);
    assert_eq!(s.corrupt, 0);
    assert!(s.video_packets > 1000, "video {}", s.video_packets);
    // NACK + RTX fill every gap of the video stream (audio is not
    // retransmitted); the last few packets may still be in flight.
    let mut seqs = s.seqs["video"].clone();
    seqs.sort_unstable();
    seqs.dedup();
    let span = seqs.last().unwrap() - seqs.first().unwrap() + 1;
    let missing = span - seqs.len() as u64;
    assert!(
        missing <= 5,
        "{missing} of {span} video packets never arrived"
    );
}

#[test]
fn unused_layers_are_reported_and_the_speaker_is_followed() {
    let mut net = MemNet::new(Instant::now());
    let room = RoomId::from("speakers");
    let quiet = net.add_publisher(&room, true, 15);
    let loud = net.add_publisher(&room, true, 15);
    net.publisher(quiet).tag = 1;
    net.publisher(quiet).audio_level = -70;
    net.publisher(loud).tag = 2;
    net.publisher(loud).audio_level = -20;
    // Far from the quiet one's picture ids: the viewer's slot still sees
    // them continue when it changes over to the loud one.
    net.publisher(loud).frame = 5_000;
    let viewer = net.add_subscriber(&room);
    let viewer_id = net.peers[viewer].id;
    net.engine.handle_preference(
        viewer_id,
        Preference {
            max_height: Some(180),
            paused: false,
        },
    );
    net.run_for(Duration::from_secs(6));

    let loud_id = net.peers[loud].id;
    let mut events = Vec::new();
    while let Some(e) = net.engine.poll_event() {
        events.push(e);
    }
    assert!(
        events.contains(&confer_sfu::SfuEvent::SpeakerChanged {
            room: room.clone(),
            participant: Some(loud_id)
        }),
        "{events:?}"
    );
    let s = net.subscriber(viewer);
    assert_eq!(s.last_audio_tag, Some(2), "audio follows the speaker");
    assert_eq!(s.last_video_tag, Some(2), "video follows the speaker");
    assert_eq!(s.bad_switches(), 0);
    let (pid, tl0) = s.largest_picture_id_steps();
    assert!(
        pid <= 10 && tl0 <= 10,
        "picture ids jump by {pid}, TL0PICIDX by {tl0} across the change of speaker"
    );
    // The only viewer wants a thumbnail of the speaker: the speaker's f
    // layer is needed by nobody.
    let unneeded = |events: &[confer_sfu::SfuEvent], p: confer_sfu::ParticipantId, layer: u8| {
        events.iter().rev().find_map(|e| match e {
            confer_sfu::SfuEvent::LayerNeeded {
                participant,
                layer: l,
                needed,
                ..
            } if *participant == p && *l == layer => Some(*needed),
            _ => None,
        })
    };
    assert_eq!(unneeded(&events, loud_id, 2), Some(false), "{events:?}");

    // The publisher stops sending that layer (dynacast). When the viewer
    // asks for the full picture again, the paused layer is needed again,
    // although nothing of it has arrived for a while.
    net.publisher(loud).paused[2] = true;
    net.run_for(Duration::from_secs(3));
    net.engine
        .handle_preference(viewer_id, Preference::default());
    net.run_for(Duration::from_secs(1));
    while let Some(e) = net.engine.poll_event() {
        events.push(e);
    }
    assert_eq!(unneeded(&events, loud_id, 2), Some(true), "{events:?}");
}

/// A call's subscriber: one slot per other participant, each carrying a
/// different publisher; when a third publisher arrives the subscriber
/// renegotiates for more slots on the same session and gets it too. Each
/// slot change is reported, and a per-slot preference holds one slot at
/// the thumbnail layer while the other gets the full one.
#[test]
fn slots_carry_distinct_publishers_and_grow_by_renegotiation() {
    let mut net = MemNet::new(Instant::now());
    let room = RoomId::from("call");
    let a = net.add_publisher(&room, true, 15);
    let b = net.add_publisher(&room, true, 15);
    net.publisher(a).tag = 1;
    net.publisher(b).tag = 2;
    let viewer = net.add_subscriber_with(&room, 2, 2);
    net.run_for(Duration::from_secs(3));
    let counts = |net: &mut MemNet, kind: &'static str, tag: u8| {
        net.subscriber(viewer)
            .by_tag
            .get(&(kind, tag))
            .copied()
            .unwrap_or(0)
    };
    for tag in [1, 2] {
        assert!(counts(&mut net, "audio", tag) > 50, "audio of {tag}");
        assert!(counts(&mut net, "video", tag) > 50, "video of {tag}");
    }

    let c = net.add_publisher(&room, true, 15);
    net.publisher(c).tag = 3;
    net.add_slots(viewer, 1, 1);
    net.run_for(Duration::from_secs(3));
    for tag in [1, 2, 3] {
        assert!(counts(&mut net, "audio", tag) > 50, "audio of {tag}");
        assert!(counts(&mut net, "video", tag) > 50, "video of {tag}");
    }
    assert_eq!(net.subscriber(viewer).corrupt, 0);

    let viewer_id = net.peers[viewer].id;
    let mut slots = std::collections::HashMap::new();
    while let Some(e) = net.engine.poll_event() {
        if let confer_sfu::SfuEvent::SlotChanged {
            participant,
            mid,
            source,
            ..
        } = e
            && participant == viewer_id
        {
            slots.insert(mid, source);
        }
    }
    // Six slots, each with a distinct source.
    let sources: std::collections::HashSet<_> = slots.values().flatten().collect();
    assert_eq!(slots.len(), 6, "{slots:?}");
    assert_eq!(sources.len(), 6, "{slots:?}");

    // Spotlight on the slot carrying c's video, thumbnails elsewhere.
    let c_id = net.peers[c].id;
    let c_video = net.publisher(c).video.to_string();
    let spotlight = slots
        .iter()
        .find(|(_, s)| s.as_ref() == Some(&(c_id, c_video.clone())))
        .map(|(mid, _)| mid.clone())
        .unwrap();
    net.engine.handle_preference(
        viewer_id,
        Preference {
            max_height: Some(180),
            paused: false,
        },
    );
    net.engine.handle_slot_preference(
        viewer_id,
        &spotlight,
        Preference {
            max_height: None,
            paused: false,
        },
    );
    net.subscriber(viewer).layers.clear();
    net.run_for(Duration::from_secs(4));
    let stats = net.engine.stats();
    let layers = &stats
        .iter()
        .find(|s| s.participant == viewer_id)
        .unwrap()
        .layers;
    let mut sorted = layers.clone();
    sorted.sort();
    assert_eq!(sorted, vec![Some(0), Some(0), Some(2)], "{layers:?}");
    assert_eq!(net.subscriber(viewer).corrupt, 0);

    // c stops its video by renegotiating it inactive: the slot that
    // showed it is emptied (reported), the others keep their sources.
    while net.engine.poll_event().is_some() {}
    let c_mid = net.publisher(c).video;
    let (offer, pending) = {
        let mut api = net.peers[c].rtc.sdp_api();
        api.set_direction(c_mid, str0m::media::Direction::Inactive);
        let (offer, pending) = api.apply().unwrap();
        (offer.to_sdp_string(), pending)
    };
    let c_id = net.peers[c].id;
    let answer = net
        .engine
        .handle_renegotiate(c_id, &offer, net.now)
        .unwrap();
    confer_sfu::testing::accept_answer(&mut net.peers[c].rtc, pending, &answer);
    net.run_for(Duration::from_secs(1));
    let mut emptied = Vec::new();
    while let Some(e) = net.engine.poll_event() {
        if let confer_sfu::SfuEvent::SlotChanged {
            participant,
            mid,
            source,
            ..
        } = e
            && participant == viewer_id
        {
            emptied.push((mid, source));
        }
    }
    assert_eq!(emptied, vec![(spotlight.clone(), None)]);
}
