//! Simulcast layer selection.
//!
//! [`choose_layer`] is a pure function of what the publisher is sending,
//! the subscriber's bandwidth estimate and its preference. [`LayerSelector`]
//! applies the choice to the packet stream: it switches only on a keyframe
//! of the target layer (a decoder cannot start anywhere else), up or down,
//! and says when it is waiting for one so that the owner can ask the
//! publisher for it.

/// Simulcast layer index: 0 = q (low), 1 = h (half), 2 = f (full).
pub type Layer = u8;

/// Default frame heights of the layers when the publisher's real size is
/// not known yet (the libwebrtc layer table for a 1280×720 source).
pub const DEFAULT_HEIGHTS: [u32; 3] = [180, 360, 720];

/// What the subscriber sees of one publisher layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerView {
    /// Which layer.
    pub layer: Layer,
    /// Packets arrived recently.
    pub active: bool,
    /// Measured bitrate, bits per second.
    pub bitrate_bps: u64,
    /// Frame height, when a keyframe told it.
    pub height: Option<u32>,
}

/// What a subscriber wants of a video track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Preference {
    /// Highest frame height wanted (a thumbnail wants 180, a spotlight
    /// 720); `None` means as high as bandwidth allows.
    pub max_height: Option<u32>,
    /// The subscriber wants no video at all.
    pub paused: bool,
}

/// The layer a subscriber should receive: the highest active layer whose
/// height fits the preference and whose bitrate fits the estimate. When
/// nothing fits, the lowest active layer (a small picture beats none);
/// `None` when paused or nothing is active.
#[must_use]
pub fn choose_layer(
    layers: &[LayerView],
    estimate_bps: Option<u64>,
    preference: Preference,
) -> Option<Layer> {
    if preference.paused {
        return None;
    }
    let height = |v: &LayerView| {
        v.height
            .unwrap_or(DEFAULT_HEIGHTS[usize::from(v.layer.min(2))])
    };
    let mut active: Vec<&LayerView> = layers.iter().filter(|v| v.active).collect();
    active.sort_by_key(|v| v.layer);
    let lowest = active.first().map(|v| v.layer);
    active
        .iter()
        .filter(|v| preference.max_height.is_none_or(|max| height(v) <= max))
        .filter(|v| estimate_bps.is_none_or(|bwe| v.bitrate_bps <= bwe))
        .map(|v| v.layer)
        .next_back()
        .or(lowest)
}

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Forward,
    /// Forward it, and it starts a new layer: splice the stream here.
    Switch {
        /// The layer before, if any.
        from: Option<Layer>,
        /// The layer from now on.
        to: Layer,
    },
    /// Not for this subscriber.
    Drop,
}

/// Per subscriber and video track: which layer is forwarded now and which
/// one it should move to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSelector {
    current: Option<Layer>,
    target: Option<Layer>,
}

impl LayerSelector {
    /// Sets the layer to move to (from [`choose_layer`]).
    pub fn set_target(&mut self, target: Option<Layer>) {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
    }

    /// The layer being forwarded.
    #[must_use]
    pub fn current(&self) -> Option<Layer> {
        self.current
    }

    /// The layer a keyframe is needed for, while waiting to switch.
    #[must_use]
    pub fn wants_keyframe(&self) -> Option<Layer> {
        match (self.current, self.target) {
            (c, Some(t)) if c != Some(t) => Some(t),
            _ => None,
        }
    }

    /// Decides for one packet of `layer`; `keyframe_start` is true for the
    /// first packet of a keyframe.
    pub fn handle_packet(&mut self, layer: Layer, keyframe_start: bool) -> Decision {
        if Some(layer) == self.target && Some(layer) != self.current && keyframe_start {
            let from = self.current.replace(layer);
            return Decision::Switch { from, to: layer };
        }
        if Some(layer) == self.current {
            Decision::Forward
        } else {
            Decision::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(bitrates: [u64; 3]) -> Vec<LayerView> {
        (0..3)
            .map(|i| LayerView {
                layer: i,
                active: bitrates[usize::from(i)] > 0,
                bitrate_bps: bitrates[usize::from(i)],
                height: None,
            })
            .collect()
    }

    #[test]
    fn choice_follows_bandwidth_preference_and_activity() {
        let all = layers([150_000, 500_000, 1_700_000]);
        let any = Preference::default();
        assert_eq!(choose_layer(&all, None, any), Some(2));
        assert_eq!(choose_layer(&all, Some(1_000_000), any), Some(1));
        assert_eq!(
            choose_layer(&all, Some(100_000), any),
            Some(0),
            "lowest when nothing fits"
        );
        let thumb = Preference {
            max_height: Some(180),
            paused: false,
        };
        assert_eq!(choose_layer(&all, None, thumb), Some(0));
        let paused = Preference {
            max_height: None,
            paused: true,
        };
        assert_eq!(choose_layer(&all, None, paused), None);
        let no_high = layers([150_000, 500_000, 0]);
        assert_eq!(choose_layer(&no_high, None, any), Some(1));
        assert_eq!(choose_layer(&layers([0, 0, 0]), None, any), None);
    }

    #[test]
    fn switches_only_on_a_keyframe_of_the_target() {
        let mut s = LayerSelector::default();
        s.set_target(Some(2));
        assert_eq!(s.handle_packet(2, false), Decision::Drop);
        assert_eq!(s.wants_keyframe(), Some(2));
        assert_eq!(
            s.handle_packet(2, true),
            Decision::Switch { from: None, to: 2 }
        );
        assert_eq!(s.handle_packet(2, false), Decision::Forward);
        assert_eq!(s.handle_packet(0, true), Decision::Drop);
        // Down: keep forwarding the current layer until the lower keyframe.
        s.set_target(Some(0));
        assert_eq!(s.handle_packet(2, false), Decision::Forward);
        assert_eq!(s.wants_keyframe(), Some(0));
        assert_eq!(
            s.handle_packet(0, true),
            Decision::Switch {
                from: Some(2),
                to: 0
            }
        );
        assert_eq!(s.handle_packet(2, false), Decision::Drop);
        assert_eq!(s.wants_keyframe(), None);
    }
}
