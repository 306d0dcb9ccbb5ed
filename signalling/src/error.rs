//! The one error type of the REST API.
//!
//! Every failure a client can cause maps to a 4xx status with a stable,
//! documented `code`; a fault of the machine that passes by itself (a full
//! disk) is `503 unavailable`; every other failure inside the server
//! becomes a generic `500 internal` whose details go to the log only. The body is always
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to a REST client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
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
    /// The request does not fit the current state of a call (full, busy,
    /// wrong topology …): a stable code of its own and a sentence.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The media plane refused or did not answer.
    #[error("{0}")]
    MediaUnavailable(String),
    /// A request refused for a reason of its own (a file too large, an
    /// expired URL …): status, stable code, sentence.
    #[error("{2}")]
    Refused(StatusCode, &'static str, String),
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

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code; see the table in `docs/protocol.md`.
    pub code: &'static str,
    /// A sentence for people; may change between versions.
    pub message: String,
}

impl ApiError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidRequest(_) | Self::UnknownField(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::AccessDenied
            | Self::Forbidden(_)
            | Self::UserLocked
            | Self::ApplicationUnregistered => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(..) => StatusCode::CONFLICT,
            Self::MediaUnavailable(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Refused(status, ..) => *status,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnknownField(_) => "unknown_field",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::AccessDenied => "access_denied",
            Self::Forbidden(_) => "forbidden",
            Self::UserLocked => "user_locked",
            Self::ApplicationUnregistered => "application_unregistered",
            Self::NotFound(_) | Self::NoRoute => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(code, _) => code,
            Self::MediaUnavailable(_) => "media_unavailable",
            Self::Refused(_, code, _) => code,
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// A refusal with its own status and code.
    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused(status, code, message.into())
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(err) = &self {
            tracing::error!(error = ?err, "internal error answering a request");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited(limited) = &self {
            // Whole seconds, rounded up: never 0, which would invite an
            // immediate retry.
            let secs = limited.retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"confer\", Bearer realm=\"confer\""),
            );
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Conflict(code, message) => Self::Conflict(code, message),
            crate::store::StoreError::Unavailable(why) => Self::unavailable(&why),
            err => Self::internal(err),
        }
    }
}

impl From<crate::mail::MailError> for ApiError {
    fn from(err: crate::mail::MailError) -> Self {
        match err {
            crate::mail::MailError::Unavailable(why) => Self::unavailable(&why),
            err => Self::internal(err),
        }
    }
}

impl From<crate::files::storage::StorageError> for ApiError {
    fn from(err: crate::files::storage::StorageError) -> Self {
        match err {
            crate::files::storage::StorageError::Io(io) => Self::io(io),
            err => Self::internal(err),
        }
    }
}
