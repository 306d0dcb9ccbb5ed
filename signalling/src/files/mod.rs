//! Attachments: files that members upload straight to storage and then
//! attach to messages.
//!
//! # Model
//!
//! 1. A member asks to upload (`name`, `size`, `content_type`, optionally
//!    `sha256`) to a conversation. The file gets a `pending` row at once,
//!    counted against its application's quota, and the client gets a
//!    short-lived URL that accepts one `PUT` of exactly that many bytes.
//! 2. The client sends the bytes to that URL: to S3 (a presigned URL), or
//!    to this server (the local backend, which streams them to disk).
//!    They land in the file's *incoming* object, never where the file is
//!    served from.
//! 3. The client completes the upload: the server checks the incoming
//!    object's size, moves it to the file's own object (so the uploader can
//!    no longer change it), computes its SHA-256 (and checks the declared
//!    one), makes a preview of an image, and marks the file `ready`.
//! 4. A message attaches ready files of its author in its conversation
//!    (the store binds them in the transaction that stores the message).
//! 5. A reader asks for a download URL; only those who may read the
//!    message get one.
//!
//! Deleting the message, unregistering the application, the retention
//! period or an upload abandoned past its URL's life move a file's row to
//! a garbage list in the same transaction; [`Files::sweep`] deletes the
//! objects, then the entry. Bytes never pass through the WebSocket.

mod checks;
pub mod local;
pub mod preview;
pub mod s3;
pub mod storage;
mod transfer;
mod upkeep;
mod views;

pub use checks::content_disposition;
use checks::*;
pub use views::*;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};
use utoipa::ToSchema;

use crate::config::FilesConfig;
use crate::error::{Code, Error};
use crate::ids::{Clock, ConversationId, FileId, MessageId, Timestamp};
use crate::messaging::{Caller, Messaging, Who};
use crate::store::FileStore;
use crate::store::files::{FileRecord, FileState};
use crate::store::messaging::PreviewSize;
use local::LocalStorage;
use storage::{ByteStream, Object, Part, Presentation, Storage, StorageError, Validity};

/// Most bytes of a file name.
pub const MAX_NAME_BYTES: usize = 1024;

/// The file service.
#[derive(Debug)]
pub struct Files {
    config: FilesConfig,
    storage: Arc<dyn Storage>,
    local: Option<Arc<LocalStorage>>,
    store: Arc<dyn FileStore>,
    messaging: Arc<Messaging>,
    clock: Arc<dyn Clock>,
    garbage: Arc<Notify>,
    /// One image read and decoded at a time: a preview holds the image
    /// (up to `preview_max_bytes`) and its pixels (up to 512 MiB).
    previews: Semaphore,
    /// Files being completed: one completion at a time per file, so that a
    /// second cannot move other bytes over those the first is checking.
    completing: std::sync::Mutex<std::collections::HashSet<FileId>>,
}

/// A storage backend; the local one also serves its signed URLs.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where the bytes are.
    pub storage: Arc<dyn Storage>,
    /// The same, when it is the local directory.
    pub local: Option<Arc<LocalStorage>>,
}

/// The configured backend: S3 when `[files.s3]` is set, otherwise the
/// local directory.
///
/// # Errors
/// If the directory or its key cannot be created, or the S3 settings are
/// unusable.
pub fn open_storage(config: &FilesConfig, dir: &std::path::Path) -> Result<Backend, StorageError> {
    match &config.s3 {
        Some(s3) => Ok(Backend {
            storage: Arc::new(s3::S3Storage::new(s3)?),
            local: None,
        }),
        None => {
            let local = Arc::new(LocalStorage::open(dir)?);
            Ok(Backend {
                storage: local.clone(),
                local: Some(local),
            })
        }
    }
}

impl Files {
    /// The service over a backend.
    #[must_use]
    pub fn new(
        config: FilesConfig,
        Backend { storage, local }: Backend,
        store: Arc<dyn FileStore>,
        messaging: Arc<Messaging>,
        clock: Arc<dyn Clock>,
        garbage: Arc<Notify>,
    ) -> Self {
        Self {
            config,
            storage,
            local,
            store,
            messaging,
            clock,
            garbage,
            previews: Semaphore::new(1),
            completing: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The backend.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn validity(&self) -> Validity {
        Validity {
            signed_at: self.clock.now(),
            ttl: Duration::from_secs(self.config.url_ttl_secs),
        }
    }

    /// Starts an upload to `conversation`: checks membership, name, type,
    /// size and quota, records the pending file, and signs its upload URL.
    /// `base` is this server's URL as the client reached it.
    ///
    /// # Errors
    /// `invalid_request`, `file_too_large` (413), `quota_exceeded` (409),
    /// `forbidden`, `not_found`.
    pub async fn begin_upload(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        upload: NewUpload,
        base: &str,
    ) -> Result<UploadTicket, Error> {
        check_name(&upload.name)?;
        let content_type = match upload.content_type {
            None => "application/octet-stream".to_owned(),
            Some(t) => check_content_type(&t)?,
        };
        let declared = upload.sha256.as_deref().map(check_sha256).transpose()?;
        if upload.size > self.config.max_size {
            return Err(Error::refused(
                Code::FileTooLarge,
                format!(
                    "files may have at most {} bytes; this one has {}",
                    self.config.max_size, upload.size
                ),
            ));
        }
        self.messaging.readable(caller, conversation).await?;
        let validity = self.validity();
        let file = FileRecord {
            id: FileId::random(),
            app_id: caller.app.id,
            conversation_id: conversation,
            uploader: caller.participant(),
            name: upload.name,
            content_type,
            size: upload.size,
            declared_sha256: declared,
            sha256: None,
            state: FileState::Pending,
            message_id: None,
            preview: None,
            created_at: validity.signed_at,
            upload_expires_at: validity.expires_at(),
        };
        if !self
            .store
            .create_file(&file, self.config.app_quota_bytes)
            .await?
        {
            let used = self.store.app_usage(caller.app.id).await?;
            return Err(Error::refused(
                Code::QuotaExceeded,
                format!(
                    "the application keeps {used} of its {} bytes; {} more do not fit",
                    self.config.app_quota_bytes, file.size
                ),
            ));
        }
        metrics::counter!("files_uploads_started_total").increment(1);
        let object = Object::new(file.app_id, file.id, Part::Incoming);
        let url = self
            .storage
            .upload_url(object, file.size, &file.content_type, validity, base);
        let headers = [
            ("Content-Type", file.content_type.clone()),
            ("Content-Length", file.size.to_string()),
        ]
        .into_iter()
        .collect();
        Ok(UploadTicket {
            file: FileView::from(&file),
            upload: UploadRequest {
                method: "PUT",
                url,
                headers,
                expires_at: validity.expires_at().to_rfc3339(),
            },
        })
    }

    /// A file the caller uploaded (others' are `not_found`).
    async fn own_file(&self, caller: &Caller, id: FileId) -> Result<FileRecord, Error> {
        match self.store.file(id).await? {
            Some(f) if f.app_id == caller.app.id && f.uploader == caller.participant() => Ok(f),
            _ => Err(Error::NotFound("file")),
        }
    }

    /// Completes an upload: the bytes become the file, checked, with a
    /// preview for images. Completing a ready file returns it.
    ///
    /// # Errors
    /// `upload_missing` (409), `upload_size_mismatch`, `checksum_mismatch`
    /// (400), `not_found`; `internal` when storage fails.
    pub async fn complete(&self, caller: &Caller, id: FileId) -> Result<FileView, Error> {
        let file = self.own_file(caller, id).await?;
        if file.state == FileState::Ready {
            return Ok(FileView::from(&file));
        }
        let _claim = Claim::take(&self.completing, id).ok_or_else(|| {
            Error::refused(
                Code::UploadCompleting,
                "this upload is being completed by another request: ask again in a moment",
            )
        })?;
        let file = self.own_file(caller, id).await?;
        if file.state == FileState::Ready {
            return Ok(FileView::from(&file));
        }
        let incoming = Object::new(file.app_id, file.id, Part::Incoming);
        let bytes = incoming.with(Part::Bytes);
        match self.storage.size(incoming).await.map_err(Error::from)? {
            Some(size) if size == file.size => {
                self.storage.promote(incoming).await.map_err(Error::from)?;
            }
            Some(size) => {
                self.storage.delete(incoming).await.map_err(Error::from)?;
                return Err(Error::refused(
                    Code::UploadSizeMismatch,
                    format!(
                        "{size} bytes were uploaded, {} were declared; upload again",
                        file.size
                    ),
                ));
            }
            // A completion cut short after the move finds the bytes moved.
            None => {
                if self.storage.size(bytes).await.map_err(Error::from)? != Some(file.size) {
                    return Err(Error::refused(
                        Code::UploadMissing,
                        "no bytes have been uploaded for this file (or the upload failed): \
                         PUT them to the upload URL first",
                    ));
                }
            }
        }
        let (sha256, preview) = self.examine(&file).await?;
        if let Some(declared) = &file.declared_sha256
            && *declared != sha256
        {
            self.storage.delete(bytes).await.map_err(Error::from)?;
            return Err(Error::refused(
                Code::ChecksumMismatch,
                format!("the bytes have SHA-256 {sha256}, {declared} was declared; upload again"),
            ));
        }
        if !self.store.mark_ready(id, &sha256, preview).await? {
            // Completed meanwhile by a parallel request, or discarded.
            let again = self.own_file(caller, id).await?;
            return Ok(FileView::from(&again));
        }
        metrics::counter!("files_uploads_completed_total").increment(1);
        let done = self.own_file(caller, id).await?;
        Ok(FileView::from(&done))
    }

    /// Reads a file's bytes once: their SHA-256, and for an image small
    /// enough, its preview (stored as the file's preview object).
    async fn examine(&self, file: &FileRecord) -> Result<(String, Option<(u32, u32)>), Error> {
        let object = Object::new(file.app_id, file.id, Part::Bytes);
        let keep =
            preview::can_preview(&file.content_type) && file.size <= self.config.preview_max_bytes;
        // An image is held whole to decode it: one at a time, so that
        // completions at once cannot hold many (others only stream).
        let _permit = if keep {
            Some(self.previews.acquire().await.map_err(Error::internal)?)
        } else {
            None
        };
        let mut stream = self.storage.read(object).await.map_err(Error::from)?;
        let mut hash = Sha256::new();
        let mut kept = Vec::with_capacity(if keep {
            usize::try_from(file.size).unwrap_or(0)
        } else {
            0
        });
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::internal)?;
            hash.update(&chunk);
            if keep {
                kept.extend_from_slice(&chunk);
            }
        }
        let sha256 = local::hex(&hash.finalize());
        if !keep {
            return Ok((sha256, None));
        }
        let made = tokio::task::spawn_blocking(move || preview::make(&kept))
            .await
            .map_err(Error::internal)?;
        let Some((jpeg, width, height)) = made else {
            return Ok((sha256, None));
        };
        self.storage
            .write(object.with(Part::Preview), Bytes::from(jpeg), "image/jpeg")
            .await
            .map_err(Error::from)?;
        Ok((sha256, Some((width, height))))
    }

    /// URLs to fetch a file (and its preview) for someone who may read it:
    /// its uploader, or, once attached, whoever may read the message.
    ///
    /// # Errors
    /// `not_found` (also for a file the caller may not know of), `forbidden`,
    /// `file_not_ready` (409).
    pub async fn download(
        &self,
        caller: &Caller,
        id: FileId,
        base: &str,
    ) -> Result<DownloadTicket, Error> {
        let file = self.readable_file(caller, id).await?;
        if file.state != FileState::Ready {
            return Err(Error::refused(
                Code::FileNotReady,
                "the upload of this file is not completed yet",
            ));
        }
        let validity = self.validity();
        let url_of = |part: Part| {
            let (content_type, disposition) = presentation(&file, part);
            self.storage.download_url(
                Object::new(file.app_id, file.id, part),
                Presentation {
                    content_type: &content_type,
                    disposition: &disposition,
                },
                validity,
                base,
            )
        };
        let url = url_of(Part::Bytes);
        let preview_url = file.preview.map(|_| url_of(Part::Preview));
        Ok(DownloadTicket {
            file: FileView::from(&file),
            url,
            preview_url,
            expires_at: validity.expires_at().to_rfc3339(),
        })
    }

    /// The file, if the caller may read it.
    async fn readable_file(&self, caller: &Caller, id: FileId) -> Result<FileRecord, Error> {
        let file = match self.store.file(id).await? {
            Some(f) if f.app_id == caller.app.id => f,
            _ => return Err(Error::NotFound("file")),
        };
        if matches!(caller.who, Who::App) {
            return Ok(file);
        }
        // Its uploader keeps its own file, unless the file belongs to a
        // contextual conversation whose object the caller may not see now.
        if file.uploader == caller.participant() {
            if self.messaging.shows(caller, file.conversation_id).await? {
                return Ok(file);
            }
            return Err(Error::Forbidden(
                "the application does not let this user see that object",
            ));
        }
        let Some(message) = file.message_id else {
            return Err(Error::NotFound("file"));
        };
        let refused = match self
            .shows_message(caller, file.conversation_id, message)
            .await
        {
            Ok(()) => return Ok(file),
            Err(e) => e,
        };
        // A forward of its message shows it too, to whoever reads that.
        for (conversation, forward) in self.store.file_references(id).await? {
            if self
                .shows_message(caller, conversation, forward)
                .await
                .is_ok()
            {
                return Ok(file);
            }
        }
        Err(refused)
    }

    /// Whether the caller may read `message` of `conversation` (not
    /// deleted, not addressed to others).
    async fn shows_message(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<(), Error> {
        self.messaging.readable(caller, conversation).await?;
        let visible = self
            .messaging
            .store()
            .message(conversation, message)
            .await?
            .is_some_and(|m| m.deleted_at.is_none() && crate::messaging::visible_to(&m, caller));
        if visible {
            Ok(())
        } else {
            Err(Error::NotFound("file"))
        }
    }

    /// Cancels an upload, or deletes a file its uploader has not attached.
    ///
    /// # Errors
    /// `not_found`; `file_attached` (409) for an attached file (delete the
    /// message instead).
    pub async fn discard(&self, caller: &Caller, id: FileId) -> Result<(), Error> {
        let file = self.own_file(caller, id).await?;
        if file.message_id.is_some() {
            return Err(Error::refused(
                Code::FileAttached,
                "this file is attached to a message: delete the message to delete it",
            ));
        }
        if !self.store.discard_unattached(id, self.clock.now()).await? {
            return Err(Error::refused(
                Code::FileAttached,
                "this file was attached to a message meanwhile",
            ));
        }
        self.garbage.notify_one();
        Ok(())
    }
}

/// A file's place in `Files::completing`, given back when dropped.
struct Claim<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<FileId>>,
    id: FileId,
}

impl<'a> Claim<'a> {
    fn take(
        set: &'a std::sync::Mutex<std::collections::HashSet<FileId>>,
        id: FileId,
    ) -> Option<Self> {
        let taken = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        // Built only when taken: a claim, when dropped, gives its file back
        // (and takes the lock to do so).
        taken.then(|| Self { set, id })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_in_any_script_are_sent_safely() {
        assert_eq!(
            content_disposition("attachment", "Счёт №5 (копия).pdf"),
            "attachment; filename=\"____ _5 (_____).pdf\"; \
             filename*=UTF-8''%D0%A1%D1%87%D1%91%D1%82%20%E2%84%965%20%28%D0%BA%D0%BE%D0%BF%D0%B8%D1%8F%29.pdf"
        );
        let tricky = content_disposition("attachment", "a\"b\\c/d;e.txt");
        assert!(
            tricky.starts_with("attachment; filename=\"a_b_c_d;e.txt\"; "),
            "{tricky}"
        );
        assert!(
            tricky.ends_with("filename*=UTF-8''a%22b%5Cc%2Fd%3Be.txt"),
            "{tricky}"
        );
        assert!(
            content_disposition("inline", "报告.xlsx").contains("UTF-8''%E6%8A%A5%E5%91%8A.xlsx")
        );
    }

    #[test]
    fn a_file_is_completed_by_one_request_at_a_time() {
        let set = std::sync::Mutex::new(std::collections::HashSet::new());
        let file = FileId::random();
        let first = Claim::take(&set, file).unwrap();
        assert!(
            Claim::take(&set, file).is_none(),
            "a second completion waits"
        );
        let other = Claim::take(&set, FileId::random()).unwrap();
        drop(first);
        assert!(
            Claim::take(&set, file).is_some(),
            "the claim ends with its request"
        );
        drop(other);
    }

    #[test]
    fn upload_fields_are_checked() {
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"я".repeat(600)).is_err());
        check_name("Договор 2026 — финал.docx").unwrap();
        assert_eq!(check_content_type("Image/PNG").unwrap(), "image/png");
        check_content_type("text/plain; charset=utf-8").unwrap();
        assert!(check_content_type("png").is_err());
        assert!(check_content_type("text/plain\r\nX-Evil: 1").is_err());
        assert!(check_sha256("abc").is_err());
        assert_eq!(check_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
    }
}
