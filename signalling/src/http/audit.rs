//! The audit log over REST: a subscriber reads its own, newest first,
//! filtered and paged.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::SessionToken;
use crate::error::Error;
use crate::ids::{AppId, Timestamp};
use crate::server::Services;
use crate::store::audit::{AuditEntry, AuditQuery};

/// Filters and paging of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only entries of this application.
    pub app_id: Option<AppId>,
    /// Only this action, e.g. `application.secret_rotated`.
    pub action: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only entries before this RFC 3339 time.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// The `next` of the previous page.
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many (1 to 200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// One administrative action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Its number (increasing).
    pub id: u64,
    /// RFC 3339 time.
    pub at: String,
    /// The application acted on or through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<AppId>,
    /// Who acted: `subscriber:<id>` or `application:<id>`.
    pub actor: String,
    /// What was done (see docs/protocol.md, "Audit log").
    pub action: String,
    /// What it was done to, e.g. `user:<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// More about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: e.at.to_rfc3339(),
            app_id: e.app_id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            source_ip: e.source_ip,
            details: e.details,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntryView>,
    /// `before` for the next page; null on the last.
    pub next: Option<u64>,
}

/// An optional RFC 3339 time of a request.
pub(super) fn time(field: &str, text: Option<&str>) -> Result<Option<Timestamp>, Error> {
    text.map(|t| {
        t.parse::<jiff::Timestamp>()
            .map(|d| Timestamp(d.as_millisecond()))
            .map_err(|_| Error::InvalidRequest(format!("{field}: not an RFC 3339 time")))
    })
    .transpose()
}

/// The caller's audit log: its applications' administrative actions and
/// its own, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "subscribers",
    params(AuditParams),
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub async fn audit_log(
    State(services): State<Arc<Services>>,
    SessionToken(token): SessionToken,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, Error> {
    let subscriber = services.tenancy.authenticate_subscriber(&token).await?;
    let Query(p) = params.map_err(|e| Error::InvalidRequest(e.body_text()))?;
    let query = AuditQuery {
        app_id: p.app_id,
        action: p.action,
        from: time("from", p.from.as_deref())?,
        to: time("to", p.to.as_deref())?,
        before_id: p
            .before
            .map(|b| {
                u64::try_from(b)
                    .ok()
                    .filter(|b| *b >= 1)
                    .ok_or_else(|| Error::InvalidRequest("before: a positive number".to_owned()))
            })
            .transpose()?,
    };
    let limit = p.limit.unwrap_or(50);
    let entries = services.audit_log(subscriber.id, &query, limit).await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries: entries.into_iter().map(AuditEntryView::from).collect(),
        next,
    }))
}
