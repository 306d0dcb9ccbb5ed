//! What clients see of conversations and messages, and what they send to
//! create a conversation or attach a file.

use serde::Serialize;

use crate::ids::{ConversationId, FileId, MessageId, UserId};
use crate::store::messaging::{Author, Conversation, MessageBody, StoredMessage};

/// How a conversation is shown to clients.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ConversationView {
    /// Id.
    pub id: ConversationId,
    /// Title.
    pub title: String,
    /// Group rather than one-to-one.
    pub is_group: bool,
    /// Shown in lists.
    pub displayed: bool,
    /// Every user of the application is a member.
    pub all_users: bool,
    /// Application-unique key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Bound business object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Number of its last message.
    pub last_seq: u64,
    /// RFC 3339 time of its last activity.
    pub last_activity: String,
    /// Unread messages, in a user's list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    /// Of the unread messages, those that mention you (or `@all`), in a
    /// user's list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mentions: Option<u64>,
}

impl ConversationView {
    /// The view of a stored conversation.
    #[must_use]
    pub fn of(c: &Conversation, unread: Option<u64>) -> Self {
        Self {
            id: c.id,
            title: c.title.clone(),
            is_group: c.is_group,
            displayed: c.displayed,
            all_users: c.all_users,
            key: c.app_key.clone(),
            context: c.context.clone(),
            last_seq: c.last_seq,
            last_activity: c.last_activity.to_rfc3339(),
            unread,
            mentions: None,
        }
    }
}

/// How a message is shown to clients.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct MessageView {
    /// Id.
    pub id: MessageId,
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Position in the conversation, from 1.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Author.
    pub author: Author,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Content.
    #[serde(flatten)]
    pub body: MessageBody,
    /// RFC 3339 send time.
    pub created_at: String,
    /// RFC 3339 time of the last edit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    /// RFC 3339 time of deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// Its reactions, in the order of their first use (in `history` and
    /// `search` answers; events carry each change as a `reaction` event).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView>,
    /// The root of a thread: its replies as you see them (in `history`,
    /// `search`, `pins` and `threads` answers; events carry each reply as
    /// a `message` with `thread_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadView>,
}

/// A thread, as its root shows it to one reader.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ThreadView {
    /// Replies (deleted ones left out).
    #[schemars(range(min = 1))]
    pub replies: u64,
    /// The last reply's number.
    pub last_reply_seq: u64,
    /// RFC 3339 time of the last reply.
    pub last_reply_at: String,
    /// Replies of others after your read mark in the thread.
    pub unread: u64,
}

impl From<&crate::store::threads::ThreadSummary> for ThreadView {
    fn from(t: &crate::store::threads::ThreadSummary) -> Self {
        Self {
            replies: t.replies,
            last_reply_seq: t.last_seq,
            last_reply_at: t.last_at.to_rfc3339(),
            unread: t.unread,
        }
    }
}

/// One reaction to a message and who chose it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ReactionView {
    /// The emoji (or short name).
    pub emoji: String,
    /// How many members chose it.
    #[schemars(range(min = 1))]
    pub count: u64,
    /// Who chose it, first first: the first 100.
    #[schemars(length(min = 1, max = 100))]
    pub users: Vec<UserId>,
}

impl From<&StoredMessage> for MessageView {
    fn from(m: &StoredMessage) -> Self {
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            author: m.author,
            client_id: m.client_id.clone(),
            body: m.body.clone(),
            created_at: m.created_at.to_rfc3339(),
            edited_at: m.edited_at.map(|t| t.to_rfc3339()),
            deleted_at: m.deleted_at.map(|t| t.to_rfc3339()),
            reactions: Vec::new(),
            thread: None,
        }
    }
}

/// A new conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    /// Title.
    pub title: String,
    /// Members besides the caller.
    pub members: Vec<UserId>,
    /// Group flag (default: more than two people).
    pub is_group: Option<bool>,
    /// Displayed flag (default true).
    pub displayed: Option<bool>,
    /// Every user of the application is a member.
    pub all_users: bool,
    /// Application-unique key: a second create with it returns the first.
    /// Only the application (its bot) sets keys.
    pub key: Option<String>,
}

/// A file a sender attaches (`send`'s `attachments`).
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRef {
    /// A ready file the sender uploaded to this conversation.
    pub file_id: FileId,
    /// Shown in the message rather than only listed (default true).
    #[serde(default = "shown")]
    pub displayed: bool,
}

fn shown() -> bool {
    true
}
