//! Exports: archives built in the background, with their progress. Every
//! [`super::Store`] is one.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, ConversationId, ExportId, SubscriberId, Timestamp, UserId};

/// An export and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRecord {
    /// Id.
    pub id: ExportId,
    /// Its application.
    pub app_id: AppId,
    /// Who asked for it.
    pub subscriber_id: SubscriberId,
    /// One conversation, or …
    pub conversation_id: Option<ConversationId>,
    /// … every conversation of this user.
    pub user_id: Option<UserId>,
    /// Messages sent at or after this time …
    pub from: Timestamp,
    /// … and before this one.
    pub to: Timestamp,
    /// `running`, `ready`, `failed` or `expired`.
    pub state: String,
    /// Conversations to export.
    pub conversations_total: u64,
    /// Conversations written so far.
    pub conversations_done: u64,
    /// Messages (and kept versions) written so far.
    pub messages: u64,
    /// Attachments written so far.
    pub files: u64,
    /// The archive's size, once ready.
    pub bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The key its download URLs are signed with.
    pub token: String,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// When its progress last moved.
    pub updated_at: Timestamp,
    /// When it was ready, failed or expired.
    pub finished_at: Option<Timestamp>,
}

/// Persistence of exports.
#[async_trait]
pub trait ExportStore: Send + Sync {
    /// Stores a new export.
    async fn create_export(&self, export: &ExportRecord) -> StoreResult<()>;

    /// An export by id, of any application.
    async fn export(&self, id: ExportId) -> StoreResult<Option<ExportRecord>>;

    /// An application's exports, newest first, at most `limit`.
    async fn exports_of(&self, app: AppId, limit: u32) -> StoreResult<Vec<ExportRecord>>;

    /// Stores an export's state and progress (every field but its id,
    /// application, subscriber, scope, token and creation) if it is still
    /// in `from_state`; says whether it was.
    async fn update_export(&self, export: &ExportRecord, from_state: &str) -> StoreResult<bool>;

    /// Exports in `state` whose progress last moved before `before`.
    async fn exports_in(&self, state: &str, before: Timestamp) -> StoreResult<Vec<ExportRecord>>;

    /// The conversations of an application a user is in: an explicit
    /// member, or every user is.
    async fn member_conversations(
        &self,
        app: AppId,
        user: UserId,
    ) -> StoreResult<Vec<ConversationId>>;
}
