//! What the file service persists: one row per file, and the garbage list
//! of objects still to delete from storage.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, ConversationId, FileId, MessageId, Timestamp, UserId};

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Asked for; the bytes may or may not be in storage yet.
    Pending,
    /// In storage, size and SHA-256 checked: it may be attached.
    Ready,
}

impl FileState {
    /// Stored form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
        }
    }
}

/// A file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// Id.
    pub id: FileId,
    /// Its application.
    pub app_id: AppId,
    /// The conversation it was uploaded to.
    pub conversation_id: ConversationId,
    /// Who uploaded it (a user, or the application's bot).
    pub uploader: UserId,
    /// The name it was given, as given.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes (declared, then checked).
    pub size: u64,
    /// SHA-256 (hex) the uploader declared, if any.
    pub declared_sha256: Option<String>,
    /// SHA-256 (hex) of the stored bytes, once known.
    pub sha256: Option<String>,
    /// Pending or ready.
    pub state: FileState,
    /// The message it is attached to.
    pub message_id: Option<MessageId>,
    /// Size of its preview image, if it has one.
    pub preview: Option<(u32, u32)>,
    /// When the upload was asked for.
    pub created_at: Timestamp,
    /// When the upload URL stops working.
    pub upload_expires_at: Timestamp,
}

/// Persistence of files.
#[async_trait]
pub trait FileStore: Send + Sync + std::fmt::Debug {
    /// Adds a pending file, unless the application would then keep more
    /// than `quota` bytes (0: no quota) or is unregistered; returns whether
    /// it was added.
    async fn create_file(&self, file: &FileRecord, quota: u64) -> StoreResult<bool>;

    /// A file by id.
    async fn file(&self, id: FileId) -> StoreResult<Option<FileRecord>>;

    /// The forwarded messages that show a file of another message: each
    /// one's conversation and id.
    async fn file_references(&self, id: FileId) -> StoreResult<Vec<(ConversationId, MessageId)>>;

    /// Marks a pending file ready; `false` if it is no longer pending.
    async fn mark_ready(
        &self,
        id: FileId,
        sha256: &str,
        preview: Option<(u32, u32)>,
    ) -> StoreResult<bool>;

    /// Forgets one file that is not attached to a message, moving its
    /// objects to the garbage list; `false` if there was no such file.
    async fn discard_unattached(&self, id: FileId, now: Timestamp) -> StoreResult<bool>;

    /// Forgets pending files whose upload URL expired before
    /// `pending_before`, and, with `created_before`, every file older.
    async fn discard_stale(
        &self,
        pending_before: Timestamp,
        created_before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<u64>;

    /// Up to `limit` files whose objects are due to be deleted at `now`.
    async fn garbage(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<(FileId, AppId)>>;

    /// The objects of this file were deleted at `now`: the entry goes, or,
    /// while an upload URL of it could still put an object back, is due
    /// again when none can.
    async fn swept(&self, id: FileId, now: Timestamp) -> StoreResult<()>;

    /// Deleting failed: try this entry again at `until`.
    async fn postpone_garbage(&self, id: FileId, until: Timestamp) -> StoreResult<()>;

    /// Bytes an application keeps (pending uploads included).
    async fn app_usage(&self, app: AppId) -> StoreResult<u64>;
}
