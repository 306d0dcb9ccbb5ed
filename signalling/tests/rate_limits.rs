//! Rate limits through the real server: every limit of `[limits]` refuses
//! with `429 rate_limited` and `Retry-After` (REST) or an error frame with
//! `retry_after_ms` that leaves the connection open (WebSocket), counts
//! what it says it counts, and old outbox mail is deleted.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{App, TestServer, Ws, default_clock, expect_error, test_config};
use confer_signalling::SignallingConfig;
use confer_signalling::limits::{LimitsConfig, Rate};
use reqwest::{Response, StatusCode};
use serde_json::json;

/// A server whose limits are the defaults changed by `f`.
async fn server_with(f: impl FnOnce(&mut LimitsConfig)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config: SignallingConfig = test_config(dir.path());
    f(&mut config.limits);
    (TestServer::start_with(config, default_clock()).await, dir)
}

/// A `429 rate_limited` with a `Retry-After` of at least one second.
async fn expect_limited(response: Response) {
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

async fn request_code(server: &TestServer, email: &str) -> Response {
    server
        .post("/api/v1/registrations")
        .json(&json!({"email": email, "app_name": "ERP"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn code_mails_are_limited_per_address_and_per_client() {
    let (server, _dir) = server_with(|l| {
        l.code_requests_per_email = Rate::new(2, 3600);
        l.code_requests_per_ip = Rate::new(6, 3600);
    })
    .await;
    for _ in 0..2 {
        let r = request_code(&server, "a@example.com").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // The same address in other letters is the same address.
    expect_limited(request_code(&server, " A@Example.com").await).await;
    assert_eq!(server.outbox_len(), 2, "a refused request mails nothing");
    // Sign-in codes count against the same address.
    let r = server
        .post("/api/v1/subscriber/sessions")
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    expect_limited(r).await;
    // Other addresses from this client: the per-IP limit counts every
    // request, refused ones too (four so far), so two more fit.
    for email in ["b@example.com", "c@example.com"] {
        assert_eq!(
            request_code(&server, email).await.status(),
            StatusCode::ACCEPTED
        );
    }
    expect_limited(request_code(&server, "d@example.com").await).await;
    server.stop().await;
}

#[tokio::test]
async fn failed_confirmations_lock_an_address_and_a_new_code_does_not_reset_them() {
    // Wrong codes (not right ones) are what count.
    let (server, _dir) = server_with(|l| l.code_confirmations_per_email = Rate::new(3, 3600)).await;
    let confirm = |code: String| {
        server
            .post("/api/v1/registrations/confirm")
            .json(&json!({"email": "e@example.com", "app_name": "ERP", "code": code}))
            .send()
    };
    server.request_code("e@example.com", "ERP").await;
    let right = server.last_code("e@example.com");
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    // Three failures are within the rate; the fourth locks the address.
    for _ in 0..4 {
        let r = confirm(wrong.to_owned()).await.unwrap();
        expect_error(r, StatusCode::FORBIDDEN, "access_denied").await;
    }
    // A fresh code does not give fresh tries: even the right one waits.
    server.request_code("e@example.com", "ERP").await;
    let right = server.last_code("e@example.com");
    expect_limited(confirm(right).await.unwrap()).await;
    server.stop().await;
}

#[tokio::test]
async fn tokens_and_wrong_secrets_are_limited_per_application_and_client() {
    let (server, _dir) = server_with(|l| {
        l.tokens_per_app = Rate::new(2, 60);
        l.basic_failures_per_app = Rate::new(2, 60);
        l.basic_failures_per_ip = Rate::new(5, 60);
    })
    .await;
    let app = server.register("t@example.com", "ERP").await;
    let token = |app: &App, secret: &str| {
        server
            .post("/api/v1/tokens")
            .basic_auth(&app.id, Some(secret))
            .json(&json!({"external_id": "u1", "name": "U"}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            token(&app, &app.secret).await.unwrap().status(),
            StatusCode::OK
        );
    }
    expect_limited(token(&app, &app.secret).await.unwrap()).await;

    // Wrong secrets: two are answered 401, then the application id's
    // wrong secrets are answered 429 — and its right secret still works
    // (anyone knowing the id must not be able to lock it out).
    let other = server.register("o@example.com", "Other").await;
    let users = |id: &str, secret: &str| {
        server
            .get("/api/v1/users?external_id=x")
            .basic_auth(id, Some(secret))
            .send()
    };
    for _ in 0..2 {
        let r = users(&other.id, "wrong").await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    expect_limited(users(&other.id, "wrong").await.unwrap()).await;
    let r = users(&other.id, &other.secret).await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // Per client: failures spread over made-up application ids add up
    // (three so far from this address, the limit is five): past it a
    // wrong secret of any id is answered 429.
    for _ in 0..2 {
        let r = users(&uuid_like(), "wrong").await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let third = server.register("p@example.com", "Third").await;
    expect_limited(users(&third.id, "wrong").await.unwrap()).await;
    let r = users(&third.id, &third.secret).await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    server.stop().await;
}

fn uuid_like() -> String {
    format!("00000000-0000-4000-8000-{:012x}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % (1 << 40),
    )
    .unwrap()
}

#[tokio::test]
async fn websocket_connections_are_limited_per_user() {
    let (server, _dir) = server_with(|l| l.ws_connects_per_user = Rate::new(2, 60)).await;
    let app = server.register("w@example.com", "ERP").await;
    let (token, _) = common::user_token(&server, &app, "u1", &[]).await;
    let _a = Ws::connect(&server, &token, None).await;
    let _b = Ws::connect(&server, &token, None).await;
    let url = format!(
        "{}/api/v1/ws?token={token}",
        server.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(response.headers().contains_key("retry-after"));
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("rate_limited"), "{body}");
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let (other, _) = common::user_token(&server, &app, "u2", &[]).await;
    let _c = Ws::connect(&server, &other, None).await;
    server.stop().await;
}

#[tokio::test]
async fn frames_over_their_limit_get_an_error_and_the_connection_stays_open() {
    let (server, _dir) = server_with(|l| {
        l.typing_per_connection = Rate::new(2, 60);
        l.writes_per_connection = Rate::new(3, 60);
    })
    .await;
    let app = server.register("f@example.com", "ERP").await;
    let (token, _) = common::user_token(&server, &app, "u1", &[]).await;
    let mut ws = Ws::connect(&server, &token, None).await;
    let created = ws
        .request(json!({"type": "create_conversation", "title": "Limits"}))
        .await;
    let conversation = created["conversation"]["id"].clone();
    assert!(conversation.is_string(), "{created}");
    for _ in 0..2 {
        let r = ws
            .request(json!({"type": "typing", "conversation_id": conversation}))
            .await;
        assert_ne!(r["code"], "rate_limited", "{r}");
    }
    let r = ws
        .request(json!({"type": "typing", "conversation_id": conversation}))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert!(r["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{r}");
    // Writes have their own limit: create_conversation was one, two
    // sends fit, the third is refused.
    for i in 0..2 {
        let r = ws
            .request(json!({"type": "send", "conversation_id": conversation,
                "client_id": format!("c{i}"), "text": "hi"}))
            .await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let r = ws
        .request(json!({"type": "send", "conversation_id": conversation,
            "client_id": "c3", "text": "hi"}))
        .await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    // Reads still work: the connection is open and answers.
    let r = ws.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    // The refusals are the documented error frame.
    let schemas = common::protocol_schemas("### Server frames");
    let errors: Vec<_> = ws
        .received
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .cloned()
        .collect();
    assert_eq!(errors.len(), 2);
    common::check_frames(&schemas, &errors, "server");
    server.stop().await;
}

#[tokio::test]
async fn outbox_mail_older_than_its_retention_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let old = outbox.join("old.eml");
    let fresh = outbox.join("fresh.eml");
    std::fs::write(&old, "old").unwrap();
    std::fs::write(&fresh, "fresh").unwrap();
    let status = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(status.success());
    let server = TestServer::start_with(test_config(dir.path()), default_clock()).await;
    // The first sweep runs as the server starts.
    for _ in 0..50 {
        if !old.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!old.exists(), "a two-day-old mail is deleted");
    assert!(fresh.exists(), "a fresh mail is kept");
    server.stop().await;
}

#[tokio::test]
async fn every_frame_counts_even_one_that_cannot_be_read() {
    let (server, _dir) = server_with(|l| l.frames_per_connection = Rate::new(3, 60)).await;
    let app = server.register("m@example.com", "ERP").await;
    let (token, _) = common::user_token(&server, &app, "u1", &[]).await;
    let mut ws = Ws::connect(&server, &token, None).await;
    for _ in 0..3 {
        ws.send_text("{not json".to_owned()).await;
        let f = ws.frame().await;
        assert_eq!(f["code"], "malformed_json", "{f}");
    }
    let r = ws.request(json!({"type": "ping"})).await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    server.stop().await;
}
