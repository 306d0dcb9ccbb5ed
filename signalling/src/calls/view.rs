//! What clients see of calls: media, topology, member states, quality
//! and the views sent in events.

use confer_sfu::api::Preference;
use serde::{Deserialize, Serialize};

use crate::ids::{CallId, ConversationId, UserId};

/// Audio only, or audio and video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallMedia {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

/// How media flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Directly between the two devices.
    P2p,
    /// Through the SFU.
    Sfu,
}

/// A member's part in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Its devices ring.
    Ringing,
    /// In the call on one device.
    Joined,
    /// Said no.
    Declined,
    /// In another call, or said busy.
    Busy,
    /// Did not answer in time.
    Missed,
    /// Was in the call and left it.
    Left,
}

/// What a subscriber wants of a video slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Small picture: the low layer.
    Thumbnail,
    /// Large picture: the highest layer the bandwidth allows.
    Spotlight,
    /// No video.
    Paused,
}

impl Quality {
    pub(super) fn preference(self) -> Preference {
        match self {
            Self::Thumbnail => Preference {
                max_height: Some(180),
                paused: false,
            },
            Self::Spotlight => Preference::default(),
            Self::Paused => Preference {
                max_height: None,
                paused: true,
            },
        }
    }
}

/// One participant as clients see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ParticipantView {
    /// The user.
    pub user_id: UserId,
    /// Its state.
    pub state: MemberState,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing its screen.
    pub screen: bool,
}

/// A call as clients see it.
// Read back from JSON too, when another node of a cluster answers for it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct CallView {
    /// Id.
    pub id: CallId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Audio or video.
    pub media: CallMedia,
    /// Current topology.
    pub topology: Topology,
    /// Who started it.
    pub started_by: UserId,
    /// RFC 3339 start time.
    pub started_at: String,
    /// `active` or `ended`.
    #[schemars(extend("enum" = ["active", "ended"]))]
    pub state: &'static str,
    /// Why it ended: `completed`, `cancelled`, `declined`, `busy` or `missed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["completed", "cancelled", "declined", "busy", "missed"]))]
    pub reason: Option<&'static str>,
    /// Every member asked to the call.
    pub participants: Vec<ParticipantView>,
}

/// The call states, as their `'static` names.
const STATES: [&str; 2] = ["active", "ended"];
/// The reasons a call ends, as their `'static` names.
const REASONS: [&str; 6] = [
    "completed",
    "cancelled",
    "declined",
    "busy",
    "missed",
    "interrupted",
];

fn one_of<E: serde::de::Error>(name: &str, names: &[&'static str]) -> Result<&'static str, E> {
    names
        .iter()
        .find(|n| **n == name)
        .copied()
        .ok_or_else(|| E::custom(format!("unknown value {name:?}")))
}

impl<'de> Deserialize<'de> for CallView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The same fields, owned.
        #[derive(Deserialize)]
        struct Wire {
            id: CallId,
            conversation_id: ConversationId,
            media: CallMedia,
            topology: Topology,
            started_by: UserId,
            started_at: String,
            state: String,
            #[serde(default)]
            reason: Option<String>,
            participants: Vec<ParticipantView>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Self {
            id: w.id,
            conversation_id: w.conversation_id,
            media: w.media,
            topology: w.topology,
            started_by: w.started_by,
            started_at: w.started_at,
            state: one_of(&w.state, &STATES)?,
            reason: w.reason.map(|r| one_of(&r, &REASONS)).transpose()?,
            participants: w.participants,
        })
    }
}
