//! WHIP and WHEP (RFC 9725 offer/answer over HTTP) and Prometheus metrics
//! for the standalone `sfu`.
//!
//! * `POST /whip/{room}` with `Content-Type: application/sdp` and an offer
//!   that sends media → `201 Created`, the answer, and
//!   `Location: /whip/{room}/{participant}`.
//! * `POST /whep/{room}` likewise with an offer that receives media.
//! * `DELETE` on the `Location` leaves. Trickle ICE (`PATCH`) is not
//!   supported (`405`): the SFU is ICE-lite and its answer carries its only
//!   candidate.
//! * `GET /metrics`: Prometheus text, rendered from the workers' counters
//!   (per participant, and per worker: liveness and the datagrams dropped
//!   at ingress).
//! * `GET /healthz`: `200 ok` while every worker runs, `503` naming the
//!   dead or stalled ones otherwise; answered from atomics, no round trip.
//!
//! * `POST /control`, `GET /control/events?after=N`, `GET /control/health`
//!   and `GET /control/stats`: the control API signalling drives this SFU
//!   with from another process ([`crate::wire`]).
//!
//! With a token configured every WHIP/WHEP and control request needs
//! `Authorization: Bearer <token>` (`401` otherwise), and so does
//! `/metrics` unless `metrics_open` is set (its labels name every room and
//! participant, and rendering it asks every worker).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::control::{SfuControl, SfuError, SfuHealth};
use crate::engine::{ParticipantStats, Role};
use crate::ids::{ParticipantId, RoomId};

/// Shared state of the HTTP front.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The SFU.
    pub sfu: Arc<dyn SfuControl>,
    /// Bearer token required for WHIP/WHEP, if any.
    pub token: Option<String>,
    /// `/metrics` without the token (`SfuConfig::metrics_open`).
    pub metrics_open: bool,
}

/// What a node's relay carried (the cascade), from its health.
fn write_relay(out: &mut String, health: &SfuHealth) {
    let r = health.relayed;
    for (name, help, value) in [
        (
            "sfu_relay_sent_total",
            "media datagrams sent to other nodes",
            r.sent,
        ),
        (
            "sfu_relay_received_total",
            "media datagrams received from other nodes",
            r.received,
        ),
        (
            "sfu_relay_dropped_total",
            "relay messages dropped (full queue, peer not connected, room not here)",
            r.dropped,
        ),
        (
            "sfu_relay_malformed_total",
            "relay datagrams that could not be read",
            r.malformed,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// The router.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        .route(
            "/whip/{room}/{participant}",
            delete(leave).patch(no_trickle),
        )
        .route(
            "/whep/{room}/{participant}",
            delete(leave).patch(no_trickle),
        )
        .route("/control", post(control))
        .route("/control/events", get(control_events))
        .route("/control/health", get(control_health))
        .route("/control/stats", get(control_stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"error\":{{\"code\":\"{code}\",\"message\":{message:?}}}}}"),
    )
        .into_response()
}

fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            // Constant-time enough for a static token: compare every byte.
            given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

async fn offer(
    state: HttpState,
    headers: HeaderMap,
    room: String,
    role: Role,
    body: Bytes,
    kind: &str,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
    }
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/sdp"));
    if !sdp_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/sdp",
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_offer",
            "the offer is not UTF-8",
        );
    };
    let room_id = RoomId::from(room.as_str());
    match state.sfu.join(&room_id, role, offer).await {
        Ok(joined) => (
            StatusCode::CREATED,
            [
                (header::CONTENT_TYPE, "application/sdp".to_owned()),
                (
                    header::LOCATION,
                    format!("/{kind}/{room}/{}", joined.participant),
                ),
            ],
            joined.answer,
        )
            .into_response(),
        Err(SfuError::Join(e)) => error(StatusCode::BAD_REQUEST, "bad_offer", &e.to_string()),
        Err(SfuError::Overloaded) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the SFU is overloaded",
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}

async fn whip(
    State(state): State<HttpState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, headers, room, Role::Publish, body, "whip").await
}

async fn whep(
    State(state): State<HttpState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    offer(state, headers, room, Role::Subscribe, body, "whep").await
}

async fn leave(
    State(state): State<HttpState>,
    Path((_room, participant)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
    }
    let Ok(id) = participant.parse::<ParticipantId>() else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    match state.sfu.leave(id).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(SfuError::UnknownParticipant) => {
            error(StatusCode::NOT_FOUND, "not_found", "no such session")
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}

async fn no_trickle() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle_not_supported",
        "the SFU is ICE-lite; its answer carries its candidate",
    )
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn control(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match serde_json::from_slice::<crate::wire::ControlCommand>(&body) {
        Ok(command) => json(&crate::wire::execute(state.sfu.as_ref(), command).await),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_command", &e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn control_events(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(After { after }): Query<After>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let mut stream = state.sfu.events(after);
    let (events, missed) = match tokio::time::timeout(crate::wire::EVENTS_WAIT, stream.next()).await
    {
        Ok(Ok(events)) => (events, None),
        Ok(Err(missed)) => (Vec::new(), Some(missed)),
        Err(_) => (Vec::new(), None),
    };
    json(&crate::wire::EventsPage {
        events,
        missed,
        last: state.sfu.last_event(),
    })
}

async fn control_health(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    json(&state.sfu.health())
}

async fn control_stats(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match state.sfu.stats().await {
        Ok(stats) => json(&stats),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    match state.sfu.health().problem() {
        None => "ok".into_response(),
        Some(problem) => error(StatusCode::SERVICE_UNAVAILABLE, "degraded", &problem),
    }
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if !state.metrics_open && !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
    }
    let Ok(stats) = state.sfu.stats().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "workers not answering",
        );
    };
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE sfu_worker_participants gauge");
    for (i, w) in stats.workers.iter().enumerate() {
        let _ = writeln!(out, "sfu_worker_participants{{worker=\"{i}\"}} {}", w.len());
    }
    write_worker_health(&mut out, &stats.health);
    write_relay(&mut out, &stats.health);
    type Counter = fn(&ParticipantStats) -> u64;
    let counters: [(&str, &str, Counter); 7] = [
        (
            "sfu_rx_packets_total",
            "RTP packets received from the participant",
            |p| p.rx.packets,
        ),
        (
            "sfu_rx_bytes_total",
            "RTP payload bytes received from the participant",
            |p| p.rx.bytes,
        ),
        (
            "sfu_tx_packets_total",
            "RTP packets forwarded to the participant",
            |p| p.tx.packets,
        ),
        (
            "sfu_tx_bytes_total",
            "RTP payload bytes forwarded to the participant",
            |p| p.tx.bytes,
        ),
        (
            "sfu_layer_drops_total",
            "packets not forwarded because the subscriber is on another layer",
            |p| p.layer_drops,
        ),
        (
            "sfu_keyframe_requests_total",
            "keyframe requests sent to the publisher",
            |p| p.keyframe_requests,
        ),
        (
            "sfu_nacks_total",
            "NACKs received from the participant",
            |p| p.nacks_in,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, w) in stats.workers.iter().enumerate() {
            for p in w {
                let _ = writeln!(out, "{name}{{worker=\"{i}\",{}}} {}", labels(p), value(p));
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sfu_loss_ratio latest loss fraction reported by RTCP, by direction\n# TYPE sfu_loss_ratio gauge"
    );
    for w in &stats.workers {
        for p in w {
            for (direction, loss) in [("in", p.loss_in), ("out", p.loss_out)] {
                if let Some(loss) = loss {
                    let _ = writeln!(
                        out,
                        "sfu_loss_ratio{{{},direction=\"{direction}\"}} {loss}",
                        labels(p)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sfu_track_rx_packets_total RTP packets received per published track and layer\n# TYPE sfu_track_rx_packets_total counter"
    );
    let _ = writeln!(
        out,
        "# HELP sfu_track_rx_bytes_total RTP payload bytes received per published track and layer\n# TYPE sfu_track_rx_bytes_total counter"
    );
    for w in &stats.workers {
        for p in w {
            for t in &p.tracks {
                for (layer, c) in t.layers.iter().enumerate().filter(|(_, c)| c.packets > 0) {
                    let track_labels = format!(
                        "{},mid=\"{}\",kind=\"{}\",layer=\"{layer}\"",
                        labels(p),
                        escape(&t.mid),
                        t.kind
                    );
                    let _ = writeln!(
                        out,
                        "sfu_track_rx_packets_total{{{track_labels}}} {}",
                        c.packets
                    );
                    let _ = writeln!(
                        out,
                        "sfu_track_rx_bytes_total{{{track_labels}}} {}",
                        c.bytes
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "# TYPE sfu_subscriber_layer gauge");
    for w in &stats.workers {
        for p in w {
            for (slot, layer) in p.layers.iter().enumerate() {
                if let Some(layer) = layer {
                    let _ = writeln!(
                        out,
                        "sfu_subscriber_layer{{{},slot=\"{slot}\"}} {layer}",
                        labels(p)
                    );
                }
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Per worker: up or not, and what became of the datagrams it received.
/// Shared with signalling's `/metrics` (the same names).
pub fn write_worker_health(out: &mut String, health: &crate::control::SfuHealth) {
    let _ = writeln!(
        out,
        "# HELP sfu_worker_up 1 while the worker thread runs (0: it died; restart the process)\n# TYPE sfu_worker_up gauge"
    );
    for (i, w) in health.workers.iter().enumerate() {
        let _ = writeln!(out, "sfu_worker_up{{worker=\"{i}\"}} {}", u8::from(w.alive));
    }
    let _ = writeln!(
        out,
        "# HELP sfu_ingress_datagrams_total UDP datagrams received by the worker\n# TYPE sfu_ingress_datagrams_total counter"
    );
    for (i, w) in health.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "sfu_ingress_datagrams_total{{worker=\"{i}\"}} {}",
            w.ingress.datagrams
        );
    }
    let _ = writeln!(
        out,
        "# HELP sfu_ingress_dropped_total datagrams dropped at ingress: malformed, unmatched (no participant), rejected (by the participant's session)\n# TYPE sfu_ingress_dropped_total counter"
    );
    for (i, w) in health.workers.iter().enumerate() {
        for (reason, n) in [
            ("malformed", w.ingress.malformed),
            ("unmatched", w.ingress.unmatched),
            ("rejected", w.ingress.rejected),
        ] {
            let _ = writeln!(
                out,
                "sfu_ingress_dropped_total{{worker=\"{i}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
}

/// Writes the nodes of a media cluster (`sfu_node_*` gauges, one series
/// per node): up, draining, sessions, rooms placed, datagrams per second,
/// CPU share and headroom. Nothing for a single SFU.
pub fn write_node_reports(out: &mut String, nodes: &[crate::control::NodeReport]) {
    if nodes.is_empty() {
        return;
    }
    type Gauge = fn(&crate::control::NodeReport) -> f64;
    let gauges: [(&str, &str, Gauge); 7] = [
        ("sfu_node_up", "1 while the SFU node answers", |n| {
            f64::from(u8::from(n.up))
        }),
        (
            "sfu_node_draining",
            "1 for a node configured to take no new room",
            |n| f64::from(u8::from(n.draining)),
        ),
        ("sfu_node_participants", "sessions on the node", |n| {
            #[allow(clippy::cast_precision_loss)]
            let p = n.participants as f64;
            p
        }),
        (
            "sfu_node_rooms",
            "rooms this signalling node placed on it",
            |n| {
                #[allow(clippy::cast_precision_loss)]
                let r = n.rooms as f64;
                r
            },
        ),
        (
            "sfu_node_packets_per_second",
            "datagrams the node received per second",
            |n| n.packets_per_second,
        ),
        (
            "sfu_node_cpu_ratio",
            "CPU the node used, as a share of its workers' cores",
            |n| n.cpu,
        ),
        (
            "sfu_node_headroom_ratio",
            "1 - load: new rooms go to the node with the most (0: full or down)",
            |n| n.headroom,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for node in nodes {
            let _ = writeln!(
                out,
                "{name}{{node=\"{}\"}} {}",
                escape(&node.url),
                value(node)
            );
        }
    }
}

/// `room="…",participant="…"`.
fn labels(p: &ParticipantStats) -> String {
    format!(
        "room=\"{}\",participant=\"{}\"",
        escape(&p.room.0),
        p.participant
    )
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
