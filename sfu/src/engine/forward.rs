//! The forwarding half of the engine: draining a participant's `Rtc`,
//! fanning a publisher's packet out to the slots fed by its track, giving
//! slots their sources, and the periodic tick (bitrates, layer targets,
//! keyframe requests, speaker).

use super::*;

impl Engine {
    /// Polls one participant's `Rtc` until it only has a timeout left, and
    /// acts on what came out.
    pub(super) fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut packets = std::mem::take(&mut self.packet_scratch);
        packets.clear();
        let mut gone = false;
        // Set when tracks or connections changed: slots may need sources.
        let mut reassign = false;
        {
            let Some(p) = self.participants.get_mut(&id) else {
                return;
            };
            loop {
                if !p.rtc.is_alive() {
                    gone = true;
                    break;
                }
                match p.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        p.deadline = at;
                        break;
                    }
                    Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                    Ok(Output::Event(event)) => match event {
                        Event::Connected => {
                            p.connected = true;
                            reassign = true;
                            self.events.push_back(SfuEvent::Connected {
                                room: p.room.clone(),
                                participant: id,
                            });
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            p.rtc.disconnect();
                        }
                        Event::RtpPacket(packet) => packets.push(packet),
                        Event::KeyframeRequest(req) => {
                            // A subscriber's decoder wants a keyframe: ask
                            // the publisher of what that slot carries.
                            if let Some(slot) = p.slots.iter().find(|s| s.mid == req.mid)
                                && let (Some(source), Some(layer)) =
                                    (slot.source, slot.selector.current())
                            {
                                packets_keyframe(&mut self.rooms, &p.room, source, layer, now);
                            }
                        }
                        Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc {
                            estimate,
                            ..
                        }) => {
                            p.estimate_bps = Some(estimate.as_u64());
                        }
                        Event::MediaChanged(changed) => {
                            // A renegotiation stopped an m-line (a screen
                            // share ended, a slot was given up): its track
                            // or slot goes.
                            match p.role {
                                Role::Publish if !changed.direction.is_receiving() => {
                                    if let Some(room) = self.rooms.get_mut(&p.room) {
                                        room.tracks.remove(&TrackKey(id, changed.mid));
                                    }
                                    reassign = true;
                                }
                                Role::Subscribe if !changed.direction.is_sending() => {
                                    p.slots.retain(|s| s.mid != changed.mid);
                                    reassign = true;
                                }
                                _ => {}
                            }
                        }
                        Event::MediaAdded(added)
                            if p.role == Role::Publish && added.direction.is_receiving() =>
                        {
                            let room = self.rooms.entry(p.room.clone()).or_default();
                            let mut rids = [None, None, None];
                            if let Some(sim) = &added.simulcast {
                                for (i, layer) in sim.recv.iter().enumerate() {
                                    let idx = layer_of_rid(&layer.rid).unwrap_or(i.min(2) as u8);
                                    rids[usize::from(idx)] = Some(layer.rid);
                                }
                            }
                            room.tracks.insert(
                                TrackKey(id, added.mid),
                                Track {
                                    kind: added.kind,
                                    index: self.next_track_index,
                                    rids,
                                    layers: [LayerStats::default(); 3],
                                    keyframes: [KeyframeRequester::new(
                                        self.config.keyframe_min_interval,
                                    ); 3],
                                    needed: [true; 3],
                                    origin: None,
                                    params: None,
                                },
                            );
                            self.next_track_index += 1;
                            reassign = true;
                        }
                        _ => {}
                    },
                    Err(_) => {
                        p.rtc.disconnect();
                    }
                }
            }
            if !p.connected
                && now.saturating_duration_since(p.created) > self.config.connect_timeout
            {
                gone = true;
            }
        }
        if gone {
            self.packet_scratch = packets;
            self.remove(id);
            return;
        }
        let room = self.participants.get(&id).map(|p| p.room.clone());
        if let Some(room) = room {
            if reassign {
                self.assign_sources(&room);
            }
            for packet in packets.drain(..) {
                self.forward(id, &room, packet, now);
            }
        }
        self.packet_scratch = packets;
    }

    /// Forwards one packet of local publisher `from`: finds its track and
    /// layer, then fans it out ([`Self::fan_out`]).
    fn forward(&mut self, from: ParticipantId, room_id: &RoomId, packet: RtpPacket, now: Instant) {
        let Some(publisher) = self.participants.get_mut(&from) else {
            return;
        };
        publisher.rx.packets += 1;
        publisher.rx.bytes += packet.payload.len() as u64;
        let Some((mid, rid)) = publisher
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|rx| (rx.mid(), rx.rid()))
        else {
            return;
        };
        let Some(params) = publisher
            .rtc
            .codec_config()
            .find(|p| p.pt() == packet.header.payload_type)
            .copied()
        else {
            return;
        };
        let Some(track) = self
            .rooms
            .get_mut(room_id)
            .and_then(|room| room.tracks.get_mut(&TrackKey(from, mid)))
        else {
            return;
        };
        if track.params.is_none() {
            // Known from its first packet: what a relay announces.
            track.params = Some(params);
        }
        let layer = rid
            .and_then(|r| {
                track
                    .rids
                    .iter()
                    .position(|x| *x == Some(r))
                    .map(|i| i as u8)
            })
            .unwrap_or(0);
        let incoming = Incoming {
            key: TrackKey(from, mid),
            layer,
            params,
            seq: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            arrival: packet.timestamp,
            ext: ExtensionValues {
                audio_level: packet.header.ext_vals.audio_level,
                voice_activity: packet.header.ext_vals.voice_activity,
                video_orientation: packet.header.ext_vals.video_orientation,
                ..Default::default()
            },
            payload: packet.payload,
        };
        self.fan_out(room_id, &incoming, now);
    }

    /// Sends one packet of a track (local, or relayed from another node)
    /// to every subscriber slot it feeds here, and — a local track's — to
    /// every linked node that needs its layer.
    pub(super) fn fan_out(&mut self, room_id: &RoomId, packet: &Incoming, now: Instant) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let key = packet.key;
        let from = key.0;
        let layer = packet.layer;
        let params = packet.params;
        let Some(track) = room.tracks.get_mut(&key) else {
            return;
        };
        let stats = &mut track.layers[usize::from(layer)];
        stats.last_packet = Some(now);
        stats.window_bytes += packet.payload.len() as u64;
        stats.received.packets += 1;
        stats.received.bytes += packet.payload.len() as u64;

        let is_vp8 = params.spec().codec == str0m::format::Codec::Vp8;
        let descriptor = if is_vp8 {
            Vp8Descriptor::parse(&packet.payload).ok()
        } else {
            None
        };
        // str0m's reading of the same descriptor, from which the patch of
        // each subscriber's ids is built.
        let wire_descriptor = descriptor
            .as_ref()
            .and_then(|_| str0m::rtp::Vp8Descriptor::parse(&packet.payload).ok());
        let keyframe = descriptor.is_some_and(|d| d.start_of_frame && d.keyframe)
            || (!is_vp8 && track.kind == MediaKind::Video && is_keyframe(&params, &packet.payload));
        if keyframe {
            track.keyframes[usize::from(layer)].handle_keyframe();
            if let Some(d) = descriptor
                && let Some(h) = vp8_keyframe_height(&packet.payload[d.len..])
            {
                stats.height = Some(h);
            }
        }
        if track.kind == MediaKind::Audio
            && let Some(level) = packet.ext.audio_level
        {
            room.speaker.handle_level(from, level.saturating_neg(), now);
        }
        if track.origin.is_none() {
            relay_packet(
                &mut self.relay_out,
                room_id,
                &room.links,
                track.kind,
                packet,
            );
        }
        let source_key = (track.index, layer);
        let track_kind = track.kind;
        let mut subscribers = std::mem::take(&mut self.scratch);
        subscribers.clear();
        subscribers.extend_from_slice(&room.participants);
        let mut need_keyframe = false;
        for &sid in &subscribers {
            if sid == from {
                continue;
            }
            let Some(sub) = self.participants.get_mut(&sid) else {
                continue;
            };
            if !sub.connected {
                continue;
            }
            let Some(slot) = sub.slots.iter_mut().find(|s| s.source == Some(key)) else {
                continue;
            };
            if track_kind == MediaKind::Video {
                match slot.selector.handle_packet(layer, keyframe) {
                    Decision::Drop => {
                        sub.layer_drops += 1;
                        need_keyframe |= slot.selector.wants_keyframe() == Some(layer);
                        continue;
                    }
                    Decision::Forward | Decision::Switch { .. } => {}
                }
            }
            let Some(rewritten) = slot.rewriter.rewrite(
                source_key,
                packet.seq,
                packet.timestamp,
                now,
                descriptor.as_ref(),
            ) else {
                continue;
            };
            let source_pt = (source_key.0, params.pt());
            let pt = match slot.pt_map {
                Some((key, pt)) if key == source_pt => pt,
                _ => {
                    let Some(pt) = sub
                        .rtc
                        .codec_config()
                        .match_params(params)
                        .map(PayloadParams::pt)
                    else {
                        continue;
                    };
                    slot.pt_map = Some((source_pt, pt));
                    pt
                }
            };
            let slot_mid = slot.mid;
            let mut api = sub.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(slot_mid, None) else {
                continue;
            };
            let len = packet.payload.len() as u64;
            // The payload is shared by every subscriber (a reference count,
            // no copy), and a VP8 descriptor's new ids are written by str0m
            // as it serialises the packet. A descriptor str0m does not
            // accept (L without T, which RFC 7741 forbids) is rewritten in
            // a copy instead.
            let mut payload = packet.payload.clone();
            let mut patch = None;
            if let (Some(ids), Some(d)) = (rewritten.vp8, descriptor.as_ref()) {
                match wire_descriptor.as_ref() {
                    Some(wire) => patch = vp8_patch(wire, ids),
                    None => {
                        let mut copy = payload.to_vec();
                        d.rewrite(
                            &mut copy,
                            ids.picture_id.unwrap_or(0),
                            ids.tl0picidx.unwrap_or(0),
                        );
                        payload = copy.into();
                    }
                }
            }
            let mut write = RtpWrite::new(
                pt,
                SeqNo::from(rewritten.seq),
                rewritten.timestamp,
                packet.arrival,
                payload,
            )
            .marker(packet.marker)
            .nackable(track_kind == MediaKind::Video)
            .ext_vals(packet.ext.clone());
            if let Some(patch) = patch {
                write = write.vp8_patch(patch);
            }
            tx.write_rtp(write);
            sub.tx.packets += 1;
            sub.tx.bytes += len;
            self.drain_transmits(sid);
        }
        self.scratch = subscribers;
        if need_keyframe {
            packets_keyframe(&mut self.rooms, room_id, key, layer, now);
        }
    }

    /// Drains an `Rtc` after a write; events cannot arise from a write
    /// except transmits and its next timeout.
    fn drain_transmits(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    p.deadline = at;
                    break;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    p.rtc.disconnect();
                    break;
                }
            }
        }
    }

    /// Gives each subscriber's slots distinct tracks of their kind from the
    /// other participants: with N slots of a kind, the N most wanted tracks
    /// (the active speaker's first, then in order of publication). A slot
    /// keeps its track while that track stays wanted, so that pictures do
    /// not jump around; a slot whose track changes is reported as
    /// [`SfuEvent::SlotChanged`].
    pub(super) fn assign_sources(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let speaker = room.speaker.current();
        let mut tracks: Vec<(TrackKey, MediaKind, u64)> = room
            .tracks
            .iter()
            .map(|(k, t)| (*k, t.kind, t.index))
            .collect();
        tracks.sort_by_key(|(k, _, index)| (Some(k.0) != speaker, *index));
        // Sessions of one client, both ways.
        let links: Vec<(ParticipantId, ParticipantId)> = room
            .participants
            .iter()
            .filter_map(|id| {
                let linked = self.participants.get(id)?.linked?;
                Some((*id, linked))
            })
            .collect();
        let own = |subscriber: ParticipantId, owner: ParticipantId| {
            owner == subscriber
                || links.contains(&(subscriber, owner))
                || links.contains(&(owner, subscriber))
        };
        for id in room.participants.clone() {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let count = p.slots.iter().filter(|s| s.kind == kind).count();
                let wanted: Vec<TrackKey> = tracks
                    .iter()
                    .filter(|(k, k_kind, _)| *k_kind == kind && !own(id, k.0))
                    .map(|(k, _, _)| *k)
                    .take(count)
                    .collect();
                let kept: Vec<TrackKey> = p
                    .slots
                    .iter()
                    .filter(|s| s.kind == kind)
                    .filter_map(|s| s.source.filter(|src| wanted.contains(src)))
                    .collect();
                let mut free = wanted.iter().filter(|k| !kept.contains(k));
                for slot in p.slots.iter_mut().filter(|s| s.kind == kind) {
                    if slot.source.is_some_and(|src| wanted.contains(&src)) {
                        continue;
                    }
                    let next = free.next().copied();
                    if slot.source != next {
                        slot.source = next;
                        slot.selector = LayerSelector::default();
                        self.events.push_back(SfuEvent::SlotChanged {
                            room: room_id.clone(),
                            participant: id,
                            mid: slot.mid.to_string(),
                            source: next.map(|k| (k.0, k.1.to_string())),
                        });
                    }
                }
            }
        }
    }

    /// Every [`TICK`]: bitrates, layer targets, keyframe requests, speaker.
    pub(super) fn tick(&mut self, now: Instant) {
        let room_ids: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room_id in room_ids {
            let mut speaker_changed = false;
            if let Some(room) = self.rooms.get_mut(&room_id) {
                for track in room.tracks.values_mut() {
                    for l in &mut track.layers {
                        // Exponential average of the per-tick byte count.
                        let bps = l.window_bytes * 8 * 1000 / TICK.as_millis() as u64;
                        l.bitrate_bps = (l.bitrate_bps * 7 + bps) / 8;
                        l.window_bytes = 0;
                    }
                }
                room.speaker.handle_timeout(now);
                if let Some(change) = room.speaker.poll_change() {
                    speaker_changed = true;
                    self.events.push_back(SfuEvent::SpeakerChanged {
                        room: room_id.clone(),
                        participant: change,
                    });
                }
            }
            if speaker_changed {
                self.assign_sources(&room_id);
            }
            self.update_layers(&room_id, now);
            self.announce_tracks(&room_id);
        }
        let late: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                !p.connected
                    && now.saturating_duration_since(p.created) > self.config.connect_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.remove(id);
        }
    }

    pub(super) fn update_layers(&mut self, room_id: &RoomId, now: Instant) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let mut needed: HashMap<TrackKey, [bool; 3]> = HashMap::new();
        for id in &room.participants {
            let Some(p) = self.participants.get_mut(id) else {
                continue;
            };
            for slot in p.slots.iter_mut().filter(|s| s.kind == MediaKind::Video) {
                let Some(source) = slot.source else {
                    continue;
                };
                let Some(track) = room.tracks.get_mut(&source) else {
                    continue;
                };
                let mut views: Vec<LayerView> = (0..3u8)
                    .filter(|l| track.rids[usize::from(*l)].is_some() || *l == 0)
                    .map(|l| {
                        let s = track.layers[usize::from(l)];
                        LayerView {
                            layer: l,
                            active: s
                                .last_packet
                                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
                            bitrate_bps: s.bitrate_bps,
                            height: s.height,
                        }
                    })
                    .collect();
                let preference = slot.preference.unwrap_or(p.preference);
                let target = simulcast::choose_layer(&views, p.estimate_bps, preference);
                slot.selector.set_target(target);
                let entry = needed.entry(source).or_default();
                if let Some(t) = target {
                    entry[usize::from(t)] = true;
                }
                // What the subscriber asks for, bandwidth aside, among the
                // layers the publisher announced — also those it paused
                // because nobody needed them: otherwise a paused layer
                // could never be chosen, so never needed again.
                for v in &mut views {
                    v.active = true;
                }
                if let Some(wanted) = simulcast::choose_layer(&views, None, preference) {
                    entry[usize::from(wanted)] = true;
                }
                if let Some(c) = slot.selector.current() {
                    entry[usize::from(c)] = true;
                }
                if p.connected
                    && let Some(wanted) = slot.selector.wants_keyframe()
                {
                    track.keyframes[usize::from(wanted)].handle_request(now);
                }
            }
        }
        let mut requests = Vec::new();
        for (key, track) in &mut room.tracks {
            if track.kind != MediaKind::Video {
                continue;
            }
            let mut need = needed.get(key).copied().unwrap_or_default();
            if let Some(node) = track.origin {
                // A relayed track: its node hears what this one needs of
                // it, and the keyframes this one's subscribers want.
                #[allow(clippy::needless_range_loop)] // l indexes parallel arrays
                for l in 0..3 {
                    if track.keyframes[l].poll_request(now) {
                        self.relay_out.push_back(RelayOut::Keyframe {
                            node,
                            track: TrackRef::new(room_id, *key),
                            layer: l as u8,
                        });
                    }
                }
                if need != track.needed {
                    track.needed = need;
                    self.relay_out.push_back(RelayOut::Needs {
                        node,
                        track: TrackRef::new(room_id, *key),
                        layers: need,
                    });
                }
                continue;
            }
            // A local track is needed by this node's subscribers and by
            // those of every node it is relayed to.
            for link in &room.links {
                if let Some(remote) = link.needs.get(key) {
                    for l in 0..3 {
                        need[l] |= remote[l];
                    }
                }
            }
            #[allow(clippy::needless_range_loop)] // l indexes three parallel arrays
            for l in 0..3 {
                if track.keyframes[l].poll_request(now) {
                    requests.push((*key, track.rids[l]));
                }
                if track.rids[l].is_some() && need[l] != track.needed[l] {
                    track.needed[l] = need[l];
                    self.events.push_back(SfuEvent::LayerNeeded {
                        room: room_id.clone(),
                        participant: key.0,
                        mid: key.1.to_string(),
                        layer: l as u8,
                        needed: need[l],
                    });
                }
            }
        }
        for (key, rid) in requests {
            if let Some(p) = self.participants.get_mut(&key.0) {
                let mut api = p.rtc.direct_api();
                if let Some(rx) = api.stream_rx_by_mid(key.1, rid) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    p.keyframe_requests += 1;
                }
            }
            self.drain(key.0, now);
        }
    }
}

/// The patch that writes `ids` into a VP8 descriptor as str0m sends it;
/// `None` when the descriptor has no such fields (nothing to rewrite).
fn vp8_patch(descriptor: &str0m::rtp::Vp8Descriptor, ids: Vp8Ids) -> Option<Vp8Patch> {
    if ids.picture_id.is_none() && ids.tl0picidx.is_none() {
        return None;
    }
    let mut patch = descriptor.patch();
    if let Some(pid) = ids.picture_id {
        patch = patch.picture_id(pid);
    }
    if let Some(tl0) = ids.tl0picidx {
        patch = patch.tl0_pic_idx(tl0);
    }
    patch.build().ok()
}

/// Marks a keyframe as wanted for a publisher layer (sent at the next tick,
/// throttled).
pub(super) fn packets_keyframe(
    rooms: &mut HashMap<RoomId, Room>,
    room: &RoomId,
    source: TrackKey,
    layer: Layer,
    now: Instant,
) {
    if let Some(track) = rooms.get_mut(room).and_then(|r| r.tracks.get_mut(&source)) {
        track.keyframes[usize::from(layer.min(2))].handle_request(now);
    }
}

/// The layer index a conventional rid names.
fn layer_of_rid(rid: &Rid) -> Option<u8> {
    match &**rid {
        "q" | "l" | "low" => Some(0),
        "h" | "m" | "mid" => Some(1),
        "f" | "high" => Some(2),
        _ => None,
    }
}

/// Keyframe detection for codecs passed through without rewriting.
fn is_keyframe(params: &PayloadParams, payload: &[u8]) -> bool {
    match params.spec().codec {
        str0m::format::Codec::H264 => str0m::format::detect_h264_keyframe(payload),
        str0m::format::Codec::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        _ => false,
    }
}

/// Height from a VP8 keyframe header (RFC 6386 §9.1): 3-byte frame tag,
/// start code 9d 01 2a, then 14-bit width and height.
fn vp8_keyframe_height(frame: &[u8]) -> Option<u32> {
    if frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff))
}
