//! Retention and legal holds over REST, for the subscriber that owns the
//! application (its compliance officer): the application's own
//! credentials are refused.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::{ApiJson, ClientIp, SessionToken};
use crate::error::Error;
use crate::ids::{AppId, ConversationId, HoldId, UserId};
use crate::server::Services;
use crate::store::governance::{LegalHold, RetentionPolicy};
use crate::store::{Application, Subscriber};

/// The signed-in subscriber, the application of the path's `app_id`,
/// which it owns, and the path's other parameters.
#[derive(Debug)]
pub struct Owner(pub Subscriber, pub Application, pub HashMap<String, String>);

impl FromRequestParts<Arc<Services>> for Owner {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Services>) -> Result<Self, Error> {
        let SessionToken(token) = SessionToken::from_request_parts(parts, state).await?;
        let subscriber = state.tenancy.authenticate_subscriber(&token).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::NoRoute)?;
        let app: AppId = params
            .get("app_id")
            .and_then(|a| a.parse().ok())
            .ok_or(Error::NoRoute)?;
        let app = state.owned_application(&subscriber, app).await?;
        Ok(Self(subscriber, app, params))
    }
}

/// The id of the path's parameter `name`; anything else is no route.
fn path_id<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str) -> Result<T, Error> {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .ok_or(Error::NoRoute)
}

/// A retention period to set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionChange {
    /// Days to keep messages; null (or absent) removes the period. The
    /// application's: 1 to 36500. A conversation's: 0 (kept forever,
    /// whatever the application's) to 36500.
    #[schema(minimum = 0, maximum = 36500)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    pub days: Option<u64>,
}

/// A conversation's own period.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationRetention {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Days (0: kept forever).
    pub days: u64,
}

/// An application's retention.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionView {
    /// Days messages are kept; null: forever.
    pub days: Option<u64>,
    /// Conversations with their own period.
    pub conversations: Vec<ConversationRetention>,
}

impl From<RetentionPolicy> for RetentionView {
    fn from(p: RetentionPolicy) -> Self {
        Self {
            days: p.days,
            conversations: p
                .conversations
                .into_iter()
                .map(|(conversation_id, days)| ConversationRetention {
                    conversation_id,
                    days,
                })
                .collect(),
        }
    }
}

/// A legal hold to place: on a conversation or on a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    /// The conversation held.
    pub conversation_id: Option<ConversationId>,
    /// The user held (every conversation the user is in, and what the
    /// user wrote).
    pub user_id: Option<UserId>,
    /// Why: the matter it is for (1 to 1000 characters).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// A legal hold.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldView {
    /// Id.
    pub id: HoldId,
    /// The conversation held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The user held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Why.
    pub reason: String,
    /// RFC 3339 time it was placed.
    pub created_at: String,
    /// RFC 3339 time it was released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
}

impl From<&LegalHold> for HoldView {
    fn from(h: &LegalHold) -> Self {
        Self {
            id: h.id,
            conversation_id: h.conversation_id,
            user_id: h.user_id,
            reason: h.reason.clone(),
            created_at: h.created_at.to_rfc3339(),
            released_at: h.released_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// An application's legal holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldList {
    /// Oldest first, released ones too.
    pub holds: Vec<HoldView>,
}

/// The application's retention.
#[utoipa::path(get, path = "/api/v1/applications/{app_id}/retention", tag = "governance",
    params(("app_id" = AppId, Path, description = "Application id")),
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "Its retention", body = RetentionView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn retention(
    State(services): State<Arc<Services>>,
    Owner(_owner, app, _path): Owner,
) -> Result<Json<RetentionView>, Error> {
    Ok(Json(services.store.retention_of(app.id).await?.into()))
}

/// Sets the application's retention period.
#[utoipa::path(put, path = "/api/v1/applications/{app_id}/retention", tag = "governance",
    params(("app_id" = AppId, Path, description = "Application id")),
    request_body = RetentionChange,
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "Its retention now", body = RetentionView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn set_retention(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    Owner(subscriber, app, _path): Owner,
    ApiJson(body): ApiJson<RetentionChange>,
) -> Result<Json<RetentionView>, Error> {
    let policy = services
        .set_retention(&subscriber, &app, None, body.days, ip)
        .await?;
    Ok(Json(policy.into()))
}

/// Sets a conversation's own retention period.
#[utoipa::path(put, path = "/api/v1/applications/{app_id}/conversations/{conversation_id}/retention", tag = "governance",
    params(
        ("app_id" = AppId, Path, description = "Application id"),
        ("conversation_id" = ConversationId, Path, description = "Conversation id"),
    ),
    request_body = RetentionChange,
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "The application's retention now", body = RetentionView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn set_conversation_retention(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    Owner(subscriber, app, params): Owner,
    ApiJson(body): ApiJson<RetentionChange>,
) -> Result<Json<RetentionView>, Error> {
    let conversation: ConversationId = path_id(&params, "conversation_id")?;
    let policy = services
        .set_retention(&subscriber, &app, Some(conversation), body.days, ip)
        .await?;
    Ok(Json(policy.into()))
}

/// Places a legal hold on a conversation or a user.
#[utoipa::path(post, path = "/api/v1/applications/{app_id}/legal-holds", tag = "governance",
    params(("app_id" = AppId, Path, description = "Application id")),
    request_body = NewHold,
    security(("subscriber" = [])),
    responses(
        (status = 201, description = "Placed", body = HoldView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn place_hold(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    Owner(subscriber, app, _path): Owner,
    ApiJson(body): ApiJson<NewHold>,
) -> Result<(StatusCode, Json<HoldView>), Error> {
    let hold = services
        .place_hold(
            &subscriber,
            &app,
            body.conversation_id,
            body.user_id,
            &body.reason,
            ip,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(HoldView::from(&hold))))
}

/// The application's legal holds.
#[utoipa::path(get, path = "/api/v1/applications/{app_id}/legal-holds", tag = "governance",
    params(("app_id" = AppId, Path, description = "Application id")),
    security(("subscriber" = [])),
    responses(
        (status = 200, description = "Its holds, oldest first", body = HoldList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn holds(
    State(services): State<Arc<Services>>,
    Owner(_owner, app, _path): Owner,
) -> Result<Json<HoldList>, Error> {
    let holds = services.store.holds_of(app.id).await?;
    Ok(Json(HoldList {
        holds: holds.iter().map(HoldView::from).collect(),
    }))
}

/// Releases a legal hold.
#[utoipa::path(delete, path = "/api/v1/applications/{app_id}/legal-holds/{hold_id}", tag = "governance",
    params(
        ("app_id" = AppId, Path, description = "Application id"),
        ("hold_id" = HoldId, Path, description = "Hold id"),
    ),
    security(("subscriber" = [])),
    responses(
        (status = 204, description = "Released"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such live hold of this application", body = ErrorBody),
    ))]
pub async fn release_hold(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    Owner(subscriber, app, params): Owner,
) -> Result<StatusCode, Error> {
    let id: HoldId = path_id(&params, "hold_id")?;
    services.release_hold(&subscriber, &app, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}
