//! The frames a client sends: every one is a request, answered by one frame
//! that names its `id`.
//!
//! The bounds in `#[schemars(...)]` are the ones the domain enforces (it
//! answers `invalid_request` past them); they are here so that the schemas
//! in `docs/protocol.md` show them. `null` for an optional field without a
//! default reads as "left out", which is why those fields are `Option`s.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::calls::{CallMedia, Quality};
use crate::ids::{CallId, ConversationId, MessageId, UserId};
use crate::messaging::AttachmentRef;
use crate::store::messaging::Action;

/// A request frame, told apart by its `type`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Post a message.
    Send {
        /// The request's id.
        id: String,
        /// Where to post.
        conversation_id: ConversationId,
        /// The sender's name for this message: a retry with the same one
        /// returns the first message.
        #[schemars(length(min = 1, max = 256))]
        client_id: String,
        /// At most 32768 bytes of UTF-8 (32 KiB; the character count is the
        /// bound for ASCII only).
        #[serde(default)]
        #[schemars(length(max = 32768))]
        text: String,
        /// Any JSON the application attaches.
        #[serde(default)]
        #[schemars(with = "Value")]
        data: Option<Value>,
        /// Who sees the message (default: every member).
        #[serde(default)]
        recipients: Option<Vec<UserId>>,
        /// Buttons; a click goes to the application's bot when it wrote the
        /// message.
        #[serde(default)]
        actions: Vec<Action>,
        /// Ready files the sender uploaded to this conversation.
        #[serde(default)]
        #[schemars(length(max = 20))]
        attachments: Vec<AttachmentRef>,
        /// Reply in the thread of this message of the conversation (a
        /// reply to a reply goes to the same thread).
        #[serde(default)]
        thread_id: Option<MessageId>,
        /// Members it mentions: each must see the message.
        #[serde(default)]
        #[schemars(length(max = 50))]
        mentions: Vec<UserId>,
        /// It mentions every member (`@all`): groups only, when the
        /// application allows it.
        #[serde(default)]
        mention_all: bool,
        /// Quote this message of the conversation.
        #[serde(default)]
        quote: Option<MessageId>,
    },
    /// Copy a message you can see into a conversation you may post in.
    Forward {
        /// The request's id.
        id: String,
        /// Where to post the copy.
        conversation_id: ConversationId,
        /// The sender's name for the copy: a retry with the same one
        /// returns the first copy.
        #[schemars(length(min = 1, max = 256))]
        client_id: String,
        /// The original's conversation.
        from_conversation_id: ConversationId,
        /// The original.
        message_id: MessageId,
    },
    /// Create a conversation (not a contextual one).
    CreateConversation {
        /// The request's id.
        id: String,
        /// Its title.
        #[schemars(length(min = 1, max = 256))]
        title: String,
        /// Members besides you.
        #[serde(default)]
        members: Vec<UserId>,
        /// A group conversation (default: more than two members).
        #[serde(default)]
        is_group: Option<bool>,
        /// Shown in the members' lists (default true).
        #[serde(default)]
        displayed: Option<bool>,
        /// Every user of the application is a member.
        #[serde(default)]
        all_users: bool,
        /// The application's key: a second create with it returns the first
        /// conversation (bots only).
        #[serde(default)]
        #[schemars(length(min = 1, max = 256))]
        key: Option<String>,
    },
    /// Add members to a group conversation.
    AddMembers {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Who to add.
        members: Vec<UserId>,
    },
    /// Remove a member (yourself: leave).
    RemoveMember {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Who to remove.
        user_id: UserId,
    },
    /// Open (or create) the conversation bound to a context.
    OpenContext {
        /// The request's id.
        id: String,
        /// The context, e.g. a business object's reference.
        #[schemars(length(min = 1, max = 256))]
        context: String,
        /// The title when the conversation is created.
        #[serde(default)]
        #[schemars(length(max = 256))]
        title: String,
    },
    /// A page of a conversation's messages.
    History {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Only messages numbered above this, oldest first.
        #[serde(default)]
        after: Option<u64>,
        /// Only messages numbered below this.
        #[serde(default)]
        before: Option<u64>,
        /// At most this many (default 50).
        #[serde(default)]
        #[schemars(range(min = 1, max = 200))]
        limit: Option<u32>,
        /// Only the replies in the thread of this message.
        #[serde(default)]
        thread_id: Option<MessageId>,
        /// Only messages that are not replies.
        #[serde(default)]
        top_level: bool,
    },
    /// Move your read mark.
    Read {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The number of the last message read.
        seq: u64,
        /// Move your read mark in this message's thread instead.
        #[serde(default)]
        thread_id: Option<MessageId>,
    },
    /// Follow a thread, or stop following it.
    Follow {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Any message of the thread.
        thread_id: MessageId,
        /// Stop following it.
        #[serde(default)]
        unfollow: bool,
    },
    /// The messages that mention you.
    Mentions {
        /// The request's id.
        id: String,
        /// At most this many (default 50).
        #[serde(default)]
        #[schemars(range(min = 1, max = 200))]
        limit: Option<u32>,
    },
    /// The threads you follow.
    Threads {
        /// The request's id.
        id: String,
        /// At most this many (default 50).
        #[serde(default)]
        #[schemars(range(min = 1, max = 50))]
        limit: Option<u32>,
    },
    /// Change the text of your message.
    Edit {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// At most 32768 bytes of UTF-8 (32 KiB; the character count is the
        /// bound for ASCII only).
        #[schemars(length(max = 32768))]
        text: String,
    },
    /// Delete your message (its body is emptied).
    Delete {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
    },
    /// Add your reaction to a message, or take it back.
    React {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// An emoji (or a short name such as `:+1:`): 1 to 64 bytes, no
        /// spaces.
        #[schemars(length(min = 1, max = 64))]
        emoji: String,
        /// Take your reaction back.
        #[serde(default)]
        remove: bool,
    },
    /// Pin a message in its conversation, or unpin it.
    Pin {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// Unpin it.
        #[serde(default)]
        unpin: bool,
    },
    /// A conversation's pinned messages.
    Pins {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// A conversation's settings; bots change them.
    ConversationSettings {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Bots only: only the application pins (true), or every member.
        #[serde(default)]
        pins_app_only: Option<bool>,
        /// Bots only: members may mention `@all` (in groups).
        #[serde(default)]
        mention_all: Option<bool>,
    },
    /// Who has read a message.
    ReadBy {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
    },
    /// A page of your conversations, most recently active first.
    List {
        /// The request's id.
        id: String,
        /// At most this many (default 50).
        #[serde(default)]
        #[schemars(range(min = 1, max = 200))]
        limit: Option<u32>,
        /// The `next` cursor of the previous page.
        #[serde(default)]
        after: Option<String>,
    },
    /// Click an action of a message.
    Click {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The action's `value`.
        value: String,
    },
    /// Tell the other members that you are typing.
    Typing {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// The members of a conversation.
    Members {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// Say you are away (or back), and read the presence of users.
    Presence {
        /// The request's id.
        id: String,
        /// Away (true) or back (false).
        #[serde(default)]
        away: Option<bool>,
        /// Whose presence to read.
        #[serde(default)]
        users: Vec<UserId>,
    },
    /// Search the messages you can see.
    Search {
        /// The request's id.
        id: String,
        /// Words to find.
        #[schemars(length(min = 1, max = 256))]
        query: String,
        /// At most this many (default 50).
        #[serde(default)]
        #[schemars(range(min = 1, max = 200))]
        limit: Option<u32>,
    },
    /// Answered by `pong`.
    Ping {
        /// The request's id.
        id: String,
    },
    /// Start a call in a conversation.
    CallStart {
        /// The request's id.
        id: String,
        /// The conversation.
        conversation_id: ConversationId,
        /// Audio only, or audio and video.
        media: CallMedia,
        /// The client's own name for this device (e.g. a random id kept for
        /// the page's lifetime); a later `call_join` with the same name is
        /// this client coming back.
        #[serde(default)]
        #[schemars(length(min = 1, max = 256))]
        device_id: Option<String>,
    },
    /// Join a call on this device.
    CallJoin {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// The client's own name for this device (e.g. a random id kept for
        /// the page's lifetime); a later `call_join` with the same name is
        /// this client coming back.
        #[serde(default)]
        #[schemars(length(min = 1, max = 256))]
        device_id: Option<String>,
    },
    /// Say no to a ringing call.
    CallDecline {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// Busy rather than declined.
        #[serde(default)]
        busy: bool,
    },
    /// Leave a call.
    CallLeave {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
    },
    /// Relay a WebRTC signal to the other member of a peer-to-peer call.
    CallSignal {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// The other member.
        to: UserId,
        /// The signal, passed on as it is.
        #[schemars(with = "Map<String, Value>")]
        signal: Value,
    },
    /// Publish media to the SFU.
    CallPublish {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// An SDP offer.
        sdp: String,
        /// The offer's m-line that carries the screen.
        #[serde(default)]
        screen_mid: Option<String>,
    },
    /// Receive the call's media from the SFU.
    CallSubscribe {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// An SDP offer.
        sdp: String,
    },
    /// Say what you send: microphone, camera, screen.
    #[serde(rename = "call_media")]
    CallMediaState {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// The microphone is on.
        #[serde(default)]
        audio: Option<bool>,
        /// The camera is on.
        #[serde(default)]
        video: Option<bool>,
        /// The screen is shared.
        #[serde(default)]
        screen: Option<bool>,
    },
    /// Say what you want of a video slot.
    CallQuality {
        /// The request's id.
        id: String,
        /// The call.
        call_id: CallId,
        /// The slot (default: every slot).
        #[serde(default)]
        mid: Option<String>,
        /// Thumbnail, spotlight or paused.
        quality: Quality,
    },
}

/// The `type`s of request frames (anything else is `unknown_type`); a
/// test checks that it lists exactly the variants of [`Request`].
pub const KNOWN_TYPES: &[&str] = &[
    "send",
    "forward",
    "create_conversation",
    "add_members",
    "remove_member",
    "open_context",
    "history",
    "read",
    "edit",
    "delete",
    "react",
    "pin",
    "pins",
    "conversation_settings",
    "read_by",
    "follow",
    "threads",
    "mentions",
    "list",
    "click",
    "typing",
    "members",
    "presence",
    "search",
    "ping",
    "call_start",
    "call_join",
    "call_decline",
    "call_leave",
    "call_signal",
    "call_publish",
    "call_subscribe",
    "call_media",
    "call_quality",
];
