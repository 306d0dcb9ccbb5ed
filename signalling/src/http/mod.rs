//! The HTTP surface: one [`app`] router with every REST route, the
//! operational endpoints and the generated OpenAPI document.

pub mod audit;
pub mod endpoints;
pub mod error;
pub mod exports;
pub mod extract;
pub mod files;
pub mod governance;
pub mod hooks;
pub mod ops;
pub mod realtime;
pub mod tenancy;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Error;
use crate::server::Services;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confer",
        description = "Collaboration server for business applications. Errors are \
            `{\"error\": {\"code\", \"message\"}}` with the codes listed in docs/protocol.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Health, metrics and this document"),
        (name = "registration", description = "An application registers by e-mail code"),
        (name = "subscribers", description = "An e-mail owner signs in to manage its applications"),
        (name = "applications", description = "Managing registered applications"),
        (name = "users", description = "User tokens and the application's users"),
        (name = "files", description = "Attachments: upload and download through signed URLs"),
        (name = "webhooks", description = "Incoming webhooks (secret URLs that post into a conversation as the application's bot) and outgoing ones (endpoints the application's events are POSTed to, signed)"),
        (name = "governance", description = "Retention, legal holds and exports, for the subscriber that owns the application"),
        (name = "demo", description = "The web client's demo application (loopback only by default)"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "application",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        let mut user = Http::new(HttpAuthScheme::Bearer);
        user.bearer_format = Some("JWT".to_owned());
        user.description =
            Some("A user token (HS256 JWT signed with the application's token key)".to_owned());
        components.add_security_scheme("user", SecurityScheme::Http(user));
        let mut subscriber = Http::new(HttpAuthScheme::Bearer);
        subscriber.description =
            Some("A subscriber session token from /api/v1/subscriber/sessions/confirm".to_owned());
        components.add_security_scheme("subscriber", SecurityScheme::Http(subscriber));
    }
}

fn api_router() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .routes(routes!(tenancy::register))
        .routes(routes!(tenancy::confirm_registration))
        .routes(routes!(tenancy::request_sign_in))
        .routes(routes!(tenancy::confirm_sign_in))
        .routes(routes!(tenancy::sign_out))
        .routes(routes!(audit::audit_log))
        .routes(routes!(tenancy::list_applications))
        .routes(routes!(
            tenancy::get_application,
            tenancy::rename_application,
            tenancy::unregister_application
        ))
        .routes(routes!(tenancy::rotate_secret))
        .routes(routes!(tenancy::issue_token))
        .routes(routes!(tenancy::find_user))
        .routes(routes!(tenancy::get_user))
        .routes(routes!(tenancy::lock_user))
        .routes(routes!(tenancy::unlock_user))
        .routes(routes!(tenancy::me))
        .routes(routes!(tenancy::grant_context, tenancy::revoke_context))
        .routes(routes!(files::begin_upload))
        .routes(routes!(files::complete_upload))
        .routes(routes!(files::get_file, files::discard_file))
        .routes(routes!(files::get_content, files::put_content))
        .routes(routes!(files::get_preview))
        .routes(routes!(hooks::create_hook, hooks::list_hooks))
        .routes(routes!(hooks::revoke_hook))
        .routes(routes!(hooks::post_via_hook))
        .routes(routes!(
            endpoints::create_endpoint,
            endpoints::list_endpoints
        ))
        .routes(routes!(endpoints::revoke_endpoint))
        .routes(routes!(endpoints::rotate_endpoint_secret))
        .routes(routes!(endpoints::deliveries))
        .routes(routes!(endpoints::retry_delivery))
        .routes(routes!(governance::retention, governance::set_retention))
        .routes(routes!(governance::set_conversation_retention))
        .routes(routes!(governance::place_hold, governance::holds))
        .routes(routes!(governance::release_hold))
        .routes(routes!(exports::start_export, exports::list_exports))
        .routes(routes!(exports::get_export))
        .routes(routes!(exports::download_export))
        .routes(routes!(web::demo_info))
        .routes(routes!(web::demo_sign_in))
}

/// The routes and their document, with the answers every JSON body may
/// get added to the document.
fn routes_and_document() -> (Router<Arc<Services>>, utoipa::openapi::OpenApi) {
    let (router, mut api) = api_router().split_for_parts();
    document_body_errors(&mut api);
    (router, api)
}

/// Every operation that reads a JSON body ([`extract::ApiJson`]) may
/// answer 413 `payload_too_large` (over `http.max_body_bytes`) and 415
/// `unsupported_media_type` (no `Content-Type: application/json`): added
/// here once, so that no operation's annotation can forget them.
fn document_body_errors(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let reads_json = operation
                .request_body
                .as_ref()
                .is_some_and(|body| body.content.contains_key("application/json"));
            if !reads_json {
                continue;
            }
            let responses = &mut operation.responses.responses;
            responses
                .entry("413".to_owned())
                .or_insert_with(|| error("`payload_too_large`").into());
            responses.entry("415".to_owned()).or_insert_with(|| {
                error("`unsupported_media_type`: the body must be sent with `Content-Type: application/json`")
                    .into()
            });
        }
    }
}

/// The OpenAPI 3 document of every route, generated from the handlers.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_document().1
}

/// The whole HTTP application. Tests may call it without a server.
pub fn app(services: Arc<Services>) -> Router {
    let (router, api) = routes_and_document();
    let max_body = services.config.http.max_body_bytes;
    router
        .route("/api/v1/ws", axum::routing::get(realtime::upgrade))
        .route("/", axum::routing::get(web::index))
        .route("/web/{file}", axum::routing::get(web::asset))
        .fallback(|| async { Error::NoRoute })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(axum::Extension(Arc::new(api)))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track_requests))
        .layer(middleware::from_fn(bearer_challenge))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &Request| {
                // tower-http's own target, so that `tower_http=debug`
                // still shows the requests.
                tracing::debug_span!(
                    target: "tower_http::trace::make_span",
                    "request",
                    method = %request.method(),
                    uri = %redacted_uri(request.uri()),
                    version = ?request.version(),
                )
            }),
        )
        .with_state(services)
}

/// Query parameters whose values may be logged; every other value is
/// replaced by `REDACTED` in the request log: `token` (a user token),
/// `signature` (a signed file URL), and whatever a client adds.
const LOGGED_QUERY_PARAMETERS: &[&str] = &["since", "expires", "external_id"];

/// The request's path and query as logged: query values other than
/// `LOGGED_QUERY_PARAMETERS` are redacted, so that no bearer secret
/// reaches the log.
#[must_use]
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if LOGGED_QUERY_PARAMETERS.contains(&name) => pair.to_owned(),
            Some((name, _)) => format!("{name}=REDACTED"),
            None if LOGGED_QUERY_PARAMETERS.contains(&pair) => pair.to_owned(),
            None => "REDACTED".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{}?{query}", uri.path())
}

/// A 401 to a request that carried a bearer token challenges for a bearer
/// token only (RFC 6750, `error="invalid_token"`): a `Basic` challenge
/// would make a browser's `fetch` open a password prompt (or, headless,
/// wait for one) instead of letting the page handle the answer.
async fn bearer_challenge(request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    let mut response = next.run(request).await;
    if bearer && response.status() == axum::http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(
                "Bearer realm=\"confer\", error=\"invalid_token\"",
            ),
        );
    }
    response
}

/// Counts every request by method, route template and status, and records
/// its latency (`http_requests_total`, `http_request_duration_seconds`).
async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await.into_response();
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
