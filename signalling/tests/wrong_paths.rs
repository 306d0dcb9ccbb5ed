//! Every wrong path of registration and authentication answers with its
//! documented status and error code, and writes nothing.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{App, TestServer, expect_error, expect_refused};
use reqwest::StatusCode;
use serde_json::json;

async fn confirm(server: &TestServer, email: &str, code: &str) -> reqwest::Response {
    server
        .post("/api/v1/registrations/confirm")
        .json(&json!({"email": email, "app_name": "ERP", "code": code}))
        .send()
        .await
        .unwrap()
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn malformed_email_is_refused_and_nothing_is_mailed() {
    let (server, _dir) = TestServer::start().await;
    for email in ["", "not-an-email", "a@", "@b.c", "a b@c.d", "a@b@c.d"] {
        expect_refused(
            server
                .post("/api/v1/registrations")
                .json(&json!({"email": email, "app_name": "ERP"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    expect_refused(
        server
            .post("/api/v1/registrations")
            .json(&json!({"email": "a@example.com", "app_name": "  "})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(server.outbox_len(), 0);
    assert_eq!(server.counts().await, (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn wrong_code_and_wrong_email_are_the_same_access_denied() {
    let (server, _dir) = TestServer::start().await;
    server.request_code("a@example.com", "ERP").await;
    let code = server.last_code("a@example.com");

    let wrong_code = expect_error(
        confirm(&server, "a@example.com", &wrong(&code)).await,
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    let wrong_email = expect_error(
        confirm(&server, "b@example.com", &code).await,
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    assert_eq!(wrong_code, wrong_email, "no hint which one was wrong");
    assert_eq!(server.counts().await, (0, 0));

    // A code that is not 6 digits is malformed, not a try.
    let r = confirm(&server, "a@example.com", "12ab").await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    // The right code still works (1 of 5 tries spent).
    assert_eq!(
        confirm(&server, "a@example.com", &code).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(server.counts().await, (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let (server, _dir) = TestServer::start().await;
    server.request_code("a@example.com", "ERP").await;
    let code = server.last_code("a@example.com");
    common::advance(&server, 15 * 60 + 1);
    expect_error(
        confirm(&server, "a@example.com", &code).await,
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    assert_eq!(server.counts().await, (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn the_sixth_try_is_refused_even_with_the_right_code() {
    let (server, _dir) = TestServer::start().await;
    server.request_code("a@example.com", "ERP").await;
    let code = server.last_code("a@example.com");
    for _ in 0..5 {
        expect_error(
            confirm(&server, "a@example.com", &wrong(&code)).await,
            StatusCode::FORBIDDEN,
            "access_denied",
        )
        .await;
    }
    expect_error(
        confirm(&server, "a@example.com", &code).await,
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    assert_eq!(server.counts().await, (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn a_code_is_single_use() {
    let (server, _dir) = TestServer::start().await;
    server.request_code("a@example.com", "ERP").await;
    let code = server.last_code("a@example.com");
    assert_eq!(
        confirm(&server, "a@example.com", &code).await.status(),
        StatusCode::CREATED
    );
    expect_error(
        confirm(&server, "a@example.com", &code).await,
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    assert_eq!(server.counts().await, (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn a_new_code_replaces_the_old_one() {
    let (server, _dir) = TestServer::start().await;
    server.request_code("a@example.com", "ERP").await;
    let first = server.last_code("a@example.com");
    server.request_code("a@example.com", "ERP").await;
    let second = server.last_code("a@example.com");
    if first != second {
        expect_error(
            confirm(&server, "a@example.com", &first).await,
            StatusCode::FORBIDDEN,
            "access_denied",
        )
        .await;
    }
    assert_eq!(
        confirm(&server, "a@example.com", &second).await.status(),
        StatusCode::CREATED
    );
    server.stop().await;
}

#[tokio::test]
async fn sign_in_for_an_unknown_address_looks_the_same_and_mails_nothing() {
    let (server, _dir) = TestServer::start().await;
    let r = server
        .post("/api/v1/subscriber/sessions")
        .json(&json!({"email": "nobody@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(server.outbox_len(), 0);
    expect_refused(
        server
            .post("/api/v1/subscriber/sessions/confirm")
            .json(&json!({"email": "nobody@example.com", "code": "123456"})),
        StatusCode::FORBIDDEN,
        "access_denied",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_application_credentials() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("a@example.com", "ERP").await;
    let body = json!({"external_id": "u1", "name": "Ann"});
    type Case<'a> = (Option<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (Some((&app.id, "wrong secret")), None),
        (
            Some(("00000000-0000-0000-0000-000000000000", &app.secret)),
            None,
        ),
        (Some(("not-a-uuid", &app.secret)), None),
        (None, None),
        (None, Some("Basic !!!not-base64")),
        (None, Some("Digest abc")),
    ];
    for (basic, raw) in cases {
        let mut req = server.post("/api/v1/tokens").json(&body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        if let Some(raw) = raw {
            req = req.header("authorization", raw);
        }
        let r = req.send().await.unwrap();
        assert!(r.headers().contains_key("www-authenticate"));
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // A refused bearer token is challenged for a bearer token only, so
    // that a browser's fetch gets the answer instead of a password prompt.
    let r = server
        .get("/api/v1/me")
        .bearer_auth("expired")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"confer\", error=\"invalid_token\""
    );
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A user token is not an application credential.
    let token = server.token(&app, "u1", "Ann").await;
    expect_refused(
        server
            .post("/api/v1/tokens")
            .bearer_auth(token["token"].as_str().unwrap())
            .json(&body),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(
        server
            .services
            .store
            .user_by_external_id(app.id.parse().unwrap(), "u2")
            .await
            .unwrap()
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn application_a_cannot_touch_application_b() {
    let (server, _dir) = TestServer::start().await;
    let a = server.register("a@example.com", "A").await;
    let b = server.register("b@example.com", "B").await;
    let b_user = server.token(&b, "ub", "B user").await;
    let b_user_id = b_user["user_id"].as_str().unwrap();
    let basic =
        |req: reqwest::RequestBuilder, app: &App| req.basic_auth(&app.id, Some(&app.secret));

    for req in [
        basic(server.get(&format!("/api/v1/applications/{}", b.id)), &a),
        basic(server.patch(&format!("/api/v1/applications/{}", b.id)), &a)
            .json(&json!({"name": "pwned"})),
        basic(server.delete(&format!("/api/v1/applications/{}", b.id)), &a),
        basic(
            server.post(&format!("/api/v1/applications/{}/secret", b.id)),
            &a,
        ),
        basic(server.get(&format!("/api/v1/users/{b_user_id}")), &a),
        basic(server.post(&format!("/api/v1/users/{b_user_id}/lock")), &a),
        basic(server.get("/api/v1/users?external_id=ub"), &a),
    ] {
        expect_error(
            req.send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    // A's subscriber session sees nothing of B either.
    let session = server.sign_in("a@example.com").await;
    expect_refused(
        server
            .delete(&format!("/api/v1/applications/{}", b.id))
            .bearer_auth(&session),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // A token signed by A that claims to be issued by B is refused.
    let a_token = server.token(&a, "ua", "A user").await;
    let forged = {
        let token = a_token["token"].as_str().unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["iss"] = json!(b.id);
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        parts.join(".")
    };
    expect_refused(
        server.get("/api/v1/me").bearer_auth(forged),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Nothing of B changed.
    let b_app = server
        .services
        .store
        .application(b.id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_app.name, "B");
    assert!(b_app.unregistered_at.is_none());
    let user = server
        .services
        .store
        .user(b.id.parse().unwrap(), b_user_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!user.locked);
    server.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_their_codes_and_write_nothing() {
    let (server, _dir) = TestServer::start().await;
    expect_refused(
        server
            .post("/api/v1/registrations")
            .header("content-type", "application/json")
            .body("{\"email\": "),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;

    let body = expect_refused(
        server
            .post("/api/v1/registrations")
            .json(&json!({"email": "a@example.com", "app_name": "ERP", "admin": true})),
        StatusCode::BAD_REQUEST,
        "unknown_field",
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("admin"));

    expect_refused(
        server
            .post("/api/v1/registrations")
            .json(&json!({"email": "a@example.com"})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    expect_refused(
        server
            .post("/api/v1/registrations")
            .header("content-type", "text/plain")
            .body(r#"{"email": "a@example.com", "app_name": "ERP"}"#),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let huge = "я".repeat(server.services.config.http.max_body_bytes);
    expect_refused(
        server
            .post("/api/v1/registrations")
            .json(&json!({"email": "a@example.com", "app_name": huge})),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    let r = server.get("/api/v1/nothing-here").send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = server.delete("/api/v1/registrations").send().await.unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    assert_eq!(server.outbox_len(), 0);
    assert_eq!(server.counts().await, (0, 0));

    // A token request with an oversized or empty external id.
    let app = server.register("a@example.com", "ERP").await;
    for body in [
        json!({"external_id": "", "name": "Ann"}),
        json!({"external_id": "x".repeat(300), "name": "Ann"}),
        json!({"external_id": "u1", "name": "Ann", "email": "nope"}),
    ] {
        expect_refused(
            server
                .post("/api/v1/tokens")
                .basic_auth(&app.id, Some(&app.secret))
                .json(&body),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let users = server
        .services
        .store
        .user_by_external_id(app.id.parse().unwrap(), "u1")
        .await
        .unwrap();
    assert!(users.is_none());
    server.stop().await;
}

#[tokio::test]
async fn bad_user_tokens() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("a@example.com", "ERP").await;
    let token = server.token(&app, "u1", "Ann").await;
    let token = token["token"].as_str().unwrap().to_owned();
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "not.a.jwt", "x"] {
        expect_refused(
            server.get("/api/v1/me").bearer_auth(bad),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let r = server.get("/api/v1/me").send().await.unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Expiry follows the server clock.
    common::advance(&server, server.services.config.tokens.ttl_secs + 1);
    expect_refused(
        server.get("/api/v1/me").bearer_auth(&token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_demo_is_offered_on_loopback_but_not_through_a_proxy() {
    let (server, _dir) = TestServer::start().await;
    let info = common::json(server.get("/api/v1/demo")).await;
    assert_eq!(info["enabled"], true);
    let r = server
        .post("/api/v1/demo/sessions")
        .json(&json!({"name": "Анна"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let proxied = common::json(
        server
            .get("/api/v1/demo")
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await;
    assert_eq!(proxied["enabled"], false);
    expect_refused(
        server
            .post("/api/v1/demo/sessions")
            .header("forwarded", "for=203.0.113.9")
            .json(&json!({"name": "Mallory"})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}
