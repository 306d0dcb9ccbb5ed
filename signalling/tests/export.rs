//! Exports through the real server: the owning subscriber asks for a
//! conversation's archive, follows its progress, downloads it through the
//! signed URL, and finds in it exactly the history members see — edits
//! and deletions marked, the versions a legal hold kept, the attachments'
//! bytes, the people; a user's export covers each of the user's
//! conversations within the time range; the URL refuses a changed
//! signature and expires; another subscriber reaches nothing; asking,
//! completion and download are audited.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Duration;

use common::{TestServer, Ws, advance, expect_error, stored, upload_file, user_token};
use confer_signalling::ids::Clock as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The archive's files by path (under `confer-export/`).
fn unpack(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            out.insert(path, content);
        }
    }
    out
}

fn lines(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Vec<Value> {
    String::from_utf8(files[&format!("confer-export/{name}")].clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asks for an export and waits until it is no longer running.
async fn export(server: &TestServer, session: &str, app_id: &str, body: Value) -> Value {
    let r = server
        .post(&format!("/api/v1/applications/{app_id}/exports"))
        .bearer_auth(session)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["state"], "running", "{started}");
    let url = format!(
        "/api/v1/applications/{app_id}/exports/{}",
        started["id"].as_str().unwrap()
    );
    for _ in 0..200 {
        let now: Value = common::json(server.get(&url).bearer_auth(session)).await;
        if now["state"] != "running" {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the export did not finish within 10 s");
}

async fn send(ws: &mut Ws, conversation: &Value, text: &str, file: Option<&Value>) -> Value {
    let mut frame = json!({"type": "send", "conversation_id": conversation,
        "client_id": text, "text": text});
    if let Some(f) = file {
        frame["attachments"] = json!([{"file_id": f["id"]}]);
    }
    let ack = ws.request(frame).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["message"].clone()
}

async fn download(server: &TestServer, url: &str) -> reqwest::Response {
    server.client.get(url).send().await.unwrap()
}

#[tokio::test]
async fn an_export_holds_the_history_its_versions_and_files() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("dpo@example.com", "ERP").await;
    let session = server.sign_in("dpo@example.com").await;
    let (ann_token, ann) = user_token(&server, &app, "ann", &[]).await;
    let (_, bob) = user_token(&server, &app, "bob", &[]).await;
    let mut ws = Ws::connect(&server, &ann_token, None).await;
    let create = |title: &str, members: Vec<String>| json!({"type": "create_conversation", "title": title, "members": members});
    let deal = ws.request(create("Deal 17", vec![bob.clone()])).await["conversation"]["id"].clone();
    let notes = ws.request(create("Notes", vec![])).await["conversation"]["id"].clone();
    send(&mut ws, &deal, "first offer", None).await;
    send(&mut ws, &notes, "early note", None).await;
    // An hour on (a new token: the first one ended).
    advance(&server, 3600);
    let since = server.clock.now().to_rfc3339();
    let (ann_token, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ws = Ws::connect(&server, &ann_token, None).await;
    let contract = b"%PDF contract bytes".to_vec();
    let file = upload_file(&server, &ann_token, deal.as_str().unwrap(), &contract).await;
    send(&mut ws, &deal, "contract attached", Some(&file)).await;
    let edited = send(&mut ws, &deal, "price 100", None).await;
    let deleted = send(&mut ws, &deal, "call me at home", None).await;
    send(&mut ws, &notes, "late note", None).await;

    // Held, then Ann edits one message and deletes another.
    let r = server
        .post(&format!("/api/v1/applications/{}/legal-holds", app.id))
        .bearer_auth(&session)
        .json(&json!({"conversation_id": deal, "reason": "Case 7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ack = ws
        .request(json!({"type": "edit", "conversation_id": deal,
            "message_id": edited["id"], "text": "price 120"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ack = ws
        .request(json!({"type": "delete", "conversation_id": deal,
            "message_id": deleted["id"]}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // The conversation's export: ready, with a URL.
    let done = export(&server, &session, &app.id, json!({"conversation_id": deal})).await;
    assert_eq!(done["state"], "ready", "{done}");
    assert_eq!(done["progress"]["conversations_total"], 1);
    assert_eq!(done["progress"]["conversations_done"], 1);
    assert_eq!(
        done["progress"]["messages"], 6,
        "4 messages, 2 kept versions: {done}"
    );
    assert_eq!(done["progress"]["files"], 1);
    let r = download(&server, done["url"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, done["bytes"].as_u64().unwrap());
    let files = unpack(&bytes);

    // Its messages are the history, record for record.
    let history = ws.history(deal.as_str().unwrap()).await;
    let records = lines(&files, "messages.jsonl");
    let messages: Vec<Value> = records
        .iter()
        .filter(|r| r["record"] == "message")
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("record");
            r
        })
        .collect();
    assert_eq!(messages, history);
    assert!(
        messages
            .iter()
            .any(|m| m["text"] == "price 120" && m["edited_at"].is_string())
    );
    assert!(
        messages
            .iter()
            .any(|m| m["id"] == deleted["id"] && m["deleted_at"].is_string())
    );
    // The versions the hold kept, hidden from members.
    let versions: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["record"] == "version")
        .map(|r| {
            (
                r["replaced"].as_str().unwrap(),
                r["body"]["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [("edited", "price 100"), ("deleted", "call me at home")]
    );
    // The attachment's bytes, the conversation, the people, the manifest.
    let id = file["id"].as_str().unwrap();
    assert_eq!(files[&format!("confer-export/files/{id}/a.bin")], contract);
    let conversations = lines(&files, "conversations.jsonl");
    assert_eq!(conversations.len(), 1);
    assert_eq!(conversations[0]["title"], "Deal 17");
    let mut people: Vec<String> = lines(&files, "users.jsonl")
        .iter()
        .map(|u| u["external_id"].as_str().unwrap().to_owned())
        .collect();
    people.sort();
    assert_eq!(people, ["ann", "bob"]);
    let manifest: Value = serde_json::from_slice(&files["confer-export/manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "confer-export/1");
    assert_eq!(manifest["messages"], 6);

    // A changed signature is refused; the URL expires.
    let url = done["url"].as_str().unwrap();
    let tampered = format!("{}x", url.trim_end_matches('x'));
    expect_error(
        download(&server, &tampered).await,
        StatusCode::FORBIDDEN,
        "bad_signature",
    )
    .await;
    advance(&server, 2 * 3600);
    expect_error(
        download(&server, url).await,
        StatusCode::FORBIDDEN,
        "url_expired",
    )
    .await;

    // Ann's conversations since the hour: both, without the early ones.
    let session = server.sign_in("dpo@example.com").await;
    let mine = export(
        &server,
        &session,
        &app.id,
        json!({"user_id": ann, "from": since}),
    )
    .await;
    assert_eq!(mine["progress"]["conversations_total"], 2, "{mine}");
    let files = unpack(
        &download(&server, mine["url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    // (Conversations made in the same millisecond come in either order.)
    let mut texts: Vec<String> = lines(&files, "messages.jsonl")
        .iter()
        .filter(|r| r["record"] == "message" && r["deleted_at"].is_null())
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, ["contract attached", "late note", "price 120"]);

    // Refusals: neither or both scopes, a bad time, another subscriber,
    // the application's own credentials.
    let path = format!("/api/v1/applications/{}/exports", app.id);
    for bad in [
        json!({}),
        json!({"conversation_id": deal, "user_id": ann}),
        json!({"conversation_id": deal, "from": "yesterday"}),
        json!({"conversation_id": deal, "from": since, "to": since}),
    ] {
        let r = server
            .post(&path)
            .bearer_auth(&session)
            .json(&bad)
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    server.register("other@example.com", "Other").await;
    let stranger = server.sign_in("other@example.com").await;
    let r = server
        .get(&path)
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = server
        .get(&path)
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let listed: Value = common::json(server.get(&path).bearer_auth(&session)).await;
    assert_eq!(listed["exports"].as_array().unwrap().len(), 2);

    // In the audit log: asked for, completed, downloaded.
    let audit: Value = common::json(
        server
            .get(&format!("/api/v1/audit?app_id={}", app.id))
            .bearer_auth(&session),
    )
    .await;
    let count = |action: &str| {
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    assert_eq!(count("export.requested"), 2);
    assert_eq!(count("export.completed"), 2);
    assert_eq!(count("export.downloaded"), 2);
}

#[tokio::test]
async fn an_export_is_kept_in_the_bucket_until_its_days_are_over() {
    let s3 = common::s3::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.files.s3 = Some(s3.config());
    let server = TestServer::start_with(config, common::default_clock()).await;
    let bucket = s3.root.path().join(common::s3::BUCKET);
    let app = server.register("dpo@example.com", "ERP").await;
    let session = server.sign_in("dpo@example.com").await;
    let (token, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ws = Ws::connect(&server, &token, None).await;
    let deal = ws
        .request(json!({"type": "create_conversation", "title": "Deal"}))
        .await["conversation"]["id"]
        .clone();
    let bytes = vec![7u8; 300_000];
    let file = upload_file(&server, &token, deal.as_str().unwrap(), &bytes).await;
    send(&mut ws, &deal, "the scan", Some(&file)).await;

    let done = export(&server, &session, &app.id, json!({"conversation_id": deal})).await;
    assert_eq!(done["state"], "ready", "{done}");
    let id = done["id"].as_str().unwrap();
    assert!(
        stored(&bucket, id),
        "the archive is an object of the bucket"
    );
    let files = unpack(
        &download(&server, done["url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    let name = format!("confer-export/files/{}/a.bin", file["id"].as_str().unwrap());
    assert_eq!(files[&name], bytes);

    // Eight days on (seven are kept), the archive is deleted.
    advance(&server, 8 * 24 * 3600);
    server.services.tidy_exports().await.unwrap();
    assert!(!stored(&bucket, id));
    let session = server.sign_in("dpo@example.com").await;
    let now: Value = common::json(
        server
            .get(&format!("/api/v1/applications/{}/exports/{id}", app.id))
            .bearer_auth(&session),
    )
    .await;
    assert_eq!(now["state"], "expired", "{now}");
    assert!(now.get("url").is_none());
}
