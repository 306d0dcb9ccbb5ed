//! Incoming webhooks over REST: the application makes, lists and revokes
//! them; whoever holds a webhook's URL posts through it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::{ApiJson, AppAuth, ClientIp, PathId};
use crate::error::Error;
use crate::hooks::HookPost;
use crate::ids::{ConversationId, MessageId, WebhookId};
use crate::server::Services;
use crate::store::hooks::IncomingWebhook;
use crate::store::messaging::Action;

/// A webhook to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHook {
    /// The application's name for it (1 to 256 characters).
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
}

/// An incoming webhook (its token is shown only when it is made).
#[derive(Debug, Serialize, ToSchema)]
pub struct HookView {
    /// Id.
    pub id: WebhookId,
    /// Where it posts.
    pub conversation_id: ConversationId,
    /// Its name.
    pub name: String,
    /// RFC 3339 time it was made.
    pub created_at: String,
    /// RFC 3339 time it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<&IncomingWebhook> for HookView {
    fn from(h: &IncomingWebhook) -> Self {
        Self {
            id: h.id,
            conversation_id: h.conversation_id,
            name: h.name.clone(),
            created_at: h.created_at.to_rfc3339(),
            revoked_at: h.revoked_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A webhook just made: its URL, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedHook {
    /// The webhook.
    pub webhook: HookView,
    /// The URL to post to (keep it secret: it is the credential).
    pub url: String,
}

/// An application's webhooks of one conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookList {
    /// Oldest first, revoked ones too.
    pub webhooks: Vec<HookView>,
}

/// A button of a message posted through a webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookAction {
    /// What the application's bot receives on a click.
    pub value: String,
    /// What people see.
    pub presentation: String,
}

/// What a post through a webhook carries: text, data or buttons.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookMessage {
    /// Text with light formatting.
    #[serde(default)]
    pub text: String,
    /// Any JSON for applications.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Buttons; clicks go to the application's bot.
    #[serde(default)]
    pub actions: Vec<HookAction>,
    /// The sender's name for this message: a retry with the same one
    /// posts nothing new.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// The message posted.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookPosted {
    /// Its id.
    pub message_id: MessageId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its number there.
    pub seq: u64,
}

/// Makes an incoming webhook for a conversation of the application.
#[utoipa::path(post, path = "/api/v1/conversations/{conversation_id}/webhooks", tag = "webhooks",
    params(("conversation_id" = ConversationId, Path, description = "Conversation id")),
    request_body = NewHook,
    security(("application" = [])),
    responses(
        (status = 201, description = "The webhook and its URL, shown this once", body = CreatedHook),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn create_hook(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(conversation): PathId<ConversationId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewHook>,
) -> Result<(StatusCode, Json<CreatedHook>), Error> {
    let (hook, token) = services
        .create_hook(&app, conversation, &body.name, ip)
        .await?;
    let base = super::files::base_url(&services, &headers);
    Ok((
        StatusCode::CREATED,
        Json(CreatedHook {
            webhook: HookView::from(&hook),
            url: format!("{base}/api/v1/hooks/{token}"),
        }),
    ))
}

/// The application's webhooks of a conversation.
#[utoipa::path(get, path = "/api/v1/conversations/{conversation_id}/webhooks", tag = "webhooks",
    params(("conversation_id" = ConversationId, Path, description = "Conversation id")),
    security(("application" = [])),
    responses(
        (status = 200, description = "Its webhooks, oldest first", body = HookList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn list_hooks(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    PathId(conversation): PathId<ConversationId>,
) -> Result<Json<HookList>, Error> {
    let hooks = services.hooks(&app, conversation).await?;
    Ok(Json(HookList {
        webhooks: hooks.iter().map(HookView::from).collect(),
    }))
}

/// Revokes an incoming webhook: its URL posts nothing more.
#[utoipa::path(delete, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = WebhookId, Path, description = "Webhook id")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such live webhook of this application", body = ErrorBody),
    ))]
pub async fn revoke_hook(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(id): PathId<WebhookId>,
) -> Result<StatusCode, Error> {
    services.revoke_hook(&app, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Posts a message through an incoming webhook, as the application's bot.
/// The URL is the credential.
#[utoipa::path(post, path = "/api/v1/hooks/{token}", tag = "webhooks",
    params(("token" = String, Path, description = "The webhook's token (from its URL)")),
    request_body = HookMessage,
    responses(
        (status = 201, description = "Posted", body = HookPosted),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 404, description = "`not_found`: no live webhook has this token", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
    ))]
pub async fn post_via_hook(
    State(services): State<Arc<Services>>,
    Path(token): Path<String>,
    ApiJson(body): ApiJson<HookMessage>,
) -> Result<(StatusCode, Json<HookPosted>), Error> {
    let post = HookPost {
        text: body.text,
        data: body.data,
        actions: body
            .actions
            .into_iter()
            .map(|a| Action {
                value: a.value,
                presentation: a.presentation,
            })
            .collect(),
        client_id: body.client_id,
    };
    let m = services.post_via_hook(&token, post).await?;
    Ok((
        StatusCode::CREATED,
        Json(HookPosted {
            message_id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
        }),
    ))
}
