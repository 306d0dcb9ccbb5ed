//! The frames the server sends: answers naming a request's `id`, events
//! from a user's log, ephemeral events, and the frames of a session's
//! start.
//!
//! An event is rendered to its wire form once, by the domain, and every
//! session that delivers it writes that text into its frame
//! ([`event_frame`], [`ephemeral_frame`]) instead of serializing it again.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bus::Presence;
use crate::calls::{CallMedia, CallView, Topology};
use crate::config::IceServer;
use crate::error::Code;
use crate::ids::{CallId, ConversationId, MessageId, UserId};
use crate::messaging::{ConversationView, MessageView};
use crate::store::messaging::Author;
use confer_sfu::api::LostReason;

/// A frame the server sends, told apart by its `type`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame of a session.
    Welcome {
        /// Who you are.
        user_id: UserId,
        /// The number of your last event.
        event_seq: u64,
        /// Active calls you were asked to.
        calls: Vec<CallView>,
    },
    /// An event of your log.
    Event {
        /// Its number in your log (from 1, increasing by one).
        #[schemars(range(min = 1))]
        seq: u64,
        /// What happened.
        event: Box<Event>,
    },
    /// An event that is not stored, numbered or replayed.
    Ephemeral {
        /// What happened.
        event: Ephemeral,
    },
    /// Events were lost to you: reload what you show.
    Resync {
        /// Why.
        reason: ResyncReason,
        /// The number of your last event: resume from it.
        event_seq: u64,
    },
    /// The answer to a request that changed something.
    Ack(Box<Ack>),
    /// The answer to `history`.
    History {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Oldest first.
        messages: Vec<MessageView>,
    },
    /// The answer to `list`.
    Conversations {
        /// The request's id.
        id: String,
        /// Most recently active first.
        conversations: Vec<ConversationView>,
        /// The cursor of the next page, null on the last.
        next: Option<String>,
    },
    /// The answer to `pins`.
    Pins {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The pinned messages you can see, most recently pinned first.
        #[schemars(length(max = 50))]
        messages: Vec<MessageView>,
        /// Only the application pins in this conversation.
        app_only: bool,
    },
    /// The answer to `conversation_settings`: the settings now.
    ConversationSettings {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Only the application pins messages.
        pins_app_only: bool,
        /// Members may mention `@all` (in groups).
        mention_all: bool,
    },
    /// The answer to `read_by`.
    ReadBy {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The members who have read it (its author left out): at most
        /// 1000.
        #[schemars(length(max = 1000))]
        users: Vec<UserId>,
        /// More than 1000 have.
        truncated: bool,
    },
    /// The answer to `mentions`.
    Mentions {
        /// The request's id.
        id: String,
        /// The messages that mention you or `@all` in conversations you
        /// can read, the newest first.
        #[schemars(length(max = 200))]
        messages: Vec<MessageView>,
    },
    /// The answer to `threads`.
    Threads {
        /// The request's id.
        id: String,
        /// The roots of the threads you follow that have replies, the most
        /// recently replied first, each with its `thread`.
        #[schemars(length(max = 50))]
        threads: Vec<MessageView>,
    },
    /// The answer to `search`.
    Search {
        /// The request's id.
        id: String,
        /// Best match first.
        messages: Vec<MessageView>,
    },
    /// The answer to `members`.
    Members {
        /// The request's id.
        id: String,
        /// At most 1000 of them.
        #[schemars(length(max = 1000))]
        members: Vec<Member>,
        /// There are more than 1000.
        truncated: bool,
    },
    /// The answer to `presence`: the users asked about that you may see.
    Presence {
        /// The request's id.
        id: String,
        /// Presence by user id.
        users: BTreeMap<UserId, Presence>,
    },
    /// The answer to `ping`.
    Pong {
        /// The request's id.
        id: String,
    },
    /// The answer to `call_publish` and `call_subscribe`.
    CallAnswer {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// The SFU's SDP answer.
        sdp: String,
    },
    /// A request, or a frame that is not one, refused.
    Error {
        /// The request's id; null when the frame had none.
        id: Option<String>,
        /// What went wrong, for programs.
        code: Code,
        /// What went wrong, for people.
        message: String,
        /// With `rate_limited` only: milliseconds until a frame of this
        /// kind is accepted again.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 1))]
        retry_after_ms: Option<u64>,
    },
}

/// An `ack`: the request's id and what the request made.
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct Ack {
    /// The request's id.
    pub id: String,
    /// The message sent, edited or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageView>,
    /// The conversation created, opened or changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationView>,
    /// Your read mark after `read`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
    /// After `typing`: false when it was not passed on (rate limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<bool>,
    /// After `react` and `pin`: false when it was so already (nothing
    /// changed and no event was sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// After a `react` or `pin` that changed something: the members with
    /// that reaction on the message now, or the conversation's pinned
    /// messages now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The call started or joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallView>,
    /// The STUN and TURN servers to use in the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServer>>,
}

impl Ack {
    /// An `ack` that carries nothing but the request's id.
    #[must_use]
    pub fn of(id: String) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }
}

/// One member of a conversation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Its display name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Left out when you may not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// Why a session starts over.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The events you missed are more than a session replays, or pruned.
    TooFarBehind,
}

/// An event of a user's log, told apart by its `kind`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A message was posted.
    Message {
        /// The message.
        message: MessageView,
    },
    /// A message's text changed.
    MessageEdited {
        /// The message.
        message: MessageView,
    },
    /// A message was deleted: its body is emptied.
    MessageDeleted {
        /// The message.
        message: MessageView,
    },
    /// You were added to a conversation, or it changed.
    Conversation {
        /// The conversation.
        conversation: ConversationView,
    },
    /// Your read mark moved, on any of your devices.
    Read {
        /// The conversation.
        conversation_id: ConversationId,
        /// The number of the last message read.
        seq: u64,
        /// Your read mark in this thread (its root) moved, not the
        /// conversation's.
        #[serde(skip_serializing_if = "Option::is_none")]
        thread_id: Option<MessageId>,
    },
    /// Bots only: a user clicked an action of the bot's message.
    Action {
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The action's `value`.
        value: String,
        /// Who clicked.
        user_id: Option<UserId>,
    },
    /// A member reacted to a message, or took the reaction back.
    Reaction {
        /// How many members have this reaction on the message now.
        count: u64,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The message's number.
        seq: u64,
        /// Who.
        user_id: UserId,
        /// Added (true) or taken back.
        added: bool,
        /// The reaction.
        emoji: String,
    },
    /// A message was pinned in its conversation, or unpinned.
    Pin {
        /// How many messages the conversation has pinned now.
        count: u64,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The message's number.
        seq: u64,
        /// Pinned (true) or unpinned.
        pinned: bool,
        /// Who pinned or unpinned it.
        by: Author,
    },
    /// You left a conversation or were removed from it.
    Removed {
        /// The conversation.
        conversation_id: ConversationId,
    },
}

/// An ephemeral event, told apart by its `kind`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ephemeral {
    /// A member is typing.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
    },
    /// Someone you share a conversation with came, left or is away.
    Presence {
        /// Who.
        user_id: UserId,
        /// Their presence now.
        presence: Presence,
    },
    /// A call you are asked to, as it is now.
    Call {
        /// The call.
        call: CallView,
    },
    /// How media flows in your call now.
    CallTopology {
        /// The call.
        call_id: CallId,
        /// Peer to peer or through the SFU.
        topology: Topology,
        /// Peer to peer: the other device's user, null while there is none.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Peer")]
        peer: Option<Option<UserId>>,
        /// Peer to peer: you make the offer.
        #[serde(skip_serializing_if = "Option::is_none")]
        offerer: Option<bool>,
        /// Peer to peer: the STUN and TURN servers to use.
        #[serde(skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Vec<IceServer>>,
    },
    /// A WebRTC signal from the other member of a peer-to-peer call.
    CallSignal {
        /// The call.
        call_id: CallId,
        /// Who sent it.
        from: UserId,
        /// The signal, as it was sent.
        #[schemars(with = "Map<String, Value>")]
        signal: Value,
    },
    /// Whose video a received slot carries now.
    CallSlot {
        /// The call.
        call_id: CallId,
        /// The slot's m-line.
        mid: String,
        /// Whose video; null when the slot is free.
        user_id: Option<UserId>,
        /// A shared screen rather than a camera.
        screen: bool,
    },
    /// Who speaks loudest now.
    CallSpeaker {
        /// The call.
        call_id: CallId,
        /// Who; null when nobody does.
        user_id: Option<UserId>,
    },
    /// Whether anyone receives one simulcast layer you publish.
    CallLayer {
        /// The call.
        call_id: CallId,
        /// The published m-line.
        mid: String,
        /// The layer.
        rid: Rid,
        /// Someone receives it: send it (or stop).
        needed: bool,
    },
    /// You joined the call on another device.
    CallMoved {
        /// The call.
        call_id: CallId,
    },
    /// Your media sessions were lost: open them again.
    CallMediaLost {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: LostReason,
    },
}

/// The schema of `call_topology`'s `peer`: a user, or `null`.
struct Peer;

impl JsonSchema for Peer {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Peer".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let user = generator.subschema_for::<UserId>();
        schemars::json_schema!({"oneOf": [user, {"type": "null"}]})
    }
}

/// What the messages that record a call carry in their `data`:
/// `{"call": {...}}`.
#[derive(Debug, Serialize)]
pub struct CallRecordData {
    /// The record.
    pub call: CallRecord,
}

/// A call's start or end, as its conversation records it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CallRecord {
    /// A call started.
    Started {
        /// The call.
        id: CallId,
        /// Audio only, or audio and video.
        media: CallMedia,
    },
    /// A call ended.
    Ended {
        /// The call.
        id: CallId,
        /// Why: `interrupted` when the server stopped during the call.
        #[schemars(extend("enum" = ["completed", "cancelled", "declined", "busy", "missed", "interrupted"]))]
        reason: &'static str,
        /// How long it lasted (not known after a restart).
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<i64>,
        /// When it started (after a restart only).
        #[serde(skip_serializing_if = "Option::is_none")]
        started_at: Option<String>,
        /// Who took part.
        participants: Vec<UserId>,
    },
}

impl CallRecord {
    /// The `data` of the record's message.
    #[must_use]
    pub fn data(self) -> Value {
        serde_json::to_value(CallRecordData { call: self }).expect("a record serializes")
    }
}

/// A simulcast layer: quarter, half or full resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rid {
    /// Quarter resolution.
    Q,
    /// Half resolution.
    H,
    /// Full resolution.
    F,
}

impl Rid {
    /// The layer of an SFU layer index (0 lowest).
    #[must_use]
    pub fn of_layer(layer: u8) -> Self {
        match layer {
            0 => Self::Q,
            1 => Self::H,
            _ => Self::F,
        }
    }
}

/// The text of an `event` frame around an event rendered once.
#[must_use]
pub fn event_frame(seq: u64, rendered: &str) -> String {
    format!(r#"{{"type":"event","seq":{seq},"event":{rendered}}}"#)
}

/// The text of an `ephemeral` frame around an event rendered once.
#[must_use]
pub fn ephemeral_frame(rendered: &str) -> String {
    format!(r#"{{"type":"ephemeral","event":{rendered}}}"#)
}

/// The number a message event is rendered with before the message has
/// its own: never a real one, and the first `"seq":` of the text (the
/// message's number comes before its `data`, the only place where an
/// application's own JSON could say `"seq"` unquoted).
const UNNUMBERED: u64 = u64::MAX;

impl Event {
    /// The `message` event of a message about to be stored at `now`,
    /// rendered once with its number left open: the writer puts in the
    /// number the message gets.
    #[must_use]
    pub fn message_before_numbering(
        new: &crate::store::messaging::NewMessage,
        now: crate::ids::Timestamp,
    ) -> crate::store::messaging::PendingEvent {
        let stored = new.stored(UNNUMBERED, now);
        let text = Self::Message {
            message: MessageView::from(&stored),
        }
        .render();
        crate::store::messaging::PendingEvent::open(&text, "seq", UNNUMBERED)
    }

    /// A `reaction` or `pin` event rendered once with its `count` left
    /// open: the store puts in the count after the change. `count` is the
    /// event's first field, before any text a client wrote.
    ///
    /// # Panics
    /// For another kind of event.
    #[must_use]
    pub fn mark_before_count(
        make: impl FnOnce(u64) -> Self,
    ) -> crate::store::messaging::PendingEvent {
        let event = make(UNNUMBERED);
        assert!(matches!(event, Self::Reaction { .. } | Self::Pin { .. }));
        crate::store::messaging::PendingEvent::open(&event.render(), "count", UNNUMBERED)
    }

    /// Its wire form, as kept in the log and written into `event` frames.
    #[must_use]
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }
}

impl Ephemeral {
    /// Its wire form, as written into `ephemeral` frames.
    #[must_use]
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }
}

impl ServerFrame {
    /// An `ack` frame.
    #[must_use]
    pub fn ack(ack: Ack) -> Self {
        Self::Ack(Box::new(ack))
    }

    /// Its text.
    #[must_use]
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("a frame serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message event rendered before numbering, once numbered, is the
    /// event rendered with the number, whatever the message's text and
    /// data say about `seq`.
    #[test]
    fn a_message_event_is_numbered_without_being_rendered_again() {
        use crate::store::messaging::{Author, MessageBody, NewMessage};
        let new = NewMessage {
            conversation_id: ConversationId::random(),
            id: MessageId::random(),
            author: Author::App,
            client_id: "c".to_owned(),
            body: MessageBody {
                text: format!("\"seq\":{UNNUMBERED} seq"),
                data: Some(serde_json::json!({"seq": UNNUMBERED, "n": {"seq": 1}})),
                ..MessageBody::default()
            },
            joins: None,
        };
        let now = crate::ids::Timestamp(1_700_000_000_000);
        let pending = Event::message_before_numbering(&new, now);
        let stored = new.stored(42, now);
        let direct = Event::Message {
            message: MessageView::from(&stored),
        }
        .render();
        assert_eq!(pending.with_seq(42), direct);
    }

    #[test]
    fn frames_around_rendered_events_are_the_typed_frames() {
        let conversation_id = ConversationId::random();
        let typed = ServerFrame::Event {
            seq: 7,
            event: Box::new(Event::Read {
                conversation_id,
                seq: 3,
                thread_id: None,
            }),
        };
        let rendered = Event::Read {
            conversation_id,
            seq: 3,
            thread_id: None,
        }
        .render();
        let fast: Value = serde_json::from_str(&event_frame(7, &rendered)).unwrap();
        assert_eq!(fast, serde_json::to_value(&typed).unwrap());

        let moved = Ephemeral::CallMoved {
            call_id: CallId::random(),
        };
        let fast: Value = serde_json::from_str(&ephemeral_frame(&moved.render())).unwrap();
        let typed = serde_json::to_value(ServerFrame::Ephemeral { event: moved }).unwrap();
        assert_eq!(fast, typed);
    }
}
