//! [`SfuControl`] on the wire: the commands, their answers and the pages
//! of events that a standalone SFU serves over HTTP (`/control…`, see
//! [`crate::http`]) and [`crate::remote::RemoteSfu`] speaks, so that
//! signalling drives an SFU in another process exactly as the one in its
//! own.
//!
//! - `POST /control` takes a [`ControlCommand`] and answers a
//!   [`ControlAnswer`] (a refusal is an answer too, with the
//!   [`SfuError`] it stands for).
//! - `GET /control/events?after=N` answers an [`EventsPage`]: the events
//!   after number `N`, waiting up to [`EVENTS_WAIT`] for one when there is
//!   none yet (a long poll), or what the reader missed.
//! - `GET /control/health` and `GET /control/stats` answer
//!   [`SfuHealth`](crate::control::SfuHealth) and
//!   [`SfuStats`](crate::control::SfuStats).
//!
//! Every route takes the SFU's bearer token when it has one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{SfuControl, SfuError};
use crate::core::simulcast::Preference;
use crate::engine::{JoinError, Role};
use crate::events::{Missed, Sequenced};
use crate::ids::{ParticipantId, RoomId};
use crate::relay::RelayPeer;

/// How long `GET /control/events` waits for an event before it answers
/// an empty page.
pub const EVENTS_WAIT: Duration = Duration::from_secs(20);

/// A command of [`SfuControl`], told apart by `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlCommand {
    /// [`SfuControl::create_room`].
    CreateRoom {
        /// The room.
        room: RoomId,
    },
    /// [`SfuControl::join_as`].
    Join {
        /// The room.
        room: RoomId,
        /// The id the caller chose.
        participant: ParticipantId,
        /// Publish or subscribe.
        role: Role,
        /// The SDP offer.
        offer: String,
        /// The client's other session in the room.
        linked: Option<ParticipantId>,
    },
    /// [`SfuControl::renegotiate`].
    Renegotiate {
        /// The session.
        participant: ParticipantId,
        /// The new SDP offer.
        offer: String,
    },
    /// [`SfuControl::leave`].
    Leave {
        /// The session.
        participant: ParticipantId,
    },
    /// [`SfuControl::set_preference`].
    SetPreference {
        /// The subscriber.
        participant: ParticipantId,
        /// What it wants.
        preference: Preference,
    },
    /// [`SfuControl::set_slot_preference`].
    SetSlotPreference {
        /// The subscriber.
        participant: ParticipantId,
        /// The slot.
        mid: String,
        /// What it wants of it.
        preference: Preference,
    },
    /// [`SfuControl::close_room`].
    CloseRoom {
        /// The room.
        room: RoomId,
    },
    /// [`SfuControl::link_room`].
    LinkRoom {
        /// The room.
        room: RoomId,
        /// The other nodes carrying part of it.
        peers: Vec<RelayPeer>,
    },
}

/// The answer to a [`ControlCommand`], told apart by `answer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ControlAnswer {
    /// Done; nothing to tell.
    Done,
    /// A session joined: its SDP answer.
    Joined {
        /// The session.
        participant: ParticipantId,
        /// The SDP answer.
        sdp: String,
    },
    /// A renegotiation's SDP answer.
    Sdp {
        /// The SDP answer.
        sdp: String,
    },
    /// Refused.
    Refused {
        /// Which [`SfuError`].
        error: Refusal,
        /// Its sentence.
        message: String,
    },
}

/// The kinds of [`SfuError`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// [`SfuError::Join`]: the offer could not be used.
    BadOffer,
    /// [`SfuError::UnknownParticipant`].
    UnknownParticipant,
    /// [`SfuError::DuplicateParticipant`].
    DuplicateParticipant,
    /// [`SfuError::Overloaded`].
    Overloaded,
    /// [`SfuError::Unavailable`] or [`SfuError::Start`].
    Unavailable,
}

/// What `GET /control/events` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// The events after the number asked for, in order (none when the
    /// wait ran out, or when `missed` says why).
    pub events: Vec<Sequenced>,
    /// The events the reader will never see: it goes on after them.
    pub missed: Option<Missed>,
    /// The number of the SFU's last event.
    pub last: u64,
}

impl ControlAnswer {
    /// The answer that stands for `error`.
    #[must_use]
    pub fn refused(error: &SfuError) -> Self {
        let kind = match error {
            SfuError::Join(_) => Refusal::BadOffer,
            SfuError::UnknownParticipant => Refusal::UnknownParticipant,
            SfuError::DuplicateParticipant => Refusal::DuplicateParticipant,
            SfuError::Overloaded => Refusal::Overloaded,
            SfuError::Unavailable | SfuError::Start(_) => Refusal::Unavailable,
        };
        Self::Refused {
            error: kind,
            message: error.to_string(),
        }
    }

    /// The error a refusal stands for, or the answer itself.
    ///
    /// # Errors
    /// The [`SfuError`] of a refusal.
    pub fn into_result(self) -> Result<Self, SfuError> {
        match self {
            Self::Refused { error, message } => Err(match error {
                Refusal::BadOffer => SfuError::Join(JoinError::Remote(message)),
                Refusal::UnknownParticipant => SfuError::UnknownParticipant,
                Refusal::DuplicateParticipant => SfuError::DuplicateParticipant,
                Refusal::Overloaded => SfuError::Overloaded,
                Refusal::Unavailable => SfuError::Unavailable,
            }),
            other => Ok(other),
        }
    }
}

/// Carries out `command` on `sfu` (the standalone SFU's side).
pub async fn execute(sfu: &dyn SfuControl, command: ControlCommand) -> ControlAnswer {
    let done = |r: Result<(), SfuError>| match r {
        Ok(()) => ControlAnswer::Done,
        Err(e) => ControlAnswer::refused(&e),
    };
    match command {
        ControlCommand::CreateRoom { room } => done(sfu.create_room(&room).await),
        ControlCommand::Join {
            room,
            participant,
            role,
            offer,
            linked,
        } => match sfu.join_as(&room, participant, role, offer, linked).await {
            Ok(joined) => ControlAnswer::Joined {
                participant: joined.participant,
                sdp: joined.answer,
            },
            Err(e) => ControlAnswer::refused(&e),
        },
        ControlCommand::Renegotiate { participant, offer } => {
            match sfu.renegotiate(participant, offer).await {
                Ok(sdp) => ControlAnswer::Sdp { sdp },
                Err(e) => ControlAnswer::refused(&e),
            }
        }
        ControlCommand::Leave { participant } => done(sfu.leave(participant).await),
        ControlCommand::SetPreference {
            participant,
            preference,
        } => done(sfu.set_preference(participant, preference).await),
        ControlCommand::SetSlotPreference {
            participant,
            mid,
            preference,
        } => done(sfu.set_slot_preference(participant, mid, preference).await),
        ControlCommand::CloseRoom { room } => done(sfu.close_room(&room).await),
        ControlCommand::LinkRoom { room, peers } => done(sfu.link_room(&room, peers).await),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_and_refusals_cross_the_wire_unchanged() {
        let join = ControlCommand::Join {
            room: RoomId::from("r"),
            participant: ParticipantId(7),
            role: Role::Subscribe,
            offer: "v=0".to_owned(),
            linked: Some(ParticipantId(6)),
        };
        let text = serde_json::to_string(&join).unwrap();
        assert!(text.contains(r#""command":"join""#), "{text}");
        assert_eq!(serde_json::from_str::<ControlCommand>(&text).unwrap(), join);
        for error in [
            SfuError::UnknownParticipant,
            SfuError::DuplicateParticipant,
            SfuError::Overloaded,
            SfuError::Unavailable,
            SfuError::Join(JoinError::BadOffer("no m-line".to_owned())),
        ] {
            let answer = ControlAnswer::refused(&error);
            let text = serde_json::to_string(&answer).unwrap();
            let back: ControlAnswer = serde_json::from_str(&text).unwrap();
            let again = back.into_result().unwrap_err();
            assert_eq!(again.to_string(), error.to_string());
        }
    }
}
