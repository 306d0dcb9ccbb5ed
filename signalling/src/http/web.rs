//! The web client (plain ES modules, embedded in the binary: nothing is
//! fetched from elsewhere at run time) and the demo application's sign-in.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::ids::UserId;
use crate::messaging::{Caller, NewConversation, Who};
use crate::server::Services;

/// The files of the client: path under `/web/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "call.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/call.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

const INDEX: &str = include_str!("../../web/index.html");

/// What the page may load and connect to: its own scripts and styles only;
/// files (S3 URLs may be on another host) and the WebSocket anywhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data: http: https:; media-src 'self' blob:; \
    connect-src 'self' ws: wss: http: https:; object-src 'none'; base-uri 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

/// `GET /`: the client.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /web/{file}`: its scripts and style.
pub async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => ApiError::NoRoute.into_response(),
    }
}

/// Whether the demo application is offered.
#[derive(Debug, Serialize, ToSchema)]
pub struct DemoInfo {
    /// On by default while the server listens on loopback only.
    pub enabled: bool,
}

/// A person's name, to use the demo as.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSignIn {
    /// Any printable text; the same name is the same demo user.
    #[schema(example = "Анна")]
    pub name: String,
}

/// A demo user's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct DemoSession {
    /// A user token of the demo application.
    pub token: String,
    /// The user.
    pub user_id: UserId,
    /// RFC 3339 end of the token's validity.
    pub expires_at: String,
}

/// Whether the demo is offered to this request: as configured, and when
/// left to the default (on loopback) not to requests that came through a
/// reverse proxy — a server on loopback behind a proxy serves the world.
fn demo_offered(services: &Services, headers: &HeaderMap) -> bool {
    let proxied = headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for");
    services.config.demo_enabled() && (services.config.demo.enabled.is_some() || !proxied)
}

/// Whether this server offers the demo application.
#[utoipa::path(get, path = "/api/v1/demo", tag = "demo",
    responses((status = 200, description = "Whether the demo is on", body = DemoInfo)))]
pub async fn demo_info(
    State(services): State<Arc<Services>>,
    headers: HeaderMap,
) -> Json<DemoInfo> {
    Json(DemoInfo {
        enabled: demo_offered(&services, &headers),
    })
}

/// Signs a person in to the demo application by name (no password: it is
/// a demo, offered by default on loopback only). The user is a member of
/// the demo's lobby, a conversation of every demo user.
#[utoipa::path(post, path = "/api/v1/demo/sessions", tag = "demo",
    request_body = DemoSignIn,
    responses(
        (status = 201, description = "A user token", body = DemoSession),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: the demo is off", body = ErrorBody),
    ))]
pub async fn demo_sign_in(
    State(services): State<Arc<Services>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DemoSignIn>,
) -> Result<(StatusCode, Json<DemoSession>), ApiError> {
    if !demo_offered(&services, &headers) {
        return Err(ApiError::NotFound("demo"));
    }
    let name = body.name.trim();
    let app = services.tenancy.demo_application().await?;
    let external_id = format!("demo:{}", name.to_lowercase());
    let issued = services
        .tenancy
        .issue_token(&app, &external_id, name, None, &[])
        .await?;
    let bot = Caller { app, who: Who::App };
    services
        .messaging
        .create_conversation(
            &bot,
            NewConversation {
                title: "Demo lobby".to_owned(),
                all_users: true,
                key: Some("demo-lobby".to_owned()),
                ..NewConversation::default()
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DemoSession {
            token: issued.token,
            user_id: issued.user.id,
            expires_at: issued.expires_at.to_rfc3339(),
        }),
    ))
}
