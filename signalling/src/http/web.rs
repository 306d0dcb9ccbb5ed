//! The web client (plain ES modules, embedded in the binary: nothing is
//! fetched from elsewhere at run time) and the demo application's sign-in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::ApiJson;
use crate::error::Error;
use crate::ids::UserId;
use crate::messaging::{Caller, NewConversation, Who};
use crate::server::{PeerAddr, Services};

/// The files of the client: path under `/web/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "copies.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/copies.js"),
    ),
    (
        "mentions.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/mentions.js"),
    ),
    (
        "marks.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/marks.js"),
    ),
    (
        "threads.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/threads.js"),
    ),
    (
        "call.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/call.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/format.js"),
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

fn page(content_type: &'static str, body: impl IntoResponse, csp: HeaderValue) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    response
}

/// `GET /`: the client. Only this server's pages and the configured
/// parent origins may frame it (`frame-ancestors`); the page reads the
/// same list from its `confer-parent-origins` meta tag and takes tokens by
/// `postMessage` from its parent only if the parent is one of them.
pub async fn index(State(services): State<Arc<Services>>) -> Response {
    let origins = services.config.web.parent_origins.join(" ");
    // The origins were checked when the configuration was (`WebConfig::
    // is_origin`): letters, digits, `.-:[]/`, nothing a header or an HTML
    // attribute would read differently.
    let csp = format!("{CSP}; frame-ancestors 'self' {origins}");
    let csp = HeaderValue::from_str(csp.trim_end()).unwrap_or_else(|_| {
        // Not reached with a checked configuration; refuse everything.
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'")
    });
    let html = INDEX.replace("{{parent_origins}}", &origins);
    page("text/html; charset=utf-8", html, csp)
}

/// `GET /web/{file}`: its scripts and style. A name that is not UTF-8
/// once decoded is no asset either (404, not the extractor's plain-text
/// 400).
pub async fn asset(super::extract::PathId(file): super::extract::PathId<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, body)) => page(content_type, *body, HeaderValue::from_static(CSP)),
        None => Error::NoRoute.into_response(),
    }
}

/// Whether the demo application is offered.
#[derive(Debug, Serialize, ToSchema)]
pub struct DemoInfo {
    /// As configured; by default only for a request from loopback to a
    /// server that listens on loopback only (docs/operations.md).
    pub enabled: bool,
}

/// A person's name, to use the demo as.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSignIn {
    /// Any printable text; the same name is the same demo user.
    #[schema(
        example = "Анна",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
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

/// Headers a reverse proxy adds. A request with any of them came through
/// one, whatever its TCP peer (a proxy on the same host is a loopback peer).
const PROXY_HEADERS: &[&str] = &["forwarded", "via", "x-real-ip"];

/// Whether the demo is offered to this request: as configured; left to the
/// default (on while `listen` is loopback), only to a request whose TCP
/// peer is a loopback address, whose `Host` names loopback (a page of
/// another site that rebinds its DNS name to 127.0.0.1 sends its own name)
/// and that carries no proxy header (a server on loopback behind a proxy
/// serves the world).
fn demo_offered(
    services: &Services,
    peer: Option<SocketAddr>,
    uri: &Uri,
    headers: &HeaderMap,
) -> bool {
    match services.config.demo.enabled {
        Some(enabled) => enabled,
        None => {
            services.config.demo_enabled()
                && peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
                // HTTP/2 names the host in the URI, HTTP/1.1 in `Host`.
                && headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| uri.authority().map(|a| a.as_str()))
                    .is_some_and(is_loopback_host)
                && !headers.keys().any(|name| {
                    PROXY_HEADERS.contains(&name.as_str())
                        || name.as_str().starts_with("x-forwarded-")
                })
        }
    }
}

/// `localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|l| name.eq_ignore_ascii_case(l))
}

/// The TCP peer of the request, when the server recorded it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<PeerAddr>>()
                .map(|ConnectInfo(PeerAddr(addr))| *addr),
        ))
    }
}

/// Whether this server offers the demo application.
#[utoipa::path(get, path = "/api/v1/demo", tag = "demo",
    responses((status = 200, description = "Whether the demo is on", body = DemoInfo)))]
pub async fn demo_info(
    State(services): State<Arc<Services>>,
    Peer(peer): Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Json<DemoInfo> {
    Json(DemoInfo {
        enabled: demo_offered(&services, peer, &uri, &headers),
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
        (status = 404, description = "`not_found`: the demo is not offered to this request", body = ErrorBody),
    ))]
pub async fn demo_sign_in(
    State(services): State<Arc<Services>>,
    Peer(peer): Peer,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DemoSignIn>,
) -> Result<(StatusCode, Json<DemoSession>), Error> {
    if !demo_offered(&services, peer, &uri, &headers) {
        return Err(Error::NotFound("demo"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:80:80",
            "127.0.0.2",
            "[::2]",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
