//! The one interface both storage backends implement.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::ids::{AppId, FileId, Timestamp};

/// The bytes of an object, as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A storage failure (the backend is down or answered with an error).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A local file operation failed.
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
    /// The S3 service could not be reached or refused.
    #[error("S3: {0}")]
    S3(String),
}

/// Which object of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// What the uploader sent; it becomes [`Part::Bytes`] when the upload
    /// is completed, so nothing the uploader can still write is ever
    /// served as the file.
    Incoming,
    /// The file's checked bytes.
    Bytes,
    /// Its preview image.
    Preview,
}

/// One object of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    /// The file's application (objects are grouped by application).
    pub app: AppId,
    /// The file.
    pub file: FileId,
    /// Which of its objects.
    pub part: Part,
}

impl Object {
    /// `part` of `file`.
    #[must_use]
    pub fn new(app: AppId, file: FileId, part: Part) -> Self {
        Self { app, file, part }
    }

    /// The same file's `part`.
    #[must_use]
    pub fn with(self, part: Part) -> Self {
        Self { part, ..self }
    }

    /// Its key: `<app>/<file>`, `<app>/<file>.upload` or
    /// `<app>/<file>.preview.jpg`.
    #[must_use]
    pub fn key(&self) -> String {
        let suffix = match self.part {
            Part::Incoming => ".upload",
            Part::Bytes => "",
            Part::Preview => ".preview.jpg",
        };
        format!("{}/{}{suffix}", self.app, self.file)
    }
}

/// When a signed URL is made and how long it lives.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Signing time.
    pub signed_at: Timestamp,
    /// Lifetime.
    pub ttl: Duration,
}

impl Validity {
    /// The end of its life.
    #[must_use]
    pub fn expires_at(&self) -> Timestamp {
        Timestamp(
            self.signed_at
                .0
                .saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

/// How a download is presented to the browser that follows its URL.
#[derive(Clone, Copy, Debug)]
pub struct Presentation<'a> {
    /// `Content-Type`.
    pub content_type: &'a str,
    /// `Content-Disposition` (see [`super::content_disposition`]).
    pub disposition: &'a str,
}

/// Where file bytes live. Clients move the bytes themselves, through URLs
/// the backend signs; the server reads an object only to check it and to
/// make a preview.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// `local` or `s3`.
    fn kind(&self) -> &'static str;

    /// A URL that accepts one `PUT` of exactly `size` bytes of
    /// `content_type` to `object`. `base` is this server's own URL (the
    /// local backend points there).
    fn upload_url(
        &self,
        object: Object,
        size: u64,
        content_type: &str,
        validity: Validity,
        base: &str,
    ) -> String;

    /// A URL that answers `GET` with the object, presented as told.
    fn download_url(
        &self,
        object: Object,
        presentation: Presentation<'_>,
        validity: Validity,
        base: &str,
    ) -> String;

    /// The object's size, or `None` if there is no such object.
    async fn size(&self, object: Object) -> Result<Option<u64>, StorageError>;

    /// The object's bytes, streamed.
    async fn read(&self, object: Object) -> Result<ByteStream, StorageError>;

    /// Turns a file's [`Part::Incoming`] object into its [`Part::Bytes`]
    /// (a rename, or a copy and a delete).
    async fn promote(&self, incoming: Object) -> Result<(), StorageError>;

    /// Stores a small object the server made (a preview).
    async fn write(
        &self,
        object: Object,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError>;

    /// Stores a file the server made on its own disk (an export archive),
    /// streamed: it may be large.
    async fn write_file(
        &self,
        object: Object,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<(), StorageError>;

    /// Deletes the object; deleting a missing one is not an error.
    async fn delete(&self, object: Object) -> Result<(), StorageError>;

    /// Whether the backend answers (for `/healthz`).
    async fn check(&self) -> Result<(), StorageError>;
}
