//! Operational routes: health, metrics, the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};

use crate::health::HealthReport;
use crate::server::Services;

/// Status of every component; 503 when one is down. Answered from a check
/// at most 5 s old (see [`crate::health::HealthCache`]).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Every component is up", body = HealthReport),
        (status = 503, description = "At least one component is down", body = HealthReport),
    ))]
pub async fn healthz(State(services): State<Arc<Services>>) -> (StatusCode, Json<HealthReport>) {
    let report = services.health.report(&services).await;
    let status = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(HealthReport::clone(&report)))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(services): State<Arc<Services>>) -> impl IntoResponse {
    let mut out = services.metrics.render();
    // The embedded SFU's workers: up or not, datagrams dropped at ingress
    // (read from atomics, no round trip to the workers).
    confer_sfu::http::write_worker_health(&mut out, &services.sfu.health());
    // A media cluster's nodes: up, load, headroom.
    confer_sfu::http::write_node_reports(&mut out, &services.sfu.nodes());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// This OpenAPI 3 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json(
    Extension(api): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*api).clone())
}
