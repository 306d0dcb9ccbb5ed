//! What the REST API takes and gives of files: upload requests, file
//! views, tickets and downloads.

use super::*;

/// What a member asks to upload.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpload {
    /// The file's name, in any script; stored as given.
    pub name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// MIME type (default `application/octet-stream`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// SHA-256 of the bytes (64 hex digits); when given, bytes that do not
    /// match are refused.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// A file as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileView {
    /// Id.
    pub id: FileId,
    /// The conversation it was uploaded to.
    pub conversation_id: ConversationId,
    /// Name, as given.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex), once the upload is completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `pending` until the upload is completed, then `ready`.
    pub state: &'static str,
    /// The message it is attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// The preview's size, for images.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub preview: Option<PreviewSize>,
    /// RFC 3339 time the upload was asked for.
    pub created_at: String,
}

impl From<&FileRecord> for FileView {
    fn from(f: &FileRecord) -> Self {
        Self {
            id: f.id,
            conversation_id: f.conversation_id,
            name: f.name.clone(),
            content_type: f.content_type.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            state: f.state.as_str(),
            message_id: f.message_id,
            preview: f
                .preview
                .map(|(width, height)| PreviewSize { width, height }),
            created_at: f.created_at.to_rfc3339(),
        }
    }
}

/// The request a client makes to send the bytes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadRequest {
    /// Always `PUT`.
    pub method: &'static str,
    /// Where to (S3, or this server).
    pub url: String,
    /// Headers to send with it (they are part of the signature).
    pub headers: std::collections::BTreeMap<&'static str, String>,
    /// RFC 3339 time the URL stops working.
    pub expires_at: String,
}

/// The answer to an upload request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadTicket {
    /// The new, pending file.
    pub file: FileView,
    /// How to send its bytes.
    pub upload: UploadRequest,
}

/// The answer to a download request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DownloadTicket {
    /// The file.
    pub file: FileView,
    /// `GET` this for the bytes (with `Content-Disposition: attachment`
    /// and the file's name).
    pub url: String,
    /// `GET` this for the preview (JPEG), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<String>,
    /// RFC 3339 time both URLs stop working.
    pub expires_at: String,
}

/// A local-backend download, for the HTTP layer to stream.
pub struct Download {
    /// The file's `Content-Type`.
    pub content_type: String,
    /// Its `Content-Disposition`: the name, attachment or inline.
    pub disposition: String,
    /// The object's length in bytes.
    pub len: u64,
    /// The file's SHA-256 (hex), for the bytes themselves (not a preview).
    pub sha256: Option<String>,
    /// The bytes.
    pub bytes: ByteStream,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
