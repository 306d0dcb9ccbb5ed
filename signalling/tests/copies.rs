//! Quoting and forwarding through the real server, over real WebSocket
//! clients and the real file routes: a quote is a snapshot the original's
//! later edit does not change; a forward copies text, data and files (by
//! reference, fetchable by the target's members, gone with the original),
//! and every access is checked at both ends.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, upload_file, user_token};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn fetch(server: &TestServer, token: &str, file: &Value) -> StatusCode {
    server
        .get(&format!("/api/v1/files/{}", file.as_str().unwrap()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn quotes_keep_what_was_quoted_and_forwards_carry_files_by_reference() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("copies@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&server, &app, "carl", &[]).await;
    let (t4, _) = user_token(&server, &app, "dora", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut carl = Ws::connect(&server, &t3, None).await;
    let a = ann
        .request(
            json!({"type": "create_conversation", "title": "A", "members": [u2], "is_group": true}),
        )
        .await["conversation"]["id"]
        .clone();
    let b = ann
        .request(
            json!({"type": "create_conversation", "title": "B", "members": [u3], "is_group": true}),
        )
        .await["conversation"]["id"]
        .clone();
    let file = upload_file(&server, &t1, a.as_str().unwrap(), b"invoice 17").await;
    let original = ann
        .request(json!({"type": "send", "conversation_id": a, "client_id": "1", "text": "Invoice 17 attached",
            "data": {"invoice": 17}, "attachments": [{"file_id": file["id"]}]}))
        .await["message"]
        .clone();

    // Bob quotes it; Ann's later edit leaves the quote as it was.
    let quoting = bob
        .request(
            json!({"type": "send", "conversation_id": a, "client_id": "q", "text": "Paid?",
            "quote": original["id"]}),
        )
        .await;
    assert_eq!(quoting["type"], "ack", "{quoting}");
    let quote = &quoting["message"]["quote"];
    assert_eq!(
        quote,
        &json!({"message_id": original["id"], "seq": 1, "author": {"kind": "user", "user_id": u1},
            "text": "Invoice 17 attached", "attachments": true, "created_at": original["created_at"]})
    );
    ann.request(json!({"type": "edit", "conversation_id": a, "message_id": original["id"], "text": "Invoice 17 (fixed)"}))
        .await;
    let history = bob.history(a.as_str().unwrap()).await;
    assert_eq!(history[1]["quote"]["text"], "Invoice 17 attached");

    // A message for Ann only is quoted to Ann only; unknown and other
    // conversations' messages are not found.
    let private = bob
        .request(
            json!({"type": "send", "conversation_id": a, "client_id": "p", "text": "between us",
            "recipients": [u1]}),
        )
        .await["message"]["id"]
        .clone();
    let r = ann
        .request(json!({"type": "send", "conversation_id": a, "client_id": "q2", "text": "to all", "quote": private}))
        .await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    let r = ann
        .request(
            json!({"type": "send", "conversation_id": a, "client_id": "q3", "text": "to Bob",
            "quote": private, "recipients": [u2]}),
        )
        .await;
    assert_eq!(r["type"], "ack", "to its author is to one who saw it: {r}");
    let r = carl
        .request(json!({"type": "send", "conversation_id": b, "client_id": "q4", "text": "?", "quote": original["id"]}))
        .await;
    assert_eq!(r["code"], "not_found", "{r}");

    // Ann forwards the invoice to B: text, data and the file, marked.
    let fwd = json!({"type": "forward", "conversation_id": b, "client_id": "f1",
        "from_conversation_id": a, "message_id": original["id"]});
    let forwarded = ann.request(fwd.clone()).await;
    assert_eq!(forwarded["type"], "ack", "{forwarded}");
    let copy = &forwarded["message"];
    assert_eq!(copy["text"], "Invoice 17 (fixed)");
    assert_eq!(copy["data"], json!({"invoice": 17}));
    assert_eq!(copy["attachments"][0]["file_id"], file["id"]);
    assert_eq!(
        copy["forwarded"],
        json!({"conversation_id": a, "message_id": original["id"],
            "author": {"kind": "user", "user_id": u1}, "created_at": original["created_at"]})
    );
    let again = ann.request(fwd.clone()).await;
    assert_eq!(
        again["message"]["id"], copy["id"],
        "a retry returns the first copy"
    );
    // Carl reads B, not A: he gets the forward and may fetch its file;
    // Dora reads neither.
    let e = loop {
        let e = carl.event().await;
        if e["event"]["kind"] == "message" {
            break e["event"]["message"].clone();
        }
    };
    assert_eq!(e["id"], copy["id"]);
    assert_eq!(fetch(&server, &t3, &file["id"]).await, StatusCode::OK);
    assert_eq!(
        fetch(&server, &t4, &file["id"]).await,
        StatusCode::FORBIDDEN
    );
    // The original's file stays the original's.
    assert_eq!(fetch(&server, &t2, &file["id"]).await, StatusCode::OK);

    // Carl may not forward from A, nor Bob into B; a forward of the
    // forward names the first original.
    let r = carl
        .request(
            json!({"type": "forward", "conversation_id": b, "client_id": "f2",
            "from_conversation_id": a, "message_id": original["id"]}),
        )
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = bob
        .request(
            json!({"type": "forward", "conversation_id": b, "client_id": "f3",
            "from_conversation_id": a, "message_id": original["id"]}),
        )
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let twice = carl
        .request(
            json!({"type": "forward", "conversation_id": b, "client_id": "f4",
            "from_conversation_id": b, "message_id": copy["id"]}),
        )
        .await;
    assert_eq!(
        twice["message"]["forwarded"]["message_id"], original["id"],
        "{twice}"
    );

    // Deleting the original takes its file from the forwards too.
    ann.request(json!({"type": "delete", "conversation_id": a, "message_id": original["id"]}))
        .await;
    assert_eq!(
        fetch(&server, &t3, &file["id"]).await,
        StatusCode::NOT_FOUND
    );
    let r = ann
        .request(
            fwd.clone()
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("client_id".into(), json!("f5"));
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
    assert_eq!(
        r["code"], "invalid_request",
        "a deleted message is not forwarded: {r}"
    );

    // Another application's user reaches neither end.
    let other = server.register("other-copies@example.com", "Other").await;
    let (t, _) = user_token(&server, &other, "oscar", &[]).await;
    let mut oscar = Ws::connect(&server, &t, None).await;
    let mine = oscar
        .request(json!({"type": "create_conversation", "title": "mine"}))
        .await["conversation"]["id"]
        .clone();
    let r = oscar
        .request(
            json!({"type": "forward", "conversation_id": mine, "client_id": "o",
            "from_conversation_id": b, "message_id": copy["id"]}),
        )
        .await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = oscar
        .request(
            json!({"type": "send", "conversation_id": mine, "client_id": "o2", "text": "?",
            "quote": copy["id"]}),
        )
        .await;
    assert_eq!(r["code"], "not_found", "{r}");
    assert_eq!(fetch(&server, &t, &file["id"]).await, StatusCode::NOT_FOUND);
    server.stop().await;
}
