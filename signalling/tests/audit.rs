//! The audit log through the real server: each administrative action over
//! REST is recorded once with who, when, from where and to what; its
//! subscriber reads it newest first with filters and pages; nobody else
//! does.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, user_token};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn page(server: &TestServer, session: &str, query: &str) -> Value {
    let r = server
        .get(&format!("/api/v1/audit{query}"))
        .bearer_auth(session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    r.json().await.unwrap()
}

fn actions(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn administrative_actions_are_recorded_and_read_by_their_subscriber_only() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("auditor@example.com", "ERP").await;
    let session = server.sign_in("auditor@example.com").await;
    let (_, user) = user_token(&server, &app, "ann", &[]).await;
    let basic = |r: reqwest::RequestBuilder| r.basic_auth(&app.id, Some(&app.secret));
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{}", r.status());
    };
    ok(basic(server.post(&format!("/api/v1/users/{user}/lock")))
        .send()
        .await
        .unwrap());
    ok(basic(server.post(&format!("/api/v1/users/{user}/unlock")))
        .send()
        .await
        .unwrap());
    ok(basic(
        server
            .client
            .put(server.url(&format!("/api/v1/users/{user}/contexts/order%3A42"))),
    )
    .send()
    .await
    .unwrap());
    ok(
        basic(server.delete(&format!("/api/v1/users/{user}/contexts/order%3A42")))
            .send()
            .await
            .unwrap(),
    );
    ok(server
        .patch(&format!("/api/v1/applications/{}", app.id))
        .bearer_auth(&session)
        .json(&json!({"name": "ERP 2"}))
        .send()
        .await
        .unwrap());
    let rotated: Value = server
        .post(&format!("/api/v1/applications/{}/secret", app.id))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rotated["app_secret"].is_string());

    let all = page(&server, &session, "").await;
    assert_eq!(
        actions(&all),
        [
            "application.secret_rotated",
            "application.renamed",
            "grant.removed",
            "grant.added",
            "user.unlocked",
            "user.locked",
            "subscriber.signed_in",
            "application.registered",
        ]
    );
    assert_eq!(all["next"], Value::Null);
    let entries = all["entries"].as_array().unwrap();
    let sub = format!("subscriber:{}", app.subscriber_id);
    let by_app = format!("application:{}", app.id);
    assert_eq!(entries[0]["actor"], sub.as_str());
    assert_eq!(entries[0]["target"], by_app.as_str());
    assert_eq!(entries[1]["details"], json!({"name": "ERP 2"}));
    assert_eq!(entries[2]["actor"], by_app.as_str());
    assert_eq!(entries[2]["target"], format!("user:{user}").as_str());
    assert_eq!(entries[3]["details"], json!({"context": "order:42"}));
    assert_eq!(entries[7]["app_id"], app.id.as_str());
    for e in entries {
        assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Filters and pages.
    assert_eq!(
        actions(&page(&server, &session, "?action=user.locked").await),
        ["user.locked"]
    );
    let of_app = page(&server, &session, &format!("?app_id={}", app.id)).await;
    assert_eq!(
        of_app["entries"].as_array().unwrap().len(),
        7,
        "sign-in is not the application's"
    );
    let first = page(&server, &session, "?limit=3").await;
    assert_eq!(actions(&first).len(), 3);
    let next = first["next"].as_u64().unwrap();
    let second = page(&server, &session, &format!("?limit=3&before={next}")).await;
    assert_eq!(
        actions(&second),
        ["grant.added", "user.unlocked", "user.locked"]
    );
    let later = page(&server, &session, "?from=2100-01-01T00:00:00Z").await;
    assert_eq!(later["entries"], json!([]));
    let earlier = page(&server, &session, "?to=2000-01-01T00:00:00Z").await;
    assert_eq!(earlier["entries"], json!([]));

    // Refused: a bad page, a bad time, no session, the application's own
    // credentials; another subscriber sees none of it.
    for (query, code) in [
        ("?limit=0", "invalid_request"),
        ("?from=yesterday", "invalid_request"),
    ] {
        let r = server
            .get(&format!("/api/v1/audit{query}"))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        common::expect_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    let r = server.get("/api/v1/audit").send().await.unwrap();
    common::expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = basic(server.get("/api/v1/audit")).send().await.unwrap();
    common::expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    server.register("other@example.com", "Other").await;
    let other = server.sign_in("other@example.com").await;
    let theirs = page(&server, &other, "").await;
    assert_eq!(
        actions(&theirs),
        ["subscriber.signed_in", "application.registered"]
    );
    let r = page(&server, &other, &format!("?app_id={}", app.id)).await;
    assert_eq!(r["entries"], json!([]));

    // A wrong sign-in code for the address is recorded (and the answer
    // says no more than before).
    server
        .post("/api/v1/subscriber/sessions")
        .json(&json!({"email": "auditor@example.com"}))
        .send()
        .await
        .unwrap();
    let r = server
        .post("/api/v1/subscriber/sessions/confirm")
        .json(&json!({"email": "auditor@example.com", "code": "000000"}))
        .send()
        .await
        .unwrap();
    common::expect_error(r, StatusCode::FORBIDDEN, "access_denied").await;
    let failed = page(&server, &session, "?limit=1").await;
    assert_eq!(actions(&failed), ["subscriber.sign_in_failed"]);
    assert_eq!(failed["entries"][0]["source_ip"], "127.0.0.1");

    // Signing out and unregistering are recorded too.
    let r = server
        .delete(&format!("/api/v1/applications/{}", app.id))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server
        .delete("/api/v1/subscriber/sessions/current")
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let again = server.sign_in("auditor@example.com").await;
    assert_eq!(
        actions(&page(&server, &again, "?limit=3").await),
        [
            "subscriber.signed_in",
            "subscriber.signed_out",
            "application.unregistered"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_bots_membership_changes_are_recorded_and_users_are_not() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("bot-audit@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let (_, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut bot = common::Ws::connect_bot(&server, &app).await;
    let keyed = json!({"type": "create_conversation", "title": "Orders", "members": [u1],
        "is_group": true, "key": "orders"});
    let conv = bot.request(keyed.clone()).await["conversation"]["id"].clone();
    // Its key again finds it: nothing is created, nothing recorded.
    assert_eq!(bot.request(keyed).await["conversation"]["id"], conv);
    bot.request(json!({"type": "add_members", "conversation_id": conv, "members": [u2]}))
        .await;
    bot.request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u1}))
        .await;
    // A user's own changes are not administrative: nothing recorded.
    let mut ann = common::Ws::connect(&server, &t1, None).await;
    ann.request(json!({"type": "create_conversation", "title": "mine", "members": [u2]}))
        .await;

    let session = server.sign_in("bot-audit@example.com").await;
    let log = page(&server, &session, "?limit=10").await;
    assert_eq!(
        actions(&log),
        [
            "subscriber.signed_in",
            "conversation.member_removed",
            "conversation.members_added",
            "conversation.created",
            "application.registered",
        ]
    );
    let target = format!("conversation:{}", conv.as_str().unwrap());
    let by_app = format!("application:{}", app.id);
    for e in &log["entries"].as_array().unwrap()[1..4] {
        assert_eq!(e["actor"], by_app.as_str(), "{e}");
        assert_eq!(e["target"], target.as_str(), "{e}");
        assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
    }
    assert_eq!(log["entries"][1]["details"], json!({"user_id": u1}));
    assert_eq!(log["entries"][2]["details"], json!({"members": [u2]}));
    assert_eq!(log["entries"][3]["details"]["title"], "Orders");
    server.stop().await;
}
