//! The engine's side of the cascade: a room carried by several nodes.
//!
//! A room knows its **links**: the other nodes that carry some of its
//! participants ([`Engine::handle_link`]). Each local track is announced
//! to every linked node once its codec is known (its first packet), and
//! withdrawn when it ends; a node's tracks arrive here the same way and
//! become tracks of the room with an `origin`, fed to slots like any
//! other ([`Engine::handle_relay`]).
//!
//! What crosses, once per linked node however many subscribers it has:
//! - every packet of an audio track (levels included: speaker detection
//!   sees the whole room on every node);
//! - the packets of the video layers the node said it needs
//!   ([`RelayOut::Needs`], from its subscribers' layer choices: dynacast
//!   across the relay);
//! - back to the track's node: those needs when they change, and the
//!   keyframe requests of the node's subscribers (throttled here first).
//!
//! The engine stays sans-IO: [`RelayOut`] goes out through
//! [`Engine::poll_relay`], [`RelayIn`] comes in through
//! [`Engine::handle_relay`]; [`crate::relay`] carries them over QUIC.

use std::sync::Arc;

use super::forward::packets_keyframe;
use super::*;

/// Another node of the cluster, as numbered by this process's relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A track as the cascade names it: room, publisher, mid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrackRef {
    /// The room.
    pub room: RoomId,
    /// The publisher (ids are unique across the cluster: signalling
    /// chooses them).
    pub publisher: ParticipantId,
    /// The publisher's m-line.
    pub mid: Mid,
}

impl TrackRef {
    pub(super) fn new(room: &RoomId, key: TrackKey) -> Self {
        Self {
            room: room.clone(),
            publisher: key.0,
            mid: key.1,
        }
    }

    fn key(&self) -> TrackKey {
        TrackKey(self.publisher, self.mid)
    }
}

/// What a node announces of one of its tracks.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrackInfo {
    /// Audio or video.
    pub video: bool,
    /// Its codec, as the publisher negotiated it.
    pub params: PayloadParams,
    /// The rid of each simulcast layer (q, h, f), if any.
    pub rids: [Option<String>; 3],
}

/// One packet of a relayed track.
#[derive(Clone, Debug)]
pub struct RelayedPacket {
    /// Whose.
    pub track: TrackRef,
    /// Its simulcast layer.
    pub layer: u8,
    /// Extended sequence number, as the publisher's node saw it.
    pub seq: u64,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Audio level (dBov, negative), if the publisher sent one.
    pub audio_level: Option<i8>,
    /// Voice activity, if the publisher sent it.
    pub voice_activity: Option<bool>,
    /// The RTP payload.
    pub payload: Arc<[u8]>,
}

/// What the engine has for the relay.
#[derive(Clone, Debug)]
pub enum RelayOut {
    /// A local track that `node` may now subscribe to.
    Announce {
        /// To whom.
        node: NodeId,
        /// Which.
        track: TrackRef,
        /// What it is.
        info: TrackInfo,
    },
    /// A local track announced to `node` has ended.
    Withdraw {
        /// To whom.
        node: NodeId,
        /// Which.
        track: TrackRef,
    },
    /// A packet of a local track for `node`.
    Packet {
        /// To whom.
        node: NodeId,
        /// The packet.
        packet: RelayedPacket,
    },
    /// The layers this node's subscribers need of `node`'s track.
    Needs {
        /// The track's node.
        node: NodeId,
        /// Which.
        track: TrackRef,
        /// Per layer (q, h, f).
        layers: [bool; 3],
    },
    /// This node's subscribers want a keyframe of `node`'s track.
    Keyframe {
        /// The track's node.
        node: NodeId,
        /// Which.
        track: TrackRef,
        /// Of which layer.
        layer: u8,
    },
}

/// What the relay brings the engine from another node.
#[derive(Clone, Debug)]
pub enum RelayIn {
    /// A track of `node`.
    Announce {
        /// Its node.
        node: NodeId,
        /// Which.
        track: TrackRef,
        /// What it is.
        info: TrackInfo,
    },
    /// `node`'s track has ended.
    Withdraw {
        /// Its node.
        node: NodeId,
        /// Which.
        track: TrackRef,
    },
    /// A packet of `node`'s track.
    Packet(RelayedPacket),
    /// What `node` needs of a local track.
    Needs {
        /// The node that needs it.
        node: NodeId,
        /// Which.
        track: TrackRef,
        /// Per layer.
        layers: [bool; 3],
    },
    /// `node`'s subscribers want a keyframe of a local track.
    Keyframe {
        /// Which.
        track: TrackRef,
        /// Of which layer.
        layer: u8,
    },
}

impl RelayIn {
    /// The room it is about (which worker takes it).
    #[must_use]
    pub fn room(&self) -> &RoomId {
        match self {
            Self::Announce { track, .. }
            | Self::Withdraw { track, .. }
            | Self::Needs { track, .. }
            | Self::Keyframe { track, .. } => &track.room,
            Self::Packet(packet) => &packet.track.room,
        }
    }
}

/// A node that carries part of a room.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) node: NodeId,
    /// Local tracks announced to it.
    announced: Vec<TrackKey>,
    /// What it needs of each local track, per layer.
    pub(super) needs: HashMap<TrackKey, [bool; 3]>,
}

/// A packet of any track, local or relayed, on its way to the subscribers.
#[derive(Debug)]
pub(super) struct Incoming {
    pub(super) key: TrackKey,
    pub(super) layer: u8,
    pub(super) params: PayloadParams,
    pub(super) seq: u64,
    pub(super) timestamp: u32,
    pub(super) marker: bool,
    pub(super) arrival: Instant,
    pub(super) ext: ExtensionValues,
    pub(super) payload: Arc<[u8]>,
}

/// Withdraws every track announced to `links` (unlinked, or the room is
/// gone here), so that the relay forgets them.
pub(super) fn withdraw_all(out: &mut VecDeque<RelayOut>, room: &RoomId, links: &[Link]) {
    for link in links {
        for key in &link.announced {
            out.push_back(RelayOut::Withdraw {
                node: link.node,
                track: TrackRef::new(room, *key),
            });
        }
    }
}

/// Queues a local track's packet for every linked node that takes it:
/// audio always, video when the node needs its layer.
pub(super) fn relay_packet(
    out: &mut VecDeque<RelayOut>,
    room: &RoomId,
    links: &[Link],
    kind: MediaKind,
    packet: &Incoming,
) {
    for link in links {
        let wanted = kind == MediaKind::Audio
            || link
                .needs
                .get(&packet.key)
                .is_some_and(|n| n[usize::from(packet.layer.min(2))]);
        if !wanted || !link.announced.contains(&packet.key) {
            continue;
        }
        out.push_back(RelayOut::Packet {
            node: link.node,
            packet: RelayedPacket {
                track: TrackRef::new(room, packet.key),
                layer: packet.layer,
                seq: packet.seq,
                timestamp: packet.timestamp,
                marker: packet.marker,
                audio_level: packet.ext.audio_level,
                voice_activity: packet.ext.voice_activity,
                payload: packet.payload.clone(),
            },
        });
    }
}

impl Engine {
    /// The nodes that carry the rest of `room` are now `nodes` (empty:
    /// the room is this node's alone). New nodes are announced the local
    /// tracks; the tracks of nodes no longer linked leave the room.
    pub fn handle_link(&mut self, room_id: &RoomId, nodes: &[NodeId]) {
        let room = self.rooms.entry(room_id.clone()).or_default();
        let (kept, dropped): (Vec<Link>, Vec<Link>) = std::mem::take(&mut room.links)
            .into_iter()
            .partition(|l| nodes.contains(&l.node));
        room.links = kept;
        withdraw_all(&mut self.relay_out, room_id, &dropped);
        for node in nodes {
            if !room.links.iter().any(|l| l.node == *node) {
                room.links.push(Link {
                    node: *node,
                    announced: Vec::new(),
                    needs: HashMap::new(),
                });
            }
        }
        let before = room.tracks.len();
        room.tracks
            .retain(|_, t| t.origin.is_none_or(|o| nodes.contains(&o)));
        let changed = room.tracks.len() != before;
        if changed {
            self.assign_sources(room_id);
        }
        self.announce_tracks(room_id);
    }

    /// Something from another node's relay.
    pub fn handle_relay(&mut self, input: RelayIn, now: Instant) {
        match input {
            RelayIn::Packet(p) => {
                let Some(track) = self
                    .rooms
                    .get(&p.track.room)
                    .and_then(|r| r.tracks.get(&p.track.key()))
                else {
                    return;
                };
                let (Some(params), Some(_)) = (track.params, track.origin) else {
                    return;
                };
                let incoming = Incoming {
                    key: p.track.key(),
                    layer: p.layer.min(2),
                    params,
                    seq: p.seq,
                    timestamp: p.timestamp,
                    marker: p.marker,
                    arrival: now,
                    ext: ExtensionValues {
                        audio_level: p.audio_level,
                        voice_activity: p.voice_activity,
                        ..Default::default()
                    },
                    payload: p.payload,
                };
                self.fan_out(&p.track.room, &incoming, now);
            }
            RelayIn::Announce { node, track, info } => {
                let Some(room) = self.rooms.get_mut(&track.room) else {
                    return;
                };
                if !room.links.iter().any(|l| l.node == node) {
                    return;
                }
                let key = track.key();
                if let Some(existing) = room.tracks.get_mut(&key) {
                    // Announced again (the relay reconnected): say again
                    // what is needed of it.
                    if existing.origin == Some(node) {
                        self.relay_out.push_back(RelayOut::Needs {
                            node,
                            track,
                            layers: existing.needed,
                        });
                    }
                    return;
                }
                let rids = info.rids.clone().map(|r| r.map(|r| Rid::from(r.as_str())));
                room.tracks.insert(
                    key,
                    Track {
                        kind: if info.video {
                            MediaKind::Video
                        } else {
                            MediaKind::Audio
                        },
                        index: self.next_track_index,
                        rids,
                        layers: [LayerStats::default(); 3],
                        keyframes: [KeyframeRequester::new(self.config.keyframe_min_interval); 3],
                        needed: [false; 3],
                        origin: Some(node),
                        params: Some(info.params),
                    },
                );
                self.next_track_index += 1;
                self.assign_sources(&track.room);
                self.update_layers(&track.room, now);
            }
            RelayIn::Withdraw { node, track } => {
                let Some(room) = self.rooms.get_mut(&track.room) else {
                    return;
                };
                let key = track.key();
                if room
                    .tracks
                    .get(&key)
                    .is_some_and(|t| t.origin == Some(node))
                {
                    room.tracks.remove(&key);
                    room.speaker.remove(key.0);
                    self.assign_sources(&track.room);
                }
            }
            RelayIn::Needs {
                node,
                track,
                layers,
            } => {
                if let Some(link) = self
                    .rooms
                    .get_mut(&track.room)
                    .and_then(|r| r.links.iter_mut().find(|l| l.node == node))
                {
                    link.needs.insert(track.key(), layers);
                }
            }
            RelayIn::Keyframe { track, layer } => {
                packets_keyframe(&mut self.rooms, &track.room, track.key(), layer, now);
            }
        }
    }

    /// The next message for the relay.
    #[must_use]
    pub fn poll_relay(&mut self) -> Option<RelayOut> {
        self.relay_out.pop_front()
    }

    /// Announces every local track whose codec is known to every linked
    /// node that has not had it, and withdraws the ended ones.
    pub(super) fn announce_tracks(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        for link in &mut room.links {
            let mut i = 0;
            while i < link.announced.len() {
                let key = link.announced[i];
                if room.tracks.get(&key).is_some_and(|t| t.origin.is_none()) {
                    i += 1;
                } else {
                    link.announced.swap_remove(i);
                    link.needs.remove(&key);
                    self.relay_out.push_back(RelayOut::Withdraw {
                        node: link.node,
                        track: TrackRef::new(room_id, key),
                    });
                }
            }
            for (key, track) in &room.tracks {
                let Some(params) = track.params else {
                    continue;
                };
                if track.origin.is_some() || link.announced.contains(key) {
                    continue;
                }
                link.announced.push(*key);
                self.relay_out.push_back(RelayOut::Announce {
                    node: link.node,
                    track: TrackRef::new(room_id, *key),
                    info: TrackInfo {
                        video: track.kind == MediaKind::Video,
                        params,
                        rids: track.rids.map(|r| r.map(|r| r.to_string())),
                    },
                });
            }
        }
    }
}
