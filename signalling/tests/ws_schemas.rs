//! The JSON Schemas in docs/protocol.md are the contract of the WebSocket
//! protocol: this test reads them from the document and checks every frame
//! a scripted session sends and receives against them, and that every
//! server frame type and event kind (but `resync`) was exercised.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeSet;

use common::{TestServer, Ws, check_frames as check, protocol_schemas as schemas, user_token};
use serde_json::json;

#[tokio::test]
async fn every_frame_matches_the_documented_schemas() {
    let client_schemas = schemas("### Client frames");
    let server_schemas = schemas("### Server frames");
    assert!(client_schemas.len() >= 13 && server_schemas.len() >= 11);
    // The schemas are strict: an unknown field or a wrong type fails.
    let pong = jsonschema::validator_for(&server_schemas["pong"]).unwrap();
    assert!(pong.is_valid(&json!({"type": "pong", "id": "x"})));
    assert!(!pong.is_valid(&json!({"type": "pong", "id": "x", "extra": 1})));
    assert!(!pong.is_valid(&json!({"type": "pong", "id": 7})));

    let (server, _dir) = TestServer::start().await;
    let app = server.register("schema@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &["order:1"]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut bot = Ws::connect_bot(&server, &app).await;

    let conv = ann
        .request(
            json!({"type": "create_conversation", "title": "s", "members": [u2], "is_group": true}),
        )
        .await["conversation"]["id"]
        .clone();
    // Keys are the application's.
    bot.request(json!({"type": "create_conversation", "title": "k", "members": [u2], "key": "k1"}))
        .await;
    ann.request(json!({"type": "open_context", "context": "order:1", "title": "Order 1"}))
        .await;
    let m = ann.request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "*hi*", "data": {"n": 1}, "recipients": [u2]})).await;
    let mid = m["message"]["id"].clone();
    // A message carrying a file (an image, so with a preview).
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(640, 480)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let ticket: serde_json::Value = server
        .post(&format!(
            "/api/v1/conversations/{}/files",
            conv.as_str().unwrap()
        ))
        .bearer_auth(&t1)
        .json(&json!({"name": "план.png", "size": png.len(), "content_type": "image/png"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = server
        .client
        .put(ticket["upload"]["url"].as_str().unwrap())
        .body(png)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let file = ticket["file"]["id"].as_str().unwrap();
    server
        .post(&format!("/api/v1/files/{file}/complete"))
        .bearer_auth(&t1)
        .send()
        .await
        .unwrap();
    let with_file = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "f", "attachments": [{"file_id": file, "displayed": true}]}))
        .await;
    assert_eq!(
        with_file["message"]["attachments"][0]["preview"]["width"], 320,
        "{with_file}"
    );
    ann.request(json!({"type": "edit", "conversation_id": conv, "message_id": mid, "text": "hi!"}))
        .await;
    ann.request(json!({"type": "delete", "conversation_id": conv, "message_id": mid}))
        .await;
    bob.request(json!({"type": "read", "conversation_id": conv, "seq": 1}))
        .await;
    bob.request(json!({"type": "typing", "conversation_id": conv}))
        .await;
    bob.request(json!({"type": "presence", "away": true, "users": [u2]}))
        .await;
    bob.request(json!({"type": "history", "conversation_id": conv, "limit": 10}))
        .await;
    bob.request(json!({"type": "list", "limit": 10})).await;
    let members = bob
        .request(json!({"type": "members", "conversation_id": conv}))
        .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    bob.request(json!({"type": "search", "query": "hi"})).await;
    bob.request(json!({"type": "ping"})).await;
    bob.request(json!({"type": "edit", "conversation_id": conv, "message_id": mid, "text": "x"}))
        .await;
    let ask = bot
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "b", "text": "ok?", "actions": [{"value": "y", "presentation": "Yes"}]}))
        .await;
    bob.request(json!({"type": "click", "conversation_id": conv, "message_id": ask["message"]["id"], "value": "y"})).await;
    // Let every pending event arrive.
    while bot.event().await["event"]["kind"] != "action" {}
    let page = ann.request(json!({"type": "list", "limit": 1})).await;
    ann.request(json!({"type": "list", "limit": 1, "after": page["next"]}))
        .await;
    bob.request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u2}))
        .await;
    ann.request(json!({"type": "add_members", "conversation_id": conv, "members": [u2]}))
        .await;
    while bob.event().await["event"]["kind"] != "conversation" {}
    ann.request(json!({"type": "ping"})).await;

    let mut seen = BTreeSet::new();
    for ws in [&ann, &bob, &bot] {
        check(&client_schemas, &ws.sent, "client");
        seen.extend(check(&server_schemas, &ws.received, "server"));
    }
    let expected: BTreeSet<String> = [
        "welcome",
        "ack",
        "error",
        "history",
        "conversations",
        "search",
        "presence",
        "members",
        "pong",
        "event.message",
        "event.message_edited",
        "event.message_deleted",
        "event.conversation",
        "event.read",
        "event.action",
        "ephemeral.typing",
        "ephemeral.presence",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}");
    server.stop().await;
}
