//! How a domain [`Error`] is answered over HTTP: its status, chosen from
//! its code here and nowhere else, and the body every error has,
//! `{"error": {"code": "...", "message": "..."}}`. A failure inside the
//! server is logged here with its detail and answered `500 internal` with
//! a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Code, Error};

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
    #[schema(value_type = String)]
    pub code: Code,
    /// A sentence for people; may change between versions.
    pub message: String,
}

/// The HTTP status of a code.
#[must_use]
pub fn status(code: Code) -> StatusCode {
    match code {
        Code::MalformedJson
        | Code::InvalidRequest
        | Code::UnknownField
        | Code::UploadSizeMismatch
        | Code::ChecksumMismatch
        // WebSocket-only codes; a REST route never answers them.
        | Code::UnknownType
        | Code::UnsupportedFrame => StatusCode::BAD_REQUEST,
        Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::PayloadTooLarge | Code::FileTooLarge | Code::FrameTooLarge => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::AccessDenied
        | Code::Forbidden
        | Code::UserLocked
        | Code::ApplicationUnregistered
        | Code::BadSignature
        | Code::UrlExpired => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::NotAGroup
        | Code::AttachmentUnavailable
        | Code::QuotaExceeded
        | Code::UploadMissing
        | Code::UploadCompleting
        | Code::FileNotReady
        | Code::FileAttached
        | Code::AlreadyUploaded
        | Code::Busy
        | Code::CallInProgress
        | Code::CallFull
        | Code::NotRinging
        | Code::NotJoined
        | Code::WrongTopology
        | Code::Negotiating
        | Code::LimitReached => StatusCode::CONFLICT,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::MediaUnavailable | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = status(code);
        if let Self::Internal(err) = &self {
            tracing::error!(error = ?err, "internal error answering a request");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
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

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOL: &str = include_str!("../../../docs/protocol.md");

    /// Every code is documented, and the REST error table of
    /// `docs/protocol.md` gives each code the status [`status`] answers.
    #[test]
    fn the_protocol_document_lists_every_code_with_its_status() {
        for code in Code::ALL {
            assert!(
                PROTOCOL.contains(&format!("`{code}`")),
                "docs/protocol.md does not mention `{code}`"
            );
        }
        let table = PROTOCOL
            .split("| status | code | when |")
            .nth(1)
            .expect("the REST error table");
        let mut rows = 0;
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let documented: u16 = cells[1].parse().expect("a status");
            for name in cells[2].split(',').map(|c| c.trim().trim_matches('`')) {
                let code = Code::ALL
                    .iter()
                    .find(|c| c.as_str() == name)
                    .unwrap_or_else(|| panic!("`{name}` in the REST table is not a code"));
                assert_eq!(
                    status(*code).as_u16(),
                    documented,
                    "`{name}`: the table and the code disagree"
                );
                rows += 1;
            }
        }
        assert!(rows >= 20, "only {rows} codes read from the REST table");
    }
}
