//! Exports over REST: the owning subscriber asks for one, follows its
//! progress and gets a signed download URL; the URL alone downloads it.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::time;
use super::error::ErrorBody;
use super::extract::{ApiJson, ClientIp, PathId};
use super::files::Signed;
use super::governance::Owner;
use crate::error::Error;
use crate::ids::{ConversationId, ExportId, UserId};
use crate::server::Services;
use crate::store::exports::ExportRecord;

/// An export to build.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExport {
    /// One conversation, or …
    pub conversation_id: Option<ConversationId>,
    /// … every conversation this user is in.
    pub user_id: Option<UserId>,
    /// Messages sent at or after this RFC 3339 time (default: the first).
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// Messages sent before this RFC 3339 time (default: no end).
    #[schema(format = DateTime)]
    pub to: Option<String>,
}

/// How far an export is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportProgress {
    /// Conversations to export.
    pub conversations_total: u64,
    /// Conversations written.
    pub conversations_done: u64,
    /// Messages and kept versions written.
    pub messages: u64,
    /// Attachments written.
    pub files: u64,
}

/// An export.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportView {
    /// Id.
    pub id: ExportId,
    /// `running`, `ready`, `failed` or `expired` (its archive deleted).
    pub state: String,
    /// The conversation exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The user whose conversations are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// RFC 3339 start of the range.
    pub from: String,
    /// RFC 3339 end of the range (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// How far it is.
    pub progress: ExportProgress,
    /// The archive's size in bytes, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 time it was asked for.
    pub created_at: String,
    /// RFC 3339 time it was ready or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Ready: `GET` this for the archive (a tar file); a new URL each time
    /// the export is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// RFC 3339 time the URL stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_expires_at: Option<String>,
}

fn view(services: &Services, e: &ExportRecord, base: Option<&str>) -> ExportView {
    let (url, until) = match base {
        Some(base) if e.state == "ready" => {
            let (url, until) = services.export_url(e, base);
            (Some(url), Some(until.to_rfc3339()))
        }
        _ => (None, None),
    };
    ExportView {
        id: e.id,
        state: e.state.clone(),
        conversation_id: e.conversation_id,
        user_id: e.user_id,
        from: e.from.to_rfc3339(),
        to: (e.to < crate::export::OPEN_END).then(|| e.to.to_rfc3339()),
        progress: ExportProgress {
            conversations_total: e.conversations_total,
            conversations_done: e.conversations_done,
            messages: e.messages,
            files: e.files,
        },
        bytes: (e.state == "ready").then_some(e.bytes),
        error: e.error.clone(),
        created_at: e.created_at.to_rfc3339(),
        finished_at: e.finished_at.map(|t| t.to_rfc3339()),
        url,
        url_expires_at: until,
    }
}

/// An application's exports.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportList {
    /// Newest first (the last 100).
    pub exports: Vec<ExportView>,
}

/// Starts an export of a conversation, or of a user's conversations,
/// built in the background.
#[utoipa::path(post, path = "/api/v1/applications/{app_id}/exports", tag = "governance",
    params(("app_id" = crate::ids::AppId, Path, description = "Application id")),
    request_body = NewExport,
    security(("subscriber" = [])),
    responses(
        (status = 202, description = "Started; follow it with GET", body = ExportView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn start_export(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    Owner(subscriber, app, _path): Owner,
    ApiJson(body): ApiJson<NewExport>,
) -> Result<(StatusCode, Json<ExportView>), Error> {
    let from = time("from", body.from.as_deref())?;
    let to = time("to", body.to.as_deref())?;
    let export = services
        .start_export(
            &subscriber,
            &app,
            body.conversation_id,
            body.user_id,
            from,
            to,
            ip,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view(&services, &export, None))))
}

/// The application's exports, newest first.
#[utoipa::path(get, path = "/api/v1/applications/{app_id}/exports", tag = "governance",
    params(("app_id" = crate::ids::AppId, Path, description = "Application id")),
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "Its exports", body = ExportList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn list_exports(
    State(services): State<Arc<Services>>,
    Owner(_owner, app, _path): Owner,
) -> Result<Json<ExportList>, Error> {
    let exports = services.store.exports_of(app.id, 100).await?;
    Ok(Json(ExportList {
        exports: exports.iter().map(|e| view(&services, e, None)).collect(),
    }))
}

/// An export: its progress, and once ready a download URL.
#[utoipa::path(get, path = "/api/v1/applications/{app_id}/exports/{export_id}", tag = "governance",
    params(
        ("app_id" = crate::ids::AppId, Path, description = "Application id"),
        ("export_id" = ExportId, Path, description = "Export id"),
    ),
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "The export", body = ExportView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get_export(
    State(services): State<Arc<Services>>,
    Owner(_owner, app, path): Owner,
    headers: HeaderMap,
) -> Result<Json<ExportView>, Error> {
    let id: ExportId = path
        .get("export_id")
        .and_then(|v| v.parse().ok())
        .ok_or(Error::NoRoute)?;
    let export = services.export_of(&app, id).await?;
    let base = super::files::base_url(&services, &headers);
    Ok(Json(view(&services, &export, Some(&base))))
}

/// An export's archive (a tar file), through the signed URL its export
/// gave.
#[utoipa::path(get, path = "/api/v1/exports/{export_id}/archive", tag = "governance",
    params(("export_id" = ExportId, Path, description = "Export id"), Signed),
    responses(
        (status = 200, description = "The archive", content_type = "application/x-tar"),
        (status = 403, description = "`bad_signature`, `url_expired`", body = ErrorBody),
        (status = 404, description = "`not_found`: not ready, or expired", body = ErrorBody),
    ))]
pub async fn download_export(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    PathId(id): PathId<ExportId>,
    q: Signed,
) -> Result<Response, Error> {
    let (export, bytes) = services
        .open_export(id, q.expires, &q.signature, ip)
        .await?;
    let mut response = Response::new(Body::from_stream(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&export.bytes.to_string()) {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&format!(
        "attachment; filename=\"confer-export-{}.tar\"",
        export.id
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
