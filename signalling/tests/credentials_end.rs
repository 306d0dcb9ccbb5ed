//! Credentials that end, end sessions: a WebSocket session closes with
//! 4003 when its user token expires, when its application's secret is
//! rotated (the bot's session), and when `signalling admin lock-user`
//! locks the user from another process.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, Ws, default_clock, test_config};
use serde_json::Value;
use tokio::process::Command;

/// Waits (up to `within`) for the close frame and returns its text.
async fn closed(ws: &mut Ws, within: Duration) -> String {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < within, "no close within {within:?}");
        // `frame` waits 5 s at most per frame; pings are skipped.
        let f: Value = ws.frame().await;
        if f["type"] == "closed" {
            return f["close"].as_str().unwrap_or_default().to_owned();
        }
    }
}

/// Connects with `token` and expects a close 4003 `expired` no sooner than
/// `at_least` (at the credentials' end, not at once) and within 8 s.
async fn closes_expired_after(server: &TestServer, token: &str, at_least: Duration) {
    let started = Instant::now();
    let mut ws = Ws::connect(server, token, None).await;
    let close = closed(&mut ws, Duration::from_secs(8)).await;
    assert!(
        close.contains("4003") && close.contains("expired"),
        "{close}"
    );
    assert!(
        started.elapsed() >= at_least,
        "closed at the credentials' end, not at once: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_session_closes_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.tokens.leeway_secs = 0;
    let server = TestServer::start_with(config, default_clock()).await;
    let app = server.register("x@example.com", "ERP").await;
    let (token, _) = common::user_token(&server, &app, "u1", &[]).await;
    // The token is valid for `ttl_secs` (its `exp` in whole seconds, so up
    // to one less); let all but three seconds pass.
    let ttl = server.services.config.tokens.ttl_secs;
    common::advance(&server, ttl - 3);
    closes_expired_after(&server, &token, Duration::from_millis(1500)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bot_session_closes_when_its_secret_is_rotated() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("r@example.com", "ERP").await;
    let mut bot = Ws::connect_bot(&server, &app).await;
    let r = server
        .post(&format!("/api/v1/applications/{}/secret", app.id))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let close = closed(&mut bot, Duration::from_secs(20)).await;
    assert!(
        close.contains("4003") && close.contains("revoked"),
        "{close}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_lock_from_the_admin_command_closes_the_users_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(test_config(dir.path()), default_clock()).await;
    let app = server.register("l@example.com", "ERP").await;
    let (token, user) = common::user_token(&server, &app, "u1", &[]).await;
    let mut ws = Ws::connect(&server, &token, None).await;
    let out = Command::new(env!("CARGO_BIN_EXE_signalling"))
        .arg("admin")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["lock-user", "--app", &app.id, "--user", &user])
        .env_remove("CONFER_CONFIG")
        // (Awaited, not blocking: the server runs on this test's one
        // thread, and a write it has begun must be able to commit while
        // the command waits for SQLite's lock.)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let close = closed(&mut ws, Duration::from_secs(6)).await;
    assert!(
        close.contains("4003") && close.contains("revoked"),
        "{close}"
    );
    // And the token no longer opens a session.
    let url = format!(
        "{}/api/v1/ws?token={token}",
        server.base.replace("http://", "ws://")
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_session_on_a_token_of_the_previous_secret_closes_when_its_grace_ends() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("g@example.com", "ERP").await;
    let (token, _) = common::user_token(&server, &app, "u1", &[]).await;
    let r = server
        .post(&format!("/api/v1/applications/{}/secret", app.id))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    // The old token is still accepted for the grace period; let all but
    // three seconds of it pass (the token itself lives longer).
    let grace = server.services.config.tokens.rotation_grace_secs;
    assert!(grace < server.services.config.tokens.ttl_secs);
    common::advance(&server, grace - 3);
    closes_expired_after(&server, &token, Duration::from_millis(2500)).await;
    server.stop().await;
}
