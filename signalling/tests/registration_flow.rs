//! The whole tenancy flow against a real server: register by e-mail code,
//! get a user token, read `/me`; several applications per subscriber;
//! unregistering one leaves the others working.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, expect_error, expect_refused};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn register_confirm_token_me() {
    let (server, _dir) = TestServer::start().await;
    let name = "Склад \"Север\" <&> 🚚 'ERP'";
    let app = server.register("Owner@Example.com", name).await;

    // The display name comes back exactly as typed.
    let r = server
        .get(&format!("/api/v1/applications/{}", app.id))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["name"], name);
    assert_eq!(view["status"], "registered");

    let token = server.token(&app, "employee-42", "Анна Петрова").await;
    let user_id = token["user_id"].as_str().unwrap().to_owned();
    let r = server
        .get("/api/v1/me")
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["user_id"], user_id.as_str());
    assert_eq!(me["external_id"], "employee-42");
    assert_eq!(me["name"], "Анна Петрова");
    assert_eq!(me["app_id"], app.id.as_str());

    // A second token for the same external id is the same user.
    let again = server.token(&app, "employee-42", "Анна Петрова").await;
    assert_eq!(again["user_id"], user_id.as_str());

    // Both mappings can be looked up by the application.
    let by_ext: Value = common::json(
        server
            .get("/api/v1/users?external_id=employee-42")
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    assert_eq!(by_ext["user_id"], user_id.as_str());
    let by_id: Value = common::json(
        server
            .get(&format!("/api/v1/users/{user_id}"))
            .basic_auth(&app.id, Some(&app.secret)),
    )
    .await;
    assert_eq!(by_id["external_id"], "employee-42");
    server.stop().await;
}

#[tokio::test]
async fn one_subscriber_owns_several_applications_and_unregistering_one_keeps_the_others() {
    let (server, _dir) = TestServer::start().await;
    let first = server.register("owner@example.com", "ERP").await;
    let second = server.register("owner@example.com", "ERP").await;
    assert_eq!(
        first.subscriber_id, second.subscriber_id,
        "same e-mail, same subscriber"
    );
    assert_ne!(first.id, second.id, "same name, different applications");

    let t1 = server.token(&first, "u1", "Ann").await;
    let t2 = server.token(&second, "u1", "Ann").await;
    assert_ne!(
        t1["user_id"], t2["user_id"],
        "users belong to one application"
    );

    // The subscriber signs in and sees both.
    let session = server.sign_in("owner@example.com").await;
    let list: Value = common::json(server.get("/api/v1/applications").bearer_auth(&session)).await;
    assert_eq!(list["applications"].as_array().unwrap().len(), 2);

    // The first application unregisters itself.
    let r = server
        .delete(&format!("/api/v1/applications/{}", first.id))
        .basic_auth(&first.id, Some(&first.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Its credentials and its users' tokens stop working...
    expect_refused(
        server
            .post("/api/v1/tokens")
            .basic_auth(&first.id, Some(&first.secret))
            .json(&json!({"external_id": "u1", "name": "Ann"})),
        StatusCode::FORBIDDEN,
        "application_unregistered",
    )
    .await;
    expect_refused(
        server
            .get("/api/v1/me")
            .bearer_auth(t1["token"].as_str().unwrap()),
        StatusCode::FORBIDDEN,
        "application_unregistered",
    )
    .await;

    // ...while the second one works as before.
    let r = server
        .get("/api/v1/me")
        .bearer_auth(t2["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.token(&second, "u2", "Bob").await;

    // The subscriber's list shows the first as unregistered.
    let list: Value = common::json(server.get("/api/v1/applications").bearer_auth(&session)).await;
    let statuses: Vec<_> = list["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["app_id"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(statuses.contains(&(first.id.clone(), "unregistered".to_owned())));
    assert!(statuses.contains(&(second.id.clone(), "registered".to_owned())));
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_renames_rotates_and_unregisters() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("boss@example.com", "Old name").await;
    let session = server.sign_in("boss@example.com").await;

    let r = server
        .patch(&format!("/api/v1/applications/{}", app.id))
        .bearer_auth(&session)
        .json(&json!({"name": "Новое имя"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "Новое имя");

    let old_token = server.token(&app, "u1", "Ann").await;
    let r = server
        .post(&format!("/api/v1/applications/{}/secret", app.id))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rotated: Value = r.json().await.unwrap();
    let new_secret = rotated["app_secret"].as_str().unwrap().to_owned();

    // Basic with the old secret stops at once; the new one works.
    expect_refused(
        server
            .get("/api/v1/applications")
            .basic_auth(&app.id, Some(&app.secret)),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let r = server
        .get("/api/v1/applications")
        .basic_auth(&app.id, Some(&new_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Old tokens live through the grace period, then end.
    let me = |token: String| {
        let server = &server;
        async move {
            server
                .get("/api/v1/me")
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let old = old_token["token"].as_str().unwrap().to_owned();
    assert_eq!(me(old.clone()).await.status(), StatusCode::OK);
    let grace = server.services.config.tokens.rotation_grace_secs;
    common::advance(&server, grace + 1);
    expect_error(me(old).await, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Signing out ends the session.
    let r = server
        .delete("/api/v1/subscriber/sessions/current")
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expect_refused(
        server.get("/api/v1/applications").bearer_auth(&session),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn an_application_mints_its_own_tokens_and_locks_users() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hkdf::Hkdf;
    use sha2::Sha256;

    let (server, _dir) = TestServer::start().await;
    let app = server
        .register("self@example.com", "Self-minting ERP")
        .await;

    // Exactly what docs/protocol.md tells an application to do.
    let hk = Hkdf::<Sha256>::new(Some(b"confer-user-token-v1"), app.secret.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(app.id.as_bytes(), &mut key).unwrap();
    let now = confer_signalling::ids::Clock::now(&*server.clock).as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": app.id, "aud": "confer", "sub": "ext-7", "name": "Иван",
        "email": "ivan@example.com", "iat": now, "exp": now + 600,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(signing_input.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    };
    let token = format!("{signing_input}.{signature}");

    // The first use provisions the user.
    let r = server
        .get("/api/v1/me")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["external_id"], "ext-7");
    assert_eq!(me["email"], "ivan@example.com");
    let user_id = me["user_id"].as_str().unwrap().to_owned();

    // Lock: the token is refused; unlock: accepted again.
    let r = server
        .post(&format!("/api/v1/users/{user_id}/lock"))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["locked"], true);
    expect_refused(
        server.get("/api/v1/me").bearer_auth(&token),
        StatusCode::FORBIDDEN,
        "user_locked",
    )
    .await;
    expect_refused(
        server
            .post("/api/v1/tokens")
            .basic_auth(&app.id, Some(&app.secret))
            .json(&json!({"external_id": "ext-7", "name": "Иван"})),
        StatusCode::FORBIDDEN,
        "user_locked",
    )
    .await;
    let r = server
        .post(&format!("/api/v1/users/{user_id}/unlock"))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .get("/api/v1/me")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // After exp the token is refused.
    common::advance(&server, 601);
    expect_refused(
        server.get("/api/v1/me").bearer_auth(&token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn health_metrics_and_a_component_down() {
    let (server, _dir) = TestServer::start().await;
    let r = server.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"]["store"]["status"], "up");
    assert_eq!(health["components"]["mail"]["status"], "up");
    assert_eq!(health["components"]["bus"]["status"], "up");

    let text = server
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/healthz""#), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("http_connections_open"), "{text}");

    // The outbox stops being a writable directory: mail is down, 503.
    let outbox = server.data_dir.join("outbox");
    std::fs::remove_dir_all(&outbox).unwrap();
    std::fs::write(&outbox, b"not a directory").unwrap();
    let r = common::healthz_after_a_failure(&server).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["components"]["mail"]["status"], "down");
    assert_eq!(health["components"]["store"]["status"], "up");
    server.stop().await;
}
