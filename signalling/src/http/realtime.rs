//! `GET /api/v1/ws`: authenticate, upgrade, run a [`crate::ws`] session.
//!
//! Credentials, first found wins: the `Authorization` header (a user
//! token, or the application's HTTP Basic); the subprotocols
//! [`PROTOCOL`] and [`BEARER_PROTOCOL_PREFIX`]`<token>`, the one header a
//! browser can set (the server selects [`PROTOCOL`], never echoing the
//! token); `?token=` for older clients (redacted from the request log,
//! like every query value that is not known to be harmless).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;

use super::extract::Credentials;
use crate::error::Error;
use crate::messaging::Who;
use crate::server::Services;
use crate::ws::Admitted;

/// The subprotocol the server selects.
pub const PROTOCOL: &str = "confer.v1";
/// A subprotocol that carries a user token: `confer.bearer.<token>` (a
/// JWT's characters are all valid in a subprotocol name).
pub const BEARER_PROTOCOL_PREFIX: &str = "confer.bearer.";

/// Query of the WebSocket route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    /// The user token, for clients that neither set a header nor offer
    /// the bearer subprotocol. Discouraged: URLs end up in logs.
    #[serde(default)]
    pub token: Option<String>,
    /// The last event number the client has; it receives everything after.
    #[serde(default)]
    pub since: Option<u64>,
}

/// Authenticates the user and upgrades to a WebSocket session.
pub async fn upgrade(
    State(services): State<Arc<Services>>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&services, query, &parts).await {
        Err(e) => e.into_response(),
        Ok(admitted) => match ws {
            Err(e) => {
                Error::InvalidRequest(format!("not a WebSocket upgrade: {e}")).into_response()
            }
            Ok(ws) => ws
                .protocols([PROTOCOL])
                // Frames above 128 KiB are answered with `frame_too_large`
                // by the session; the transport reads up to 1 MiB (one
                // frame, or a message of several) so that it can. Beyond,
                // it refuses from the frame header, before buffering, and
                // the session closes with 1009.
                .max_message_size(crate::ws::MAX_READ_BYTES)
                .max_frame_size(crate::ws::MAX_READ_BYTES)
                // Small buffers: an idle connection should cost little
                // (the defaults reserve 128 KiB to read). Frames go out
                // as soon as they are written.
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0)
                .on_upgrade(move |socket| async move {
                    metrics::gauge!("ws_connections_open").increment(1.0);
                    let (sink, stream) = socket.split();
                    let ended = crate::ws::run(
                        sink,
                        stream,
                        services.messaging.clone(),
                        services.bus.clone(),
                        services.calls.clone(),
                        admitted,
                    )
                    .await;
                    metrics::gauge!("ws_connections_open").decrement(1.0);
                    tracing::debug!(?ended, "websocket session ended");
                })
                .into_response(),
        },
    }
}

async fn prepare(
    services: &Services,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    parts: &Parts,
) -> Result<Admitted, Error> {
    services
        .limits
        .ws_attempt(super::extract::client_ip(parts))?;
    let Query(query) = query.map_err(|e| Error::InvalidRequest(e.body_text()))?;
    let credentials = match Credentials::from_parts(parts)? {
        Some(credentials) => credentials,
        None => Credentials::Bearer(protocol_token(parts).or(query.token).ok_or(
            Error::Unauthorized(
                "user token required (Authorization: Bearer, the subprotocol \
                     confer.bearer.<token>, or ?token=)",
            ),
        )?),
    };
    let (caller, until) =
        super::extract::caller_until(services, credentials, super::extract::client_ip(parts))
            .await?;
    services.limits.ws_connect(caller.participant())?;
    let until = until
        .map(|at| Duration::from_millis(u64::try_from(at.0 - services.clock.now().0).unwrap_or(0)));
    let limits = match caller.who {
        Who::App => services.limits.bot_frames(),
        Who::User { .. } => services.limits.frames(),
    };
    // Only the bot's changes are recorded: a session of a user records
    // nothing.
    let audit = matches!(caller.who, Who::App)
        .then(|| services.audit_sink(super::extract::client_ip(parts)));
    Ok(Admitted {
        caller,
        since: query.since,
        until,
        limits,
        audit,
    })
}

/// The token of a `confer.bearer.<token>` subprotocol, if one is offered.
fn protocol_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}
