//! Threads: replies to a message, kept in its conversation and told apart
//! by the root's number (`thread_seq` in the reply's body, which each
//! store indexes), with each user's read mark per thread and who follows
//! it. Every [`super::messaging::MessageStore`] is one.

use async_trait::async_trait;

use super::StoreResult;
use super::messaging::StoredMessage;
use crate::ids::{ConversationId, Timestamp, UserId};

/// Which messages of a conversation a page of history holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every message, replies included.
    All,
    /// Messages that are not replies.
    TopLevel,
    /// The replies to the root numbered so.
    Thread(u64),
}

/// A thread as one user sees it, for its root's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSummary {
    /// The root's number.
    pub root_seq: u64,
    /// Replies, deleted ones left out.
    pub replies: u64,
    /// The last reply's number and time.
    pub last_seq: u64,
    /// When the last reply came.
    pub last_at: Timestamp,
    /// Replies of others after the user's read mark in the thread.
    pub unread: u64,
}

/// Persistence of threads.
#[async_trait]
pub trait ThreadStore: Send + Sync {
    /// A page of a conversation's history within `scope`, as
    /// `MessageStore::history` pages.
    async fn history_in(
        &self,
        conversation: ConversationId,
        scope: Scope,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// The threads whose roots are numbered `from` to `to`, as `user`
    /// sees them (its unread replies), by root.
    async fn thread_summaries(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
        user: UserId,
    ) -> StoreResult<Vec<ThreadSummary>>;

    /// Moves the user's read mark in a thread forward (never back);
    /// returns it.
    async fn mark_thread_read(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
        seq: u64,
    ) -> StoreResult<u64>;

    /// Makes `user` follow (`true`) a thread or no longer follow it.
    async fn follow_thread(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
        follow: bool,
    ) -> StoreResult<()>;

    /// Whether `user` follows the thread.
    async fn follows_thread(
        &self,
        conversation: ConversationId,
        root_seq: u64,
        user: UserId,
    ) -> StoreResult<bool>;

    /// The threads `user` follows that have replies, the most recently
    /// replied first: each conversation and root number.
    async fn followed_threads(
        &self,
        user: UserId,
        limit: u32,
    ) -> StoreResult<Vec<(ConversationId, u64)>>;
}
