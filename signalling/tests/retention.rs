//! Retention and legal holds through the real server, on the local file
//! directory and on a real S3-protocol server: messages older than the
//! application's period are deleted with their files — the database row,
//! the full-text index row and the file's object in the directory or
//! bucket — and the deletion is in the audit log; a conversation's own
//! period overrides the application's; a hold on a conversation or on a
//! user keeps what it covers, including a message its author deleted
//! (kept, hidden from users, with its file) until it is released; only
//! the owning subscriber sets any of it.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::Path;

use common::s3::S3Server;
use common::{
    TestServer, Ws, advance, default_clock, expect_error, stored, test_config, upload_file,
    user_token,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const DAY: u64 = 24 * 60 * 60;

/// Rows of the full-text index holding `word` (SQLite).
fn indexed(data_dir: &Path, word: &str) -> i64 {
    let db = rusqlite::Connection::open(data_dir.join("confer.db")).unwrap();
    db.query_row(
        "SELECT COUNT(*) FROM message_search WHERE message_search MATCH ?1",
        [word],
        |row| row.get(0),
    )
    .unwrap()
}

async fn send(ws: &mut Ws, conversation: &Value, text: &str, file: Option<&Value>) -> Value {
    let mut frame = json!({"type": "send", "conversation_id": conversation,
        "client_id": text, "text": text});
    if let Some(file) = file {
        frame["attachments"] = json!([{"file_id": file["id"]}]);
    }
    let ack = ws.request(frame).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["message"].clone()
}

async fn create(ws: &mut Ws, title: &str, members: &[&str]) -> Value {
    ws.request(json!({"type": "create_conversation", "title": title, "members": members}))
        .await["conversation"]["id"]
        .clone()
}

async fn texts(ws: &mut Ws, conversation: &Value) -> Vec<String> {
    ws.history(conversation.as_str().unwrap())
        .await
        .iter()
        .map(|m| {
            if m["deleted_at"].is_string() {
                "(deleted)".to_owned()
            } else {
                m["text"].as_str().unwrap().to_owned()
            }
        })
        .collect()
}

async fn retention_deletes_everywhere_but_held(s3: Option<S3Server>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let objects = match &s3 {
        Some(s3) => {
            config.files.s3 = Some(s3.config());
            s3.root.path().join(common::s3::BUCKET)
        }
        None => config.files_dir(),
    };
    let server = TestServer::start_with(config, default_clock()).await;
    let app = server.register("dpo@example.com", "ERP").await;
    let session = server.sign_in("dpo@example.com").await;
    let (ann_token, _) = user_token(&server, &app, "ann", &[]).await;
    let (bob_token, bob) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &ann_token, None).await;
    let mut bob_ws = Ws::connect(&server, &bob_token, None).await;
    let plain = create(&mut ann, "Plain", &[]).await;
    let forever = create(&mut ann, "Forever", &[]).await;
    let held = create(&mut ann, "Held", &[]).await;
    let with_bob = create(&mut ann, "With Bob", &[&bob]).await;
    let as_owner = |method: reqwest::Method, path: String| {
        server
            .client
            .request(method, server.url(&path))
            .bearer_auth(&session)
    };

    // Only the owner sets retention: not the application, not another.
    let path = format!("/api/v1/applications/{}/retention", app.id);
    let r = server
        .client
        .put(server.url(&path))
        .basic_auth(&app.id, Some(&app.secret))
        .json(&json!({"days": 30}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    server.register("other@example.com", "Other").await;
    let stranger = server.sign_in("other@example.com").await;
    let r = server
        .client
        .put(server.url(&path))
        .bearer_auth(&stranger)
        .json(&json!({"days": 30}))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    for bad in [
        json!({"days": 0}),
        json!({"days": 36501}),
        json!({"days": "x"}),
    ] {
        let r = as_owner(reqwest::Method::PUT, path.clone())
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let set: Value = as_owner(reqwest::Method::PUT, path.clone())
        .json(&json!({"days": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["days"], 30, "{set}");
    let set: Value = as_owner(
        reqwest::Method::PUT,
        format!(
            "/api/v1/applications/{}/conversations/{}/retention",
            app.id,
            forever.as_str().unwrap()
        ),
    )
    .json(&json!({"days": 0}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        set["conversations"],
        json!([{"conversation_id": forever, "days": 0}])
    );

    // Old messages, three with files; then holds on one conversation and
    // on Bob.
    let old_file = upload_file(&server, &ann_token, plain.as_str().unwrap(), b"old bytes").await;
    let held_file = upload_file(&server, &ann_token, held.as_str().unwrap(), b"held bytes").await;
    let gone_file = upload_file(&server, &ann_token, held.as_str().unwrap(), b"gone bytes").await;
    let old_id = old_file["id"].as_str().unwrap().to_owned();
    send(&mut ann, &plain, "zebra old plain", Some(&old_file)).await;
    send(&mut ann, &forever, "zebra old forever", None).await;
    send(&mut ann, &held, "zebra old held", Some(&held_file)).await;
    let regretted = send(&mut ann, &held, "zebra regretted", Some(&gone_file)).await;
    send(&mut bob_ws, &with_bob, "zebra old bob", None).await;
    let holds = format!("/api/v1/applications/{}/legal-holds", app.id);
    let mut placed = Vec::new();
    for body in [
        json!({"conversation_id": held, "reason": "Case 2026-14"}),
        json!({"user_id": bob, "reason": "Case 2026-15"}),
    ] {
        let r = as_owner(reqwest::Method::POST, holds.clone())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        placed.push(r.json::<Value>().await.unwrap());
    }
    for bad in [
        json!({"reason": "neither"}),
        json!({"conversation_id": held, "user_id": bob, "reason": "both"}),
        json!({"conversation_id": held, "reason": "  "}),
    ] {
        let r = as_owner(reqwest::Method::POST, holds.clone())
            .json(&bad)
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // Ann deletes a held message: users see it deleted, its file stays.
    let deleted = ann
        .request(json!({"type": "delete", "conversation_id": held, "message_id": regretted["id"]}))
        .await;
    assert_eq!(deleted["type"], "ack", "{deleted}");
    assert_eq!(
        texts(&mut ann, &held).await,
        ["zebra old held", "(deleted)"]
    );
    assert!(stored(&objects, gone_file["id"].as_str().unwrap()));

    // (Uploaded now: S3 checks signatures against its own clock.)
    let fresh_file = upload_file(&server, &ann_token, held.as_str().unwrap(), b"fresh").await;
    // 31 days on (new tokens: the first ones expired), a new message;
    // the sweep.
    advance(&server, 31 * DAY);
    let (ann_token, _) = user_token(&server, &app, "ann", &[]).await;
    let (bob_token, _) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &ann_token, None).await;
    let mut bob_ws = Ws::connect(&server, &bob_token, None).await;
    let session = server.sign_in("dpo@example.com").await;
    let as_owner = |method: reqwest::Method, path: String| {
        server
            .client
            .request(method, server.url(&path))
            .bearer_auth(&session)
    };
    send(&mut ann, &plain, "zebra new plain", None).await;
    // A recent held message deleted by its author: kept until release.
    let fresh = send(&mut ann, &held, "zebra fresh", Some(&fresh_file)).await;
    ann.request(json!({"type": "delete", "conversation_id": held, "message_id": fresh["id"]}))
        .await;
    assert!(stored(&objects, &old_id));
    if s3.is_none() {
        assert_eq!(indexed(&server.data_dir, "plain"), 2);
    }
    let swept = server.services.sweep_retention().await.unwrap();
    assert_eq!(swept.messages, 1, "{swept:?}");
    server.services.files.sweep().await.unwrap();

    assert_eq!(texts(&mut ann, &plain).await, ["zebra new plain"]);
    assert!(!stored(&objects, &old_id), "the old file's object is gone");
    if s3.is_none() {
        assert_eq!(indexed(&server.data_dir, "plain"), 1, "its index row too");
    }
    let r = server
        .get(&format!("/api/v1/files/{old_id}"))
        .bearer_auth(&ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(texts(&mut ann, &forever).await, ["zebra old forever"]);
    assert_eq!(
        texts(&mut ann, &held).await,
        ["zebra old held", "(deleted)", "(deleted)"]
    );
    assert_eq!(texts(&mut bob_ws, &with_bob).await, ["zebra old bob"]);
    assert!(stored(&objects, held_file["id"].as_str().unwrap()));
    assert!(stored(&objects, gone_file["id"].as_str().unwrap()));
    assert!(stored(&objects, fresh_file["id"].as_str().unwrap()));

    // The owner's audit log has the changes and the deletion.
    let audit: Value = common::json(
        server
            .get(&format!("/api/v1/audit?app_id={}", app.id))
            .bearer_auth(&session),
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    let deletion = entries
        .iter()
        .find(|e| e["action"] == "retention.deleted")
        .unwrap();
    assert_eq!(deletion["actor"], "system:retention");
    assert_eq!(
        deletion["target"],
        format!("conversation:{}", plain.as_str().unwrap())
    );
    assert_eq!(deletion["details"]["messages"], 1);
    for action in ["retention.changed", "legal_hold.placed"] {
        assert!(entries.iter().any(|e| e["action"] == action), "{action}");
    }

    // Released: the next sweep deletes what the holds kept, the deleted
    // message's file with it.
    for hold in &placed {
        let r = as_owner(
            reqwest::Method::DELETE,
            format!("{holds}/{}", hold["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let listed: Value = common::json(as_owner(reqwest::Method::GET, holds.clone())).await;
    assert!(listed["holds"][0]["released_at"].is_string(), "{listed}");
    let swept = server.services.sweep_retention().await.unwrap();
    // (The old messages with their kept versions; the recent deleted
    // one's version alone.)
    assert_eq!(swept.messages, 3, "{swept:?}");
    assert_eq!(swept.copies, 1, "{swept:?}");
    server.services.files.sweep().await.unwrap();
    assert_eq!(texts(&mut ann, &held).await, ["(deleted)"]);
    assert!(!stored(&objects, fresh_file["id"].as_str().unwrap()));
    assert!(texts(&mut bob_ws, &with_bob).await.is_empty());
    assert_eq!(texts(&mut ann, &forever).await, ["zebra old forever"]);
    assert!(!stored(&objects, held_file["id"].as_str().unwrap()));
    assert!(!stored(&objects, gone_file["id"].as_str().unwrap()));
    drop(s3);
}

#[tokio::test]
async fn retention_deletes_from_the_database_index_and_directory_but_not_held() {
    retention_deletes_everywhere_but_held(None).await;
}

#[tokio::test]
async fn retention_deletes_from_the_bucket_but_not_held() {
    retention_deletes_everywhere_but_held(Some(S3Server::start().await)).await;
}
