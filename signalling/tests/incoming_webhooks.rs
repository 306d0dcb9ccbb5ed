//! Incoming webhooks through the real server: an application makes a
//! secret URL for its conversation; a post through it reaches the members
//! as a message of the application's bot (text, data, buttons), a retry
//! with the same client id posts nothing new, posts are rate-limited, and
//! a revoked URL posts nothing; another application reaches nothing; the
//! audit log has both changes.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{App, TestServer, Ws, default_clock, expect_error, test_config, user_token};
use confer_signalling::limits::Rate;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn make_hook(server: &TestServer, app: &App, conv: &Value, name: &str) -> reqwest::Response {
    server
        .post(&format!(
            "/api/v1/conversations/{}/webhooks",
            conv.as_str().unwrap()
        ))
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
}

async fn post(server: &TestServer, url: &str, body: Value) -> reqwest::Response {
    server.client.post(url).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_webhook_posts_as_the_bot_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.incoming_webhook_posts = Rate::new(4, 3600);
    let server = TestServer::start_with(config, default_clock()).await;
    let app = server.register("hooks@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "Alerts"}))
        .await["conversation"]["id"]
        .clone();

    let made = make_hook(&server, &app, &conv, "monitoring").await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let made: Value = made.json().await.unwrap();
    let url = made["url"].as_str().unwrap().to_owned();
    assert!(url.contains("/api/v1/hooks/"), "{url}");
    assert_eq!(made["webhook"]["conversation_id"], conv);

    // A post reaches Ann as the bot's message, buttons and data included.
    let r = post(
        &server,
        &url,
        json!({"text": "*Disk* at 91 %", "data": {"host": "db1"},
        "actions": [{"value": "ack", "presentation": "Acknowledge"}], "client_id": "alert-1"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let posted: Value = r.json().await.unwrap();
    let e = loop {
        let e = ann.event().await;
        if e["event"]["kind"] == "message" {
            break e["event"]["message"].clone();
        }
    };
    assert_eq!(e["id"], posted["message_id"]);
    assert_eq!(e["author"], json!({"kind": "app"}));
    assert_eq!(e["text"], "*Disk* at 91 %");
    assert_eq!(e["data"], json!({"host": "db1"}));
    assert_eq!(e["actions"][0]["value"], "ack");
    // A retry with the same client id is the same message.
    let again: Value = post(
        &server,
        &url,
        json!({"text": "*Disk* at 91 %", "client_id": "alert-1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again["message_id"], posted["message_id"]);

    // Bad bodies are refused with a code.
    let r = post(&server, &url, json!({})).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = post(
        &server,
        &url,
        json!({"text": "x", "author": "someone else"}),
    )
    .await;
    expect_error(r, StatusCode::BAD_REQUEST, "unknown_field").await;

    // Past the limit: 429 with Retry-After.
    let mut limited = None;
    for i in 0..6 {
        let r = post(&server, &url, json!({"text": format!("n{i}")})).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let limited = limited.expect("the webhook's limit");
    assert!(limited.headers().get("retry-after").is_some());
    expect_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Listed without its token; another application can neither list,
    // make nor revoke; a made-up token posts nothing.
    let list: Value = server
        .get(&format!(
            "/api/v1/conversations/{}/webhooks",
            conv.as_str().unwrap()
        ))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["webhooks"][0]["name"], "monitoring");
    assert!(!list.to_string().contains(url.rsplit('/').next().unwrap()));
    let other = server.register("other-hooks@example.com", "Other").await;
    let r = make_hook(&server, &other, &conv, "steal").await;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let hook_id = made["webhook"]["id"].as_str().unwrap();
    let r = server
        .delete(&format!("/api/v1/webhooks/{hook_id}"))
        .basic_auth(&other.id, Some(&other.secret))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = server
        .post("/api/v1/hooks/not-a-token")
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // Revoked: the URL posts nothing, a second revoke finds nothing.
    let revoke = || {
        server
            .delete(&format!("/api/v1/webhooks/{hook_id}"))
            .basic_auth(&app.id, Some(&app.secret))
    };
    assert_eq!(
        revoke().send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = post(&server, &url, json!({"text": "after"})).await;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    expect_error(
        revoke().send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The audit log has the webhook made and revoked.
    let session = server.sign_in("hooks@example.com").await;
    let log: Value = server
        .get("/api/v1/audit?limit=3")
        .bearer_auth(&session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["subscriber.signed_in", "webhook.revoked", "webhook.created"]
    );
    assert_eq!(
        log["entries"][2]["target"],
        format!("webhook:{hook_id}").as_str()
    );
    server.stop().await;
}
