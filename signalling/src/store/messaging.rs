//! What the messaging domain persists: conversations, members, messages,
//! read marks and the per-user event log.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreResult;
use crate::ids::{AppId, CallId, ConversationId, FileId, MessageId, Timestamp, UserId};

/// A conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// Id.
    pub id: ConversationId,
    /// Its application.
    pub app_id: AppId,
    /// Title.
    pub title: String,
    /// Group (many people) rather than one-to-one.
    pub is_group: bool,
    /// Shown in members' conversation lists.
    pub displayed: bool,
    /// Every user of the application is a member.
    pub all_users: bool,
    /// Application-unique key, to find it again.
    pub app_key: Option<String>,
    /// The business object it is bound to (contextual conversation).
    pub context: Option<String>,
    /// Sequence number of its last message.
    pub last_seq: u64,
    /// Time of its last message (or creation).
    pub last_activity: Timestamp,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "user_id", rename_all = "snake_case")]
pub enum Author {
    /// A user.
    User(UserId),
    /// The application itself, as a bot.
    App,
}

impl Author {
    /// Stored form: the user id, or `app`.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Self::User(id) => id.to_string(),
            Self::App => "app".to_owned(),
        }
    }

    /// The author a [`Self::key`] stands for.
    #[must_use]
    pub fn from_key(key: &str) -> Option<Self> {
        if key == "app" {
            Some(Self::App)
        } else {
            key.parse().ok().map(Self::User)
        }
    }
}

/// The content of a message, stored as one JSON document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct MessageBody {
    /// Text with light formatting (see docs/protocol.md).
    #[serde(default)]
    pub text: String,
    /// Structured data for application-to-application exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Only these members see it (the author always does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<UserId>>,
    /// Buttons; a click goes to the author (the application's bot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Files, as they were when attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// A reply: the root of its thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<MessageId>,
    /// A reply: its root's number in the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_seq: Option<u64>,
    /// Members it mentions (`@name` in its text is the client's to show).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// It mentions every member (`@all`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// What it quotes, as it was when quoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<Quote>,
    /// A copy of another message: where that one came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<Forwarded>,
}

/// A quoted message, as it was when quoted (a later edit or delete of it
/// does not change the quote).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Quote {
    /// The quoted message (of the same conversation).
    pub message_id: MessageId,
    /// Its number.
    pub seq: u64,
    /// Its author.
    pub author: Author,
    /// Its text, cut at 500 characters.
    #[schemars(length(max = 500))]
    pub text: String,
    /// It had attachments.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attachments: bool,
    /// RFC 3339 time it was sent.
    pub created_at: String,
}

/// Where a forwarded message came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Forwarded {
    /// The original's conversation.
    pub conversation_id: ConversationId,
    /// The original.
    pub message_id: MessageId,
    /// The original's author.
    pub author: Author,
    /// RFC 3339 time the original was sent.
    pub created_at: String,
}

/// A file attached to a message (1C: `Attachments.Add(stream, name, MIME,
/// displayed)`). The bytes are fetched through `GET /api/v1/files/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Attachment {
    /// The file.
    pub file_id: FileId,
    /// Its name, as uploaded.
    #[schemars(length(min = 1))]
    pub name: String,
    /// MIME type.
    #[schemars(length(min = 3))]
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// Shown in the message (an image inline) rather than only listed.
    pub displayed: bool,
    /// The preview's size, when the server made one (images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewSize>,
}

/// Width and height of a preview, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PreviewSize {
    /// Width.
    #[schemars(range(min = 1, max = 320))]
    pub width: u32,
    /// Height.
    #[schemars(range(min = 1, max = 320))]
    pub height: u32,
}

/// An action button. Unknown fields are refused (the `send` schema has
/// `additionalProperties: false`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What the bot receives on a click.
    #[schemars(length(min = 1))]
    pub value: String,
    /// What the user sees.
    #[schemars(length(min = 1))]
    pub presentation: String,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Position in the conversation, from 1.
    pub seq: u64,
    /// Id.
    pub id: MessageId,
    /// Author.
    pub author: Author,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Content.
    pub body: MessageBody,
    /// When it was sent.
    pub created_at: Timestamp,
    /// Last edit.
    pub edited_at: Option<Timestamp>,
    /// Deletion (the body is then empty).
    pub deleted_at: Option<Timestamp>,
}

/// The event of a new message, rendered by the domain before the message
/// has its number (which only the transaction that stores it gives): the
/// text before the number and the text after it. The writer joins them
/// around the number and renders nothing itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    /// The event's text up to the message's number.
    pub before_seq: String,
    /// The event's text after the message's number.
    pub after_seq: String,
}

impl PendingEvent {
    /// `rendered` cut around the number that follows the first `"key":`
    /// (rendered as `placeholder`), for the writer to put in the number
    /// only its transaction knows. The key must come before any text a
    /// client wrote, and the placeholder be a number no real value is.
    ///
    /// # Panics
    /// When `rendered` has no `"key":placeholder`: a bug of the caller.
    #[must_use]
    pub fn open(rendered: &str, key: &str, placeholder: u64) -> Self {
        let field = format!("\"{key}\":{placeholder}");
        let at = rendered
            .find(&field)
            .unwrap_or_else(|| panic!("the event has no {field}"))
            + key.len()
            + 3;
        Self {
            before_seq: rendered[..at].to_owned(),
            after_seq: rendered[at + placeholder.to_string().len()..].to_owned(),
        }
    }

    /// The event's text once the message is number `seq`.
    #[must_use]
    pub fn with_seq(&self, seq: u64) -> String {
        format!("{}{seq}{}", self.before_seq, self.after_seq)
    }
}

/// What [`MessageStore::post`] did.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The message (the first one, for a retried client id).
    pub message: StoredMessage,
    /// The event payload written to the recipients' logs, when the message
    /// is new; `None` when a retry found the first and wrote nothing.
    pub event: Option<std::sync::Arc<str>>,
    /// Each recipient's event number.
    pub seqs: Vec<(UserId, u64)>,
}

/// What a message carries besides its body, added or withdrawn with its
/// event in one transaction ([`MarkStore::mark_then`](super::marks::MarkStore::mark_then)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A user's reaction; a message holds at most `limit` distinct ones.
    Reaction {
        /// The emoji (or short name).
        emoji: String,
        /// Who reacts.
        user: UserId,
        /// Most distinct reactions on one message.
        limit: u32,
    },
    /// The message is pinned in its conversation, which holds at most
    /// `limit` pinned messages.
    Pin {
        /// Who pins.
        by: Author,
        /// Most pinned messages in one conversation.
        limit: u32,
    },
}

/// A [`Mark`] added to (`on`) or withdrawn from one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkChange {
    /// The message's conversation.
    pub conversation_id: ConversationId,
    /// The message.
    pub message_id: MessageId,
    /// Its number in the conversation.
    pub seq: u64,
    /// What changes.
    pub mark: Mark,
    /// Added (true) or withdrawn.
    pub on: bool,
}

/// What [`MarkStore::mark_then`](super::marks::MarkStore::mark_then) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marked {
    /// The mark changed and its event was written: `count` is, after the
    /// change, the number of users with this reaction on the message, or
    /// of pinned messages in the conversation.
    Changed {
        /// The count after the change.
        count: u64,
        /// Each notified user's event number.
        seqs: Vec<(UserId, u64)>,
    },
    /// It was already so: nothing written.
    Unchanged,
    /// Adding it would pass the mark's `limit`: nothing written.
    Full,
}

/// One user's reaction to a message, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactionRecord {
    /// The message's number.
    pub seq: u64,
    /// The emoji.
    pub emoji: String,
    /// Who reacted.
    pub user: UserId,
}

/// A pinned message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    /// The message's number.
    pub seq: u64,
    /// Who pinned it.
    pub by: Author,
    /// When.
    pub at: Timestamp,
}

/// A new message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Conversation.
    pub conversation_id: ConversationId,
    /// Id to give it.
    pub id: MessageId,
    /// Author.
    pub author: Author,
    /// Idempotency key.
    pub client_id: String,
    /// Content.
    pub body: MessageBody,
    /// A user to make a member of the conversation in the message's own
    /// transaction: the author viewing a contextual conversation it is
    /// not a member of yet (so that its first post costs one commit).
    pub joins: Option<UserId>,
}

impl NewMessage {
    /// The message as stored with number `seq` at `now`.
    #[must_use]
    pub fn stored(&self, seq: u64, now: Timestamp) -> StoredMessage {
        StoredMessage {
            conversation_id: self.conversation_id,
            seq,
            id: self.id,
            author: self.author,
            client_id: self.client_id.clone(),
            body: self.body.clone(),
            created_at: now,
            edited_at: None,
            deleted_at: None,
        }
    }
}

/// One event of a user's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// The user's event number.
    pub seq: u64,
    /// The event, as JSON.
    pub payload: String,
}

/// A conversation in a user's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationEntry {
    /// The conversation.
    pub conversation: Conversation,
    /// Messages after the user's read mark.
    pub unread: u64,
    /// Of those, the ones that mention the user (or `@all`), not its own.
    pub mentions: u64,
}

/// What [`MessageStore::set_grant`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantChange {
    /// The object's conversation, when it exists.
    pub conversation: Option<ConversationId>,
    /// The grant or the user's membership of that conversation changed.
    pub changed: bool,
}

/// What to do with a write's event once it is committed: given each
/// notified user's event number and the event, it tells their live
/// connections. The store calls it after the commit and before the next
/// write's, so each user's event numbers reach it in order (a session
/// that saw 12 before 11 would have to read the store to fill the gap),
/// and it runs even when the caller stopped waiting for its answer. It
/// must not block.
pub type OnCommit = Box<dyn FnOnce(&[(UserId, u64)], &std::sync::Arc<str>) + Send>;

/// Persistence of messaging.
#[async_trait]
pub trait MessageStore:
    super::marks::MarkStore + super::threads::ThreadStore + Send + Sync + std::fmt::Debug
{
    /// Creates a conversation with members; if one with the same
    /// application key or context exists, returns that one (and `false`).
    /// A new contextual conversation also gets as members the users the
    /// application granted its object.
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        members: &[UserId],
    ) -> StoreResult<(Conversation, bool)>;

    /// A conversation of an application.
    async fn conversation(
        &self,
        app: AppId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>>;

    /// The contextual conversation of an application's object.
    async fn conversation_by_context(
        &self,
        app: AppId,
        context: &str,
    ) -> StoreResult<Option<Conversation>>;

    /// Adds members (idempotent).
    async fn add_members(
        &self,
        id: ConversationId,
        users: &[UserId],
        now: Timestamp,
    ) -> StoreResult<()>;

    /// Removes a member; false if it was not one.
    async fn remove_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool>;

    /// Members of a conversation.
    async fn members(&self, id: ConversationId) -> StoreResult<Vec<UserId>>;

    /// Whether `user` is an explicit member.
    async fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool>;

    /// Stores a message, numbering it, and appends `event` to the log of
    /// every user in `notify`, in one transaction. If the author already
    /// sent a message with this client id in this conversation, nothing is
    /// written and that message is returned without an event.
    async fn post(
        &self,
        message: &NewMessage,
        notify: &[UserId],
        event: PendingEvent,
        now: Timestamp,
    ) -> StoreResult<Posted> {
        self.post_then(message, notify, event, now, Box::new(|_, _| {}))
            .await
    }

    /// [`Self::post`], then `then` with the event once it is committed
    /// (not for a retry that wrote nothing).
    async fn post_then(
        &self,
        message: &NewMessage,
        notify: &[UserId],
        event: PendingEvent,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Posted>;

    /// A message by id within a conversation.
    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<StoredMessage>>;

    /// The message `author` sent with `client_id` in a conversation (the
    /// first copy, which a retry gets back).
    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: Author,
        client_id: &str,
    ) -> StoreResult<Option<StoredMessage>>;

    /// Replaces a message's body (edit) or empties it (delete) and appends
    /// `event` to the logs of `notify`, in one transaction.
    async fn update_message(
        &self,
        message: &StoredMessage,
        notify: &[UserId],
        event: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        self.update_message_then(message, notify, event, now, Box::new(|_, _| {}))
            .await
    }

    /// [`Self::update_message`], then `then` with the event once it is
    /// committed.
    async fn update_message_then(
        &self,
        message: &StoredMessage,
        notify: &[UserId],
        event: &str,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>>;

    /// Messages with `after < seq < before`, oldest first, at most `limit`:
    /// with `after` (0 included) the oldest ones above it, without it the
    /// newest ones below `before`.
    async fn history(
        &self,
        conversation: ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// Moves a user's read mark forward (never back); returns it.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: u64,
    ) -> StoreResult<u64>;

    /// The user's conversations (explicit member, or `all_users`), newest
    /// activity first, with unread counts (messages addressed to others
    /// not counted); `before` pages by activity. Contextual conversations
    /// are left out unless `contexts` lists their object or the user holds
    /// a grant for it; `contexts` = `None` means every object (the
    /// application's bot).
    async fn conversations_of(
        &self,
        app: AppId,
        user: UserId,
        contexts: Option<&[String]>,
        before: Option<(Timestamp, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationEntry>>;

    /// Appends one event to several users' logs.
    async fn append_events(
        &self,
        users: &[UserId],
        payload: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        self.append_events_then(users, payload, now, Box::new(|_, _| {}))
            .await
    }

    /// [`Self::append_events`], then `then` with the event once it is
    /// committed.
    async fn append_events_then(
        &self,
        users: &[UserId],
        payload: &str,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>>;

    /// A user's events after `seq`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        user: UserId,
        seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>>;

    /// Deletes events created before `before`; returns how many.
    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64>;

    /// The number of the user's oldest kept event (`None` if it has none).
    async fn oldest_event(&self, user: UserId) -> StoreResult<Option<u64>>;

    /// The number of the user's last event (0 if none).
    async fn event_head(&self, user: UserId) -> StoreResult<u64>;

    /// Messages whose text contains every word of `query` (prefixes match),
    /// in the conversations `participant` may read (member or all-users;
    /// contextual ones as in [`Self::conversations_of`]), best matches
    /// first.
    async fn search(
        &self,
        app: AppId,
        participant: UserId,
        contexts: Option<&[String]>,
        query: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// Records (`true`) or withdraws (`false`) the application's word that
    /// `user` may see `context`, and in the same transaction makes the user
    /// a member of the object's conversation (or no longer one).
    async fn set_grant(
        &self,
        app: AppId,
        user: UserId,
        context: &str,
        granted: bool,
        now: Timestamp,
    ) -> StoreResult<GrantChange>;

    /// Whether the application granted `user` the object `context`.
    async fn has_grant(&self, app: AppId, user: UserId, context: &str) -> StoreResult<bool>;

    /// Every user id of an application (for `all_users` conversations).
    async fn app_users(&self, app: AppId) -> StoreResult<Vec<UserId>>;

    /// A call started (`Some`) or ended (`None`).
    async fn set_call_open(
        &self,
        call: CallId,
        open: Option<(AppId, ConversationId, Timestamp)>,
    ) -> StoreResult<()>;

    /// Calls that started and have not ended.
    async fn open_calls(&self) -> StoreResult<Vec<(CallId, AppId, ConversationId, Timestamp)>>;
}
