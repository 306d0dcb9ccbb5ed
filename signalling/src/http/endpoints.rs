//! Outgoing webhooks over REST: the application registers endpoints,
//! lists and revokes them, rotates their signing secrets, reads each
//! one's delivery log and retries a dead delivery.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::{ApiJson, AppAuth, ClientIp, PathId};
use crate::error::Error;
use crate::ids::{DeliveryId, EndpointId, Timestamp};
use crate::server::Services;
use crate::store::outbox::{Delivery, DeliveryState, Endpoint};

/// An endpoint to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// Where to POST events: an `http` or `https` URL (at most 2048 bytes).
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// The kinds of events it wants.
    #[schema(min_items = 1)]
    pub events: Vec<EventKind>,
}

/// A kind of event an endpoint may want.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `message.created`, `message.edited`, `message.deleted`.
    Message,
    /// `action.clicked`.
    Action,
    /// `call.started`, `call.ended`.
    Call,
    /// `user.provisioned`.
    User,
}

impl EventKind {
    fn name(self) -> String {
        match self {
            Self::Message => "message",
            Self::Action => "action",
            Self::Call => "call",
            Self::User => "user",
        }
        .to_owned()
    }
}

/// An outgoing webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    /// Id.
    pub id: EndpointId,
    /// Where events are POSTed.
    pub url: String,
    /// The kinds it gets.
    pub events: Vec<String>,
    /// The signing secret (`whsec_…`): see docs/protocol.md, "Verifying
    /// a delivery".
    pub secret: String,
    /// RFC 3339 time until which the secret replaced by the last rotation
    /// still signs beside `secret`; absent once it has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    /// RFC 3339 time it was registered.
    pub created_at: String,
    /// RFC 3339 time it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl EndpointView {
    /// The endpoint as seen at `now`.
    fn of(e: &Endpoint, now: Timestamp) -> Self {
        Self {
            id: e.id,
            url: e.url.clone(),
            events: e.kinds.clone(),
            secret: e.secret.clone(),
            previous_secret_until: e
                .previous_secret
                .as_ref()
                .map(|(_, until)| *until)
                .filter(|until| now < *until)
                .map(Timestamp::to_rfc3339),
            created_at: e.created_at.to_rfc3339(),
            revoked_at: e.revoked_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// The application's endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// Oldest first, revoked ones too.
    pub endpoints: Vec<EndpointView>,
}

/// How to rotate an endpoint's signing secret.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the secret being replaced keeps signing beside the new
    /// one, in seconds: 0 to 604800 (a week), default 86400. Use 0 for a
    /// leaked secret.
    #[schema(minimum = 0, maximum = 604_800)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    pub keep_previous_secs: Option<u64>,
}

/// Filters and paging of an endpoint's delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only deliveries in this state.
    #[param(inline)]
    pub state: Option<StateParam>,
    /// The `next` of the previous page.
    pub before: Option<DeliveryId>,
    /// At most this many (1 to 200, default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateParam {
    /// Waiting for its next attempt.
    Pending,
    /// Delivered (the endpoint answered 2xx).
    Delivered,
    /// Every attempt failed.
    Dead,
}

/// One event's delivery to the endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Id.
    pub id: DeliveryId,
    /// The event's idempotency id (the `webhook-id` header and the body's
    /// `id`).
    pub event_id: String,
    /// The event type, e.g. `message.created`.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// RFC 3339 time of the next attempt (pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The last attempt's HTTP status, if the endpoint answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 time the last attempt ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// RFC 3339 time it was enqueued.
    pub created_at: String,
    /// The body posted (the signature covers exactly this text).
    pub payload: String,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id,
            event_id: crate::outbox::event_id(d.app_id, d.event_seq),
            event_type: d.event_type.clone(),
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: (d.state == DeliveryState::Pending)
                .then(|| d.next_attempt_at.to_rfc3339()),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            last_attempt_at: d.last_attempt_at.map(|t| t.to_rfc3339()),
            created_at: d.created_at.to_rfc3339(),
            payload: d.payload.clone(),
        }
    }
}

/// A page of an endpoint's delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// `before` for the next page; null on the last.
    pub next: Option<DeliveryId>,
}

/// Registers an endpoint: the application's events of the kinds it asks
/// for are POSTed to it, signed, from now on.
#[utoipa::path(post, path = "/api/v1/webhook-endpoints", tag = "webhooks",
    request_body = NewEndpoint,
    security(("application" = [])),
    responses(
        (status = 201, description = "The endpoint, with its signing secret", body = EndpointView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
    ))]
pub async fn create_endpoint(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), Error> {
    let kinds: Vec<String> = body.events.iter().map(|k| k.name()).collect();
    let endpoint = services
        .create_endpoint(&app, &body.url, &kinds, ip)
        .await?;
    let now = services.clock.now();
    Ok((StatusCode::CREATED, Json(EndpointView::of(&endpoint, now))))
}

/// The application's endpoints.
#[utoipa::path(get, path = "/api/v1/webhook-endpoints", tag = "webhooks",
    security(("application" = [])),
    responses(
        (status = 200, description = "Its endpoints, oldest first", body = EndpointList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
    ))]
pub async fn list_endpoints(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
) -> Result<Json<EndpointList>, Error> {
    let endpoints = services.webhook_endpoints(&app).await?;
    let now = services.clock.now();
    Ok(Json(EndpointList {
        endpoints: endpoints.iter().map(|e| EndpointView::of(e, now)).collect(),
    }))
}

/// Revokes an endpoint: nothing more is sent to it, and its pending
/// deliveries are dropped.
#[utoipa::path(delete, path = "/api/v1/webhook-endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = EndpointId, Path, description = "Endpoint id")),
    security(("application" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such live endpoint of this application", body = ErrorBody),
    ))]
pub async fn revoke_endpoint(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(id): PathId<EndpointId>,
) -> Result<StatusCode, Error> {
    services.revoke_endpoint(&app, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives an endpoint a new signing secret. Until `previous_secret_until`
/// each delivery carries two signatures, one under each secret, so the
/// receiver can switch to the new one without refusing deliveries.
#[utoipa::path(post, path = "/api/v1/webhook-endpoints/{endpoint_id}/secret", tag = "webhooks",
    params(("endpoint_id" = EndpointId, Path, description = "Endpoint id")),
    request_body = RotateSecret,
    security(("application" = [])),
    responses(
        (status = 200, description = "The endpoint with its new secret", body = EndpointView),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_field`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such live endpoint of this application", body = ErrorBody),
    ))]
pub async fn rotate_endpoint_secret(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    PathId(id): PathId<EndpointId>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<Json<EndpointView>, Error> {
    let keep = body
        .keep_previous_secs
        .map_or(crate::outbox::KEEP_PREVIOUS, Duration::from_secs);
    let endpoint = services.rotate_endpoint_secret(&app, id, keep, ip).await?;
    Ok(Json(EndpointView::of(&endpoint, services.clock.now())))
}

/// An endpoint's delivery log, newest first.
#[utoipa::path(get, path = "/api/v1/webhook-endpoints/{endpoint_id}/deliveries", tag = "webhooks",
    params(("endpoint_id" = EndpointId, Path, description = "Endpoint id"), DeliveryParams),
    security(("application" = [])),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn deliveries(
    State(services): State<Arc<Services>>,
    AppAuth(app): AppAuth,
    PathId(id): PathId<EndpointId>,
    params: Result<Query<DeliveryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveryPage>, Error> {
    let Query(p) = params.map_err(|e| Error::InvalidRequest(e.body_text()))?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::InvalidRequest("limit: 1 to 200".to_owned()));
    }
    let state = p.state.map(|s| match s {
        StateParam::Pending => DeliveryState::Pending,
        StateParam::Delivered => DeliveryState::Delivered,
        StateParam::Dead => DeliveryState::Dead,
    });
    let page = services
        .endpoint_deliveries(&app, id, state, p.before, limit)
        .await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|d| d.id))
        .flatten();
    Ok(Json(DeliveryPage {
        deliveries: page.iter().map(DeliveryView::from).collect(),
        next,
    }))
}

/// Retries a dead delivery: it is pending again, its attempts start over.
#[utoipa::path(post, path = "/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(
        ("endpoint_id" = EndpointId, Path, description = "Endpoint id"),
        ("delivery_id" = DeliveryId, Path, description = "Delivery id"),
    ),
    security(("application" = [])),
    responses(
        (status = 204, description = "Pending again"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`application_unregistered`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead delivery of a live endpoint of this application", body = ErrorBody),
    ))]
pub async fn retry_delivery(
    State(services): State<Arc<Services>>,
    ClientIp(ip): ClientIp,
    AppAuth(app): AppAuth,
    Path((endpoint, delivery)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let (Ok(endpoint), Ok(delivery)) = (endpoint.parse(), delivery.parse()) else {
        return Err(Error::NoRoute);
    };
    services
        .retry_delivery(&app, endpoint, delivery, ip)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
