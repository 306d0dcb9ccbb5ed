//! Retention and legal holds: how long an application's messages are
//! kept, what must be kept regardless, and the versions of held messages
//! their authors changed. Every [`super::Store`] is one.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, ConversationId, HoldId, MessageId, Timestamp, UserId};

/// An application's retention: its own period and its conversations'
/// overrides (0 days: kept forever).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The application.
    pub app_id: Option<AppId>,
    /// Days messages are kept; `None`: forever.
    pub days: Option<u64>,
    /// Conversations with their own period.
    pub conversations: Vec<(ConversationId, u64)>,
}

/// A legal hold: nothing it covers is deleted until it is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegalHold {
    /// Id.
    pub id: HoldId,
    /// Its application.
    pub app_id: AppId,
    /// The conversation held, or …
    pub conversation_id: Option<ConversationId>,
    /// … the user held: every conversation the user is in, and what the
    /// user wrote anywhere.
    pub user_id: Option<UserId>,
    /// Why (the matter it is for).
    pub reason: String,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When it was released.
    pub released_at: Option<Timestamp>,
}

/// A version of a held message its author edited or deleted, kept for
/// export and hidden from users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldCopy {
    /// The message.
    pub message_id: MessageId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its number there.
    pub seq: u64,
    /// Its author's key (a user id, or `app`).
    pub author: String,
    /// The body as it was (JSON).
    pub body: String,
    /// When the message was sent.
    pub created_at: Timestamp,
    /// `edited` or `deleted`: what replaced this version.
    pub why: String,
    /// When it was replaced.
    pub kept_at: Timestamp,
}

/// The SQL condition "a live hold covers the message of conversation
/// `conversation` by `author`" (both column expressions).
pub(super) fn held(conversation: &str, author: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM legal_holds h WHERE h.released_at IS NULL AND ( \
             h.conversation_id = {conversation} OR h.user_id = {author} \
             OR h.user_id IN (SELECT cm.user_id FROM conversation_members cm \
                              WHERE cm.conversation_id = {conversation}) \
             OR (h.user_id IS NOT NULL AND h.app_id = (SELECT c.app_id FROM conversations c \
                              WHERE c.id = {conversation} AND c.all_users))))"
    )
}

/// Rows of `retention_policies` (app, conversation or '', days) gathered
/// per application.
pub(super) fn policies(rows: Vec<(String, String, i64)>) -> Vec<RetentionPolicy> {
    let mut out: Vec<RetentionPolicy> = Vec::new();
    for (app, conversation, days) in rows {
        let app: Option<AppId> = app.parse().ok();
        if out.last().is_none_or(|p| p.app_id != app) {
            out.push(RetentionPolicy {
                app_id: app,
                ..RetentionPolicy::default()
            });
        }
        let policy = out.last_mut().expect("just pushed");
        let days = days.cast_unsigned();
        match conversation.parse() {
            Ok(c) => policy.conversations.push((c, days)),
            Err(_) => policy.days = Some(days),
        }
    }
    out
}

/// Persistence of retention and legal holds.
#[async_trait]
pub trait GovernanceStore: Send + Sync {
    /// Sets the application's period (`conversation` `None`) or a
    /// conversation's override (0: forever); `days` `None` removes it.
    async fn set_retention(
        &self,
        app: AppId,
        conversation: Option<ConversationId>,
        days: Option<u64>,
    ) -> StoreResult<()>;

    /// An application's retention.
    async fn retention_of(&self, app: AppId) -> StoreResult<RetentionPolicy>;

    /// Every application with a period or an override.
    async fn retention_policies(&self) -> StoreResult<Vec<RetentionPolicy>>;

    /// The ids of an application's conversations.
    async fn conversation_ids(&self, app: AppId) -> StoreResult<Vec<ConversationId>>;

    /// Places a hold.
    async fn create_hold(&self, hold: &LegalHold) -> StoreResult<()>;

    /// An application's holds, released ones too, oldest first.
    async fn holds_of(&self, app: AppId) -> StoreResult<Vec<LegalHold>>;

    /// Releases an application's live hold; false when there is none so.
    async fn release_hold(&self, app: AppId, id: HoldId, now: Timestamp) -> StoreResult<bool>;

    /// Whether a live hold covers a message of `conversation` by `author`
    /// (its key).
    async fn is_held(&self, conversation: ConversationId, author: &str) -> StoreResult<bool>;

    /// Keeps a version of a held message before its author changes it.
    /// A deleted message's files are then kept with it (see
    /// [`Self::release_copies`]).
    async fn keep_copy(&self, copy: &HeldCopy) -> StoreResult<()>;

    /// The kept versions of a conversation's messages sent in `from..to`,
    /// by number then time kept.
    async fn held_copies(
        &self,
        conversation: ConversationId,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<HeldCopy>>;

    /// Deletes up to `limit` of the conversation's messages sent before
    /// `before` that no live hold covers — their rows, search index rows,
    /// reactions, pins, thread marks and kept versions; their files go to
    /// the garbage list, due `now` — oldest first; returns how many.
    async fn expire_messages(
        &self,
        conversation: ConversationId,
        before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<u64>;

    /// Deletes the kept versions no live hold covers any more, with the
    /// files of the messages deleted under the hold (garbage, due `now`);
    /// returns how many versions.
    async fn release_copies(&self, now: Timestamp) -> StoreResult<u64>;

    /// Deletes the events created before `before` from the logs of an
    /// application's users, its bot and its webhook sink (`also`).
    async fn prune_app_events(
        &self,
        app: AppId,
        also: &[UserId],
        before: Timestamp,
    ) -> StoreResult<u64>;
}
