//! Two engines in one virtual time, their relays joined: the cascade
//! without sockets or QUIC.

use std::time::{Duration, Instant};

use super::MemNet;
use crate::engine::{NodeId, RelayIn, RelayOut};
use crate::ids::RoomId;

/// Two engines — two nodes — carrying one room in the same virtual time,
/// their relays joined by a lossless link: what node i's engine outputs
/// for `NodeId(j)` reaches node j's at once, from `NodeId(i)`.
pub struct MemCluster {
    pub nodes: [MemNet; 2],
    /// Video packets that crossed, per sending node and layer.
    pub relayed_video: [[u64; 3]; 2],
    /// Audio packets that crossed, per sending node.
    pub relayed_audio: [u64; 2],
}

impl MemCluster {
    /// Two empty nodes.
    pub fn new(now: Instant) -> Self {
        Self {
            nodes: [MemNet::new(now), MemNet::new(now).with_ports_from(7000)],
            relayed_video: [[0; 3]; 2],
            relayed_audio: [0; 2],
        }
    }

    /// Links `room` on both nodes (each names the other by its index).
    pub fn link(&mut self, room: &RoomId) {
        self.nodes[0].engine.handle_link(room, &[NodeId(1)]);
        self.nodes[1].engine.handle_link(room, &[NodeId(0)]);
    }

    /// Runs both nodes for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.nodes[0].now + d;
        while self.nodes[0].now < until {
            for i in 0..2 {
                self.nodes[i].step();
                self.carry(i);
            }
            let next = self
                .nodes
                .iter()
                .filter_map(MemNet::next_deadline)
                .min()
                .unwrap_or(until)
                .min(until);
            let now = next.max(self.nodes[0].now + Duration::from_millis(1));
            for n in &mut self.nodes {
                n.now = now;
            }
        }
    }

    /// Hands what node `from` has for the other node to it.
    fn carry(&mut self, from: usize) {
        let to = 1 - from;
        let origin = NodeId(u32::try_from(from).unwrap());
        while let Some(out) = self.nodes[from].engine.poll_relay() {
            let input = match out {
                RelayOut::Announce { track, info, .. } => RelayIn::Announce {
                    node: origin,
                    track,
                    info,
                },
                RelayOut::Withdraw { track, .. } => RelayIn::Withdraw {
                    node: origin,
                    track,
                },
                RelayOut::Packet { packet, .. } => {
                    let layer = usize::from(packet.layer.min(2));
                    if packet.audio_level.is_some() {
                        self.relayed_audio[from] += 1;
                    } else {
                        self.relayed_video[from][layer] += 1;
                    }
                    RelayIn::Packet(packet)
                }
                RelayOut::Needs { track, layers, .. } => RelayIn::Needs {
                    node: origin,
                    track,
                    layers,
                },
                RelayOut::Keyframe { track, layer, .. } => RelayIn::Keyframe { track, layer },
            };
            let now = self.nodes[to].now;
            self.nodes[to].engine.handle_relay(input, now);
        }
    }
}
