//! The domain's one error type: a stable [`Code`] and a sentence.
//!
//! Every failure a client can cause has a 4xx-like code, documented in
//! `docs/protocol.md`; a fault of the machine that passes by itself (a full
//! disk) is `unavailable`; every other failure inside the server is a
//! generic `internal` whose details go to the log only. The domain
//! (`tenancy`, `messaging`, `calls`, `files`) knows nothing of HTTP: how a
//! code is answered is chosen once per transport — the HTTP status and
//! body in `http::error`, the WebSocket error frame in `ws`.

use serde::Serialize;

/// The stable, machine-readable error codes, as clients see them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// Not well-formed JSON.
    MalformedJson,
    /// Well-formed, but a field is missing, of the wrong type or out of bounds.
    InvalidRequest,
    /// A field the route does not take.
    UnknownField,
    /// A body not declared as `application/json`.
    UnsupportedMediaType,
    /// A body over the limit.
    PayloadTooLarge,
    /// Credentials missing, malformed, wrong or expired.
    Unauthorized,
    /// A wrong e-mail or code; says no more.
    AccessDenied,
    /// Authenticated, but not allowed.
    Forbidden,
    /// The user is locked by its application.
    UserLocked,
    /// The application was unregistered.
    ApplicationUnregistered,
    /// No such route or resource (that the caller can see).
    NotFound,
    /// The path exists, not with this method.
    MethodNotAllowed,
    /// A limit of `[limits]` refused the request.
    RateLimited,
    /// The server cannot write now (its disk is full).
    Unavailable,
    /// A failure inside the server.
    Internal,
    /// The media plane refused or did not answer.
    MediaUnavailable,
    /// WebSocket: a frame of an unknown `type`.
    UnknownType,
    /// WebSocket: a text frame over 128 KiB.
    FrameTooLarge,
    /// WebSocket: a binary frame.
    UnsupportedFrame,
    /// `add_members` on a one-to-one conversation.
    NotAGroup,
    /// A file to attach that is not ready, not the sender's, of another
    /// conversation or attached already.
    AttachmentUnavailable,
    /// Uploaded bytes of another size than declared.
    UploadSizeMismatch,
    /// Uploaded bytes with another SHA-256 than declared.
    ChecksumMismatch,
    /// A signed file URL that was changed.
    BadSignature,
    /// A signed file URL that has expired.
    UrlExpired,
    /// The conversation's or subscriber's file quota is used up.
    QuotaExceeded,
    /// Completing an upload whose bytes never arrived.
    UploadMissing,
    /// An upload being completed by another request.
    UploadCompleting,
    /// A file whose upload is not complete.
    FileNotReady,
    /// A file attached to a message (it cannot be deleted on its own).
    FileAttached,
    /// Bytes sent again for a file already uploaded.
    AlreadyUploaded,
    /// A file over `files.max_size`.
    FileTooLarge,
    /// Calls: the callee is in another call.
    Busy,
    /// Calls: the conversation has a call already.
    CallInProgress,
    /// Calls: the member limit is reached.
    CallFull,
    /// Calls: declining a call that is not ringing for the caller.
    NotRinging,
    /// Calls: a request of a device that has not joined.
    NotJoined,
    /// Calls: a request for the other topology (peer-to-peer or SFU).
    WrongTopology,
    /// Calls: a second first offer while the first is answered.
    Negotiating,
    /// A message's distinct reactions or a conversation's pins are at
    /// their limit.
    LimitReached,
}

impl Code {
    /// Every code, for the documentation check.
    pub const ALL: &[Code] = &[
        Self::MalformedJson,
        Self::InvalidRequest,
        Self::UnknownField,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::Unauthorized,
        Self::AccessDenied,
        Self::Forbidden,
        Self::UserLocked,
        Self::ApplicationUnregistered,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::MediaUnavailable,
        Self::UnknownType,
        Self::FrameTooLarge,
        Self::UnsupportedFrame,
        Self::NotAGroup,
        Self::AttachmentUnavailable,
        Self::UploadSizeMismatch,
        Self::ChecksumMismatch,
        Self::BadSignature,
        Self::UrlExpired,
        Self::QuotaExceeded,
        Self::UploadMissing,
        Self::UploadCompleting,
        Self::FileNotReady,
        Self::FileAttached,
        Self::AlreadyUploaded,
        Self::FileTooLarge,
        Self::Busy,
        Self::CallInProgress,
        Self::CallFull,
        Self::NotRinging,
        Self::NotJoined,
        Self::WrongTopology,
        Self::Negotiating,
        Self::LimitReached,
    ];

    /// The code as clients see it (`snake_case`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnknownField => "unknown_field",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::AccessDenied => "access_denied",
            Self::Forbidden => "forbidden",
            Self::UserLocked => "user_locked",
            Self::ApplicationUnregistered => "application_unregistered",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::MediaUnavailable => "media_unavailable",
            Self::UnknownType => "unknown_type",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnsupportedFrame => "unsupported_frame",
            Self::NotAGroup => "not_a_group",
            Self::AttachmentUnavailable => "attachment_unavailable",
            Self::UploadSizeMismatch => "upload_size_mismatch",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::BadSignature => "bad_signature",
            Self::UrlExpired => "url_expired",
            Self::QuotaExceeded => "quota_exceeded",
            Self::UploadMissing => "upload_missing",
            Self::UploadCompleting => "upload_completing",
            Self::FileNotReady => "file_not_ready",
            Self::FileAttached => "file_attached",
            Self::AlreadyUploaded => "already_uploaded",
            Self::FileTooLarge => "file_too_large",
            Self::Busy => "busy",
            Self::CallInProgress => "call_in_progress",
            Self::CallFull => "call_full",
            Self::NotRinging => "not_ringing",
            Self::NotJoined => "not_joined",
            Self::WrongTopology => "wrong_topology",
            Self::Negotiating => "negotiating",
            Self::LimitReached => "limit_reached",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of a domain operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is not well-formed JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// Well-formed JSON that does not have the expected shape or values.
    #[error("{0}")]
    InvalidRequest(String),
    /// A field the route does not know.
    #[error("{0}")]
    UnknownField(String),
    /// The body is not declared as `application/json`.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Credentials are missing, malformed, wrong or expired.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A wrong e-mail or code; deliberately says no more.
    #[error("access denied")]
    AccessDenied,
    /// Authenticated, but this caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The user is locked by its application.
    #[error("this user is locked by its application")]
    UserLocked,
    /// The application was unregistered.
    #[error("this application is unregistered")]
    ApplicationUnregistered,
    /// No such resource, or not one the caller can see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// No such route.
    #[error("no route for this path")]
    NoRoute,
    /// The route exists, but not for this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The request does not fit the current state of a call or a file
    /// (full, busy, wrong topology, not ready …): a code of its own and a
    /// sentence.
    #[error("{1}")]
    Conflict(Code, String),
    /// The media plane refused or did not answer.
    #[error("{0}")]
    MediaUnavailable(String),
    /// A request refused for a reason of its own (a file too large, an
    /// expired URL, bytes that are not what was declared …): a code of
    /// its own and a sentence.
    #[error("{1}")]
    Refused(Code, String),
    /// Too many requests: a limit of `[limits]` refused this one.
    #[error("{0}")]
    RateLimited(#[from] crate::limits::RateLimited),
    /// The server cannot carry the request out now (its disk is full):
    /// nothing was changed, and the same request can succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A failure inside the server; the detail is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// The stable error code.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            Self::MalformedJson(_) => Code::MalformedJson,
            Self::InvalidRequest(_) => Code::InvalidRequest,
            Self::UnknownField(_) => Code::UnknownField,
            Self::UnsupportedMediaType => Code::UnsupportedMediaType,
            Self::PayloadTooLarge(_) => Code::PayloadTooLarge,
            Self::Unauthorized(_) => Code::Unauthorized,
            Self::AccessDenied => Code::AccessDenied,
            Self::Forbidden(_) => Code::Forbidden,
            Self::UserLocked => Code::UserLocked,
            Self::ApplicationUnregistered => Code::ApplicationUnregistered,
            Self::NotFound(_) | Self::NoRoute => Code::NotFound,
            Self::MethodNotAllowed => Code::MethodNotAllowed,
            Self::Conflict(code, _) | Self::Refused(code, _) => *code,
            Self::MediaUnavailable(_) => Code::MediaUnavailable,
            Self::RateLimited(_) => Code::RateLimited,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// A refusal with its own code.
    pub fn refused(code: Code, message: impl Into<String>) -> Self {
        Self::Refused(code, message.into())
    }

    /// Wraps an internal failure.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// The answer to a write that could not be done now, for `why`.
    #[must_use]
    pub fn unavailable(why: &crate::store::Unavailable) -> Self {
        use crate::store::Unavailable;
        Self::Unavailable(match why {
            Unavailable::DiskFull(seen) => format!(
                "the server's disk is full ({seen}), so this request was not carried out; \
                 retry later"
            ),
            // The extended code is for the operator's log, not the client.
            _ => "the server's storage failed a write, so this request was not carried out; \
                  retry later"
                .to_owned(),
        })
    }

    /// An I/O failure of the server's own files: `unavailable` when the
    /// disk is full, `internal` otherwise.
    pub fn io(err: std::io::Error) -> Self {
        match crate::store::Unavailable::of_io(&err) {
            Some(why) => Self::unavailable(&why),
            None => Self::internal(err),
        }
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Conflict(code, message) => Self::Conflict(code, message),
            crate::store::StoreError::Unavailable(why) => Self::unavailable(&why),
            err => Self::internal(err),
        }
    }
}

impl From<crate::mail::MailError> for Error {
    fn from(err: crate::mail::MailError) -> Self {
        match err {
            crate::mail::MailError::Unavailable(why) => Self::unavailable(&why),
            err => Self::internal(err),
        }
    }
}

impl From<crate::files::storage::StorageError> for Error {
    fn from(err: crate::files::storage::StorageError) -> Self {
        match err {
            crate::files::storage::StorageError::Io(io) => Self::io(io),
            err => Self::internal(err),
        }
    }
}
