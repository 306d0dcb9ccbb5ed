//! The cascade at the engine level, in virtual time: two engines (two
//! nodes) carry one room, their relay outputs handed to each other
//! (`MemCluster`). Publishers on both nodes reach subscribers on the other
//! intact; each track crosses once however many subscribers it has there;
//! only the layers the far node needs cross, and layers switch correctly
//! across the relay; the speaker is found room-wide; a publisher that
//! leaves, or a link that ends, takes its tracks off the far node.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use confer_sfu::core::simulcast::Preference;
use confer_sfu::testing::{MemCluster, contiguous};
use confer_sfu::{ParticipantId, RoomId, SfuEvent};

const THUMBNAIL: Preference = Preference {
    max_height: Some(180),
    paused: false,
};

fn events(cluster: &mut MemCluster, node: usize) -> Vec<SfuEvent> {
    let mut out = Vec::new();
    while let Some(e) = cluster.nodes[node].engine.poll_event() {
        out.push(e);
    }
    out
}

#[test]
fn a_room_spans_two_nodes_through_the_relay() {
    let mut c = MemCluster::new(Instant::now());
    let room = RoomId::from("all-hands");
    // Node 0: the speaker, and a subscriber with room for two publishers.
    let speaker = c.nodes[0].add_publisher(&room, true, 30);
    c.nodes[0].publisher(speaker).tag = 1;
    c.nodes[0].publisher(speaker).audio_level = -20;
    let near = c.nodes[0].add_subscriber_with(&room, 2, 2);
    // Node 1: a quiet publisher, a full-picture and a thumbnail viewer.
    let quiet = c.nodes[1].add_publisher(&room, true, 30);
    c.nodes[1].publisher(quiet).tag = 2;
    c.nodes[1].publisher(quiet).audio_level = -70;
    c.nodes[1].publisher(quiet).frame = 5_000;
    let full = c.nodes[1].add_subscriber(&room);
    let thumb = c.nodes[1].add_subscriber(&room);
    let thumb_id = c.nodes[1].peers[thumb].id;
    c.nodes[1].engine.handle_preference(thumb_id, THUMBNAIL);
    c.link(&room);

    c.run_for(Duration::from_secs(10));

    let speaker_id = c.nodes[0].peers[speaker].id;
    let quiet_id = c.nodes[1].peers[quiet].id;
    let report = |c: &mut MemCluster, node: usize, i: usize| {
        let s = c.nodes[node].subscriber(i);
        format!(
            "layers {:?} last {:?} audio {} video {} by tag {:?} corrupt {} bad switches {}",
            s.layers,
            s.last_layer,
            s.audio_packets,
            s.video_packets,
            s.by_tag,
            s.corrupt,
            s.bad_switches()
        )
    };
    let (rf, rt, rn) = (
        report(&mut c, 1, full),
        report(&mut c, 1, thumb),
        report(&mut c, 0, near),
    );
    eprintln!(
        "full: {rf}\nthumb: {rt}\nnear: {rn}\ncrossed video {:?} audio {:?}",
        c.relayed_video, c.relayed_audio
    );

    // The speaker is found room-wide: node 1 hears node 0's audio levels.
    let far_events = events(&mut c, 1);
    assert!(
        far_events.iter().any(|e| *e
            == SfuEvent::SpeakerChanged {
                room: room.clone(),
                participant: Some(speaker_id)
            }),
        "{far_events:?}"
    );
    // Node 1's viewers get node 0's speaker, intact and unbroken, each at
    // its own layer, switching on keyframes only.
    for (i, r) in [(full, &rf), (thumb, &rt)] {
        let s = c.nodes[1].subscriber(i);
        assert_eq!(s.corrupt, 0, "{r}");
        assert_eq!(s.last_video_tag, Some(1), "{r}");
        assert_eq!(s.last_audio_tag, Some(1), "{r}");
        assert_eq!(s.bad_switches(), 0, "{r}");
        assert!(
            contiguous(&s.seqs["video"]) && contiguous(&s.seqs["audio"]),
            "{r}"
        );
        let (pid, tl0) = s.largest_picture_id_steps();
        assert!(
            pid <= 10 && tl0 <= 10,
            "picture ids jump by {pid}, TL0PICIDX by {tl0}"
        );
    }
    assert_eq!(c.nodes[1].subscriber(full).last_layer, Some(2), "{rf}");
    assert_eq!(c.nodes[1].subscriber(thumb).last_layer, Some(0), "{rt}");
    // Media both ways: node 0's subscriber gets node 1's publisher too.
    {
        let s = c.nodes[0].subscriber(near);
        assert_eq!(s.corrupt, 0, "{rn}");
        assert!(
            s.by_tag.get(&("video", 2)).copied().unwrap_or(0) > 100,
            "{rn}"
        );
        assert!(
            s.by_tag.get(&("audio", 2)).copied().unwrap_or(0) > 100,
            "{rn}"
        );
    }
    // Each track crossed once, not once per subscriber: two viewers on
    // node 1 received the speaker's audio, which crossed once; the
    // speaker's h layer, which nobody there needs, did not cross at all.
    assert_eq!(c.relayed_video[0][1], 0, "{:?}", c.relayed_video);
    let crossed_audio = c.relayed_audio[0];
    let heard = [full, thumb].map(|i| c.nodes[1].subscriber(i).by_tag[&("audio", 1)]);
    assert!(
        heard
            .iter()
            .all(|h| *h * 100 >= crossed_audio * 95 && *h <= crossed_audio),
        "audio crossed {crossed_audio}, heard {heard:?}"
    );

    // Dynacast across the relay: with both viewers on thumbnails, only
    // the speaker's q layer crosses (after the needs reach node 0).
    let full_id = c.nodes[1].peers[full].id;
    c.nodes[1].engine.handle_preference(full_id, THUMBNAIL);
    c.run_for(Duration::from_secs(2));
    let before = c.relayed_video[0];
    c.run_for(Duration::from_secs(3));
    let after = c.relayed_video[0];
    let crossed: Vec<u64> = (0..3).map(|l| after[l] - before[l]).collect();
    eprintln!("crossed per layer with thumbnails only: {crossed:?}");
    assert!(crossed[0] > 60, "{crossed:?}");
    assert_eq!(crossed[1] + crossed[2], 0, "{crossed:?}");
    // Back to the full picture: the f layer is needed again, crosses, and
    // the viewer switches to it on a keyframe.
    c.nodes[1]
        .engine
        .handle_preference(full_id, Preference::default());
    c.run_for(Duration::from_secs(3));
    let s = c.nodes[1].subscriber(full);
    assert_eq!(s.last_layer, Some(2));
    assert_eq!(s.bad_switches(), 0);
    let _ = events(&mut c, 1);

    // The speaker leaves node 0: its tracks leave node 1's room, whose
    // viewers' slots change over to the quiet publisher.
    c.nodes[0].engine.handle_leave(speaker_id);
    c.run_for(Duration::from_secs(2));
    let far_events = events(&mut c, 1);
    let moved = far_events.iter().any(|e| {
        matches!(e, SfuEvent::SlotChanged { participant, source: Some((p, _)), .. }
            if *participant == full_id && *p == quiet_id)
    });
    assert!(moved, "{far_events:?}");
    assert_eq!(c.nodes[1].subscriber(full).last_video_tag, Some(2));

    // The link ends: node 0 drops node 1's tracks.
    let near_id: ParticipantId = c.nodes[0].peers[near].id;
    c.nodes[0].engine.handle_link(&room, &[]);
    let near_events = events(&mut c, 0);
    let emptied = near_events.iter().any(|e| {
        matches!(e, SfuEvent::SlotChanged { participant, source: None, .. }
            if *participant == near_id)
    });
    assert!(emptied, "{near_events:?}");
}
