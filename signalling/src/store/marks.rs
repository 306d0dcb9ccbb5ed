//! Reactions, pins and read-by: what members add to messages besides
//! replies, kept beside them (never in their bodies), and who has read
//! them. Every [`super::messaging::MessageStore`] is one.

use async_trait::async_trait;

use super::StoreResult;
use super::messaging::{
    MarkChange, Marked, OnCommit, PendingEvent, PinRecord, ReactionRecord, StoredMessage,
};
use crate::ids::{AppId, ConversationId, Timestamp, UserId};

/// What the application chose for one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationSettings {
    /// Only the application pins messages (default: every member).
    pub pins_app_only: bool,
    /// Members may mention `@all` (default: yes, in groups).
    pub mention_all: bool,
}

impl Default for ConversationSettings {
    fn default() -> Self {
        Self {
            pins_app_only: false,
            mention_all: true,
        }
    }
}

/// Persistence of reactions and pins, read-by, and a conversation's
/// settings.
#[async_trait]
pub trait MarkStore: Send + Sync {
    /// Adds or withdraws a reaction or a pin and appends `event` — whose
    /// `"count":` is left open ([`PendingEvent::open`]) for the count after
    /// the change — to the logs of `notify`, in one transaction; then
    /// `then` once committed. Nothing is written when the mark was
    /// already so or its limit is reached.
    async fn mark_then(
        &self,
        change: &MarkChange,
        notify: &[UserId],
        event: PendingEvent,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Marked>;

    /// The reactions to the messages numbered `from` to `to` (inclusive)
    /// of a conversation, by message, each emoji's reactions in the order
    /// they came, emojis in the order of their first reaction.
    async fn reactions(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<ReactionRecord>>;

    /// A conversation's pinned messages, most recently pinned first.
    async fn pins(&self, conversation: ConversationId) -> StoreResult<Vec<PinRecord>>;

    /// Who has read message `seq` of a conversation: the users whose read
    /// mark is at it or past it, at most `limit` (from the read marks
    /// alone: reading writes nothing more).
    async fn read_by(
        &self,
        conversation: ConversationId,
        seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<UserId>>;

    /// The messages that mention `user` or `@all`, not its own, in the
    /// application's conversations it is a member of or that are for all
    /// users, the newest first, at most `limit`.
    async fn mentioning(
        &self,
        app: AppId,
        user: UserId,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// What the application chose for a conversation (the defaults when
    /// it chose nothing).
    async fn settings(&self, conversation: ConversationId) -> StoreResult<ConversationSettings>;

    /// Records the application's choices for a conversation.
    async fn set_settings(
        &self,
        conversation: ConversationId,
        settings: ConversationSettings,
    ) -> StoreResult<()>;
}
