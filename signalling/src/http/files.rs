//! REST routes of files: ask to upload, complete, get download URLs,
//! discard; and the signed URLs of the local backend.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::extract::{ApiJson, CallerAuth, PathId};
use crate::error::{Code, Error};
use crate::files::local::Access;
use crate::files::{DownloadTicket, FileView, NewUpload, UploadTicket};
use crate::ids::{ConversationId, FileId};
use crate::server::Services;

/// This server's URL as the client reached it: `files.public_url`, or
/// `http://` (`https://` with `[tls]`) and the request's `Host`.
pub(super) fn base_url(services: &Services, headers: &HeaderMap) -> String {
    if let Some(url) = &services.config.files.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map_or_else(|| services.config.listen.to_string(), str::to_owned);
    let scheme = if services.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// Asks to upload a file to a conversation the caller may post in. The
/// answer carries a URL that accepts one `PUT` of exactly `size` bytes.
#[utoipa::path(post, path = "/api/v1/conversations/{conversation_id}/files", tag = "files",
    params(("conversation_id" = ConversationId, Path, description = "Conversation id")),
    request_body = NewUpload,
    security(("user" = []), ("application" = [])),
    responses(
        (status = 201, description = "A pending file and its upload URL", body = UploadTicket),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden` (not a member), `user_locked`, `application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`quota_exceeded`", body = ErrorBody),
        (status = 413, description = "`file_too_large`", body = ErrorBody),
    ))]
pub async fn begin_upload(
    State(services): State<Arc<Services>>,
    CallerAuth(caller): CallerAuth,
    PathId(conversation): PathId<ConversationId>,
    headers: HeaderMap,
    ApiJson(upload): ApiJson<NewUpload>,
) -> Result<(StatusCode, Json<UploadTicket>), Error> {
    let base = base_url(&services, &headers);
    let ticket = services
        .files
        .begin_upload(&caller, conversation, upload, &base)
        .await?;
    Ok((StatusCode::CREATED, Json(ticket)))
}

/// Completes an upload: the server checks the bytes' size, computes their
/// SHA-256 (and compares the declared one), makes a preview of an image,
/// and the file becomes `ready` to attach. Repeating it is harmless.
#[utoipa::path(post, path = "/api/v1/files/{file_id}/complete", tag = "files",
    params(("file_id" = FileId, Path, description = "File id")),
    security(("user" = []), ("application" = [])),
    responses(
        (status = 200, description = "The ready file", body = FileView),
        (status = 400, description = "`upload_size_mismatch`, `checksum_mismatch` (the bytes are dropped; upload again)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found` (no such file of the caller's)", body = ErrorBody),
        (status = 409, description = "`upload_missing`, `upload_completing`", body = ErrorBody),
    ))]
pub async fn complete_upload(
    State(services): State<Arc<Services>>,
    CallerAuth(caller): CallerAuth,
    PathId(id): PathId<FileId>,
) -> Result<Json<FileView>, Error> {
    Ok(Json(services.files.complete(&caller, id).await?))
}

/// A file and short-lived URLs for its bytes and preview: for its uploader,
/// and, once attached, for whoever may read the message.
#[utoipa::path(get, path = "/api/v1/files/{file_id}", tag = "files",
    params(("file_id" = FileId, Path, description = "File id")),
    security(("user" = []), ("application" = [])),
    responses(
        (status = 200, description = "The file and its download URLs", body = DownloadTicket),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden` (not a member of its conversation)", body = ErrorBody),
        (status = 404, description = "`not_found` (also: deleted, or in a message the caller does not see)", body = ErrorBody),
        (status = 409, description = "`file_not_ready`", body = ErrorBody),
    ))]
pub async fn get_file(
    State(services): State<Arc<Services>>,
    CallerAuth(caller): CallerAuth,
    PathId(id): PathId<FileId>,
    headers: HeaderMap,
) -> Result<Json<DownloadTicket>, Error> {
    let base = base_url(&services, &headers);
    Ok(Json(services.files.download(&caller, id, &base).await?))
}

/// Cancels an upload, or deletes a file not attached to any message.
#[utoipa::path(delete, path = "/api/v1/files/{file_id}", tag = "files",
    params(("file_id" = FileId, Path, description = "File id")),
    security(("user" = []), ("application" = [])),
    responses(
        (status = 204, description = "Gone"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`file_attached`", body = ErrorBody),
    ))]
pub async fn discard_file(
    State(services): State<Arc<Services>>,
    CallerAuth(caller): CallerAuth,
    PathId(id): PathId<FileId>,
) -> Result<StatusCode, Error> {
    services.files.discard(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of a URL the local backend signed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// Unix time (seconds) the URL stops working.
    pub expires: i64,
    /// HMAC-SHA256 of what the URL allows, base64url.
    pub signature: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Signed {
    type Rejection = Error;

    /// A URL without its expiry and signature is refused like a changed one.
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        Query::<Self>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| q)
            .map_err(|_| {
                Error::refused(
                    Code::BadSignature,
                    "this URL lacks its expires and signature: use the URL exactly as it was given",
                )
            })
    }
}

/// Local backend only: receives the bytes of an upload, streamed to disk.
/// The body must be exactly the declared size (and match the declared
/// SHA-256); otherwise nothing is kept.
#[utoipa::path(put, path = "/api/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = FileId, Path, description = "File id"), Signed),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes"),
    responses(
        (status = 204, description = "Stored; now complete the upload"),
        (status = 400, description = "`upload_size_mismatch`, `checksum_mismatch`", body = ErrorBody),
        (status = 403, description = "`bad_signature`, `url_expired`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`already_uploaded`", body = ErrorBody),
    ))]
pub async fn put_content(
    State(services): State<Arc<Services>>,
    PathId(id): PathId<FileId>,
    q: Signed,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Error> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    services
        .files
        .receive_local(id, q.expires, &q.signature, length, Box::pin(bytes))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Local backend only: the bytes of a file, streamed, with its name in
/// `Content-Disposition`.
#[utoipa::path(get, path = "/api/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = FileId, Path, description = "File id"), Signed),
    responses(
        (status = 200, description = "The bytes, with the content type given when the upload was asked for", content_type = "*/*"),
        (status = 403, description = "`bad_signature`, `url_expired`", body = ErrorBody),
        (status = 404, description = "`not_found` (also: deleted)", body = ErrorBody),
    ))]
pub async fn get_content(
    State(services): State<Arc<Services>>,
    PathId(id): PathId<FileId>,
    q: Signed,
) -> Result<Response, Error> {
    serve(&services, id, q, Access::Get).await
}

/// Local backend only: a file's preview (JPEG, at most 320 px on its long
/// side).
#[utoipa::path(get, path = "/api/v1/files/{file_id}/preview", tag = "files",
    params(("file_id" = FileId, Path, description = "File id"), Signed),
    responses(
        (status = 200, description = "The preview", content_type = "image/jpeg"),
        (status = 403, description = "`bad_signature`, `url_expired`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get_preview(
    State(services): State<Arc<Services>>,
    PathId(id): PathId<FileId>,
    q: Signed,
) -> Result<Response, Error> {
    serve(&services, id, q, Access::Preview).await
}

async fn serve(
    services: &Services,
    id: FileId,
    q: Signed,
    access: Access,
) -> Result<Response, Error> {
    let download = services
        .files
        .serve_local(id, access, q.expires, &q.signature)
        .await?;
    let mut response = Response::new(Body::from_stream(download.bytes));
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, &download.content_type);
    set(header::CONTENT_LENGTH, &download.len.to_string());
    set(header::CONTENT_DISPOSITION, &download.disposition);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Opened directly, the file is a sandboxed document: no script of an
    // uploaded HTML file runs with this server's origin.
    set(
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'",
    );
    set(header::CACHE_CONTROL, "private, max-age=3600");
    if let Some(sha) = &download.sha256 {
        set(header::ETAG, &format!("\"{sha}\""));
    }
    Ok(response)
}
