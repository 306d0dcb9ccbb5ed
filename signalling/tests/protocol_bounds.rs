//! The bounds docs/protocol.md gives request frames are the ones the server
//! enforces: out-of-range values are refused (`invalid_request` naming the
//! field), not clamped; what the server refuses the documented schema
//! refuses too; and frames are answered or closed by one size rule
//! (`frame_too_large` up to 1 MiB, close 1009 beyond).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestServer, Ws, check_frames, protocol_schemas, user_token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// Whether the documented schema of a client frame accepts `frame`.
fn documented(schemas: &BTreeMap<String, Value>, frame: &Value) -> bool {
    let kind = frame["type"].as_str().unwrap();
    jsonschema::validator_for(&schemas[kind])
        .unwrap()
        .is_valid(frame)
}

/// Sends `frame`, expects `invalid_request` naming `field`, and checks that
/// the documented schema refuses the frame as well.
async fn refused(ws: &mut Ws, schemas: &BTreeMap<String, Value>, frame: Value, field: &str) {
    let e = ws.request(frame.clone()).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_request")),
        "{frame} -> {e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains(field),
        "the error names {field}: {e}"
    );
    assert!(
        !documented(schemas, &ws.sent.last().unwrap().clone()),
        "the schema refuses what the server refuses: {frame}"
    );
}

/// Sends `frame`, expects an answer of type `answer`, and checks that the
/// documented schema accepts the frame.
async fn accepted(ws: &mut Ws, schemas: &BTreeMap<String, Value>, frame: Value, answer: &str) {
    let a = ws.request(frame.clone()).await;
    assert_eq!(a["type"], answer, "{frame} -> {a}");
    assert!(
        documented(schemas, &ws.sent.last().unwrap().clone()),
        "the schema accepts what the server accepts: {frame}"
    );
}

/// Every frame the server sent matches its documented schema.
fn check_received(ws: &Ws) {
    check_frames(
        &protocol_schemas("### Server frames"),
        &ws.received,
        "server",
    );
}

#[tokio::test]
async fn page_limits_outside_1_to_200_are_refused_not_clamped() {
    let schemas = protocol_schemas("### Client frames");
    let (server, _dir) = TestServer::start().await;
    let app = server.register("bounds@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (_, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    ann.request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "word"}))
        .await;

    for limit in [0, 201, 1000] {
        refused(
            &mut ann,
            &schemas,
            json!({"type": "history", "conversation_id": conv, "limit": limit}),
            "limit",
        )
        .await;
        refused(
            &mut ann,
            &schemas,
            json!({"type": "list", "limit": limit}),
            "limit",
        )
        .await;
        refused(
            &mut ann,
            &schemas,
            json!({"type": "search", "query": "word", "limit": limit}),
            "limit",
        )
        .await;
    }
    // Refused before anything is looked up: an unknown conversation with a
    // bad limit is a bad request, not a missing conversation.
    refused(
        &mut ann,
        &schemas,
        json!({"type": "history", "conversation_id": "00000000-0000-0000-0000-000000000000", "limit": 0}),
        "limit",
    )
    .await;
    for limit in [1, 200] {
        accepted(
            &mut ann,
            &schemas,
            json!({"type": "history", "conversation_id": conv, "limit": limit}),
            "history",
        )
        .await;
        accepted(
            &mut ann,
            &schemas,
            json!({"type": "list", "limit": limit}),
            "conversations",
        )
        .await;
        accepted(
            &mut ann,
            &schemas,
            json!({"type": "search", "query": "word", "limit": limit}),
            "search",
        )
        .await;
    }
    // A page of exactly `limit` conversations continues; `limit: 1` with
    // one conversation gives a cursor.
    let page = ann.request(json!({"type": "list", "limit": 1})).await;
    assert_eq!(page["conversations"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["next"].is_string(), "{page}");
    check_received(&ann);
}

#[tokio::test]
async fn unknown_fields_of_actions_and_non_object_signals_are_refused() {
    let schemas = protocol_schemas("### Client frames");
    let (server, _dir) = TestServer::start().await;
    let app = server.register("actions@example.com", "ERP").await;
    let (_, u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, _) = user_token(&server, &app, "bob", &[]).await;
    let mut bot = Ws::connect_bot(&server, &app).await;
    let conv = bot
        .request(json!({"type": "create_conversation", "title": "t", "members": [u1]}))
        .await["conversation"]["id"]
        .clone();
    refused(
        &mut bot,
        &schemas,
        json!({"type": "send", "conversation_id": conv, "client_id": "a", "text": "pick",
               "actions": [{"value": "y", "presentation": "Yes", "colour": "green"}]}),
        "colour",
    )
    .await;
    accepted(
        &mut bot,
        &schemas,
        json!({"type": "send", "conversation_id": conv, "client_id": "b", "text": "pick",
               "actions": [{"value": "y", "presentation": "Yes"}]}),
        "ack",
    )
    .await;
    check_received(&bot);

    // `signal` must be an object, whatever the call: checked before the
    // call is looked up (it used to answer `not_found`).
    let mut bob = Ws::connect(&server, &t2, None).await;
    for signal in [json!("offer"), json!(5), json!([1]), Value::Null] {
        refused(
            &mut bob,
            &schemas,
            json!({"type": "call_signal", "call_id": "00000000-0000-0000-0000-000000000000",
                   "to": u1, "signal": signal}),
            "signal",
        )
        .await;
    }
    check_received(&bob);
}

#[tokio::test]
async fn lengths_enforced_in_code_are_in_the_schemas() {
    let schemas = protocol_schemas("### Client frames");
    let (server, _dir) = TestServer::start().await;
    let app = server.register("lengths@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &["order:1"]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bot = Ws::connect_bot(&server, &app).await;
    let long = "я".repeat(257);
    let just = "я".repeat(256);

    refused(
        &mut ann,
        &schemas,
        json!({"type": "create_conversation", "title": long}),
        "title",
    )
    .await;
    refused(
        &mut bot,
        &schemas,
        json!({"type": "create_conversation", "title": "k", "key": long}),
        "key",
    )
    .await;
    refused(
        &mut ann,
        &schemas,
        json!({"type": "open_context", "context": long}),
        "context",
    )
    .await;
    refused(
        &mut ann,
        &schemas,
        json!({"type": "open_context", "context": "order:1", "title": long}),
        "title",
    )
    .await;
    accepted(
        &mut bot,
        &schemas,
        json!({"type": "create_conversation", "title": just, "key": just}),
        "ack",
    )
    .await;
    accepted(
        &mut ann,
        &schemas,
        json!({"type": "open_context", "context": "order:1", "title": just}),
        "ack",
    )
    .await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": just}))
        .await["conversation"]["id"]
        .clone();

    // 32 KiB of text (bytes of UTF-8; in ASCII, the schema's maxLength).
    let text = "x".repeat(32 * 1024);
    let sent = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": text}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    assert!(documented(&schemas, ann.sent.last().unwrap()));
    let too_long = "x".repeat(32 * 1024 + 1);
    refused(
        &mut ann,
        &schemas,
        json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": too_long}),
        "text",
    )
    .await;
    refused(
        &mut ann,
        &schemas,
        json!({"type": "edit", "conversation_id": conv, "message_id": sent["message"]["id"], "text": too_long}),
        "text",
    )
    .await;
    check_received(&ann);
    check_received(&bot);
}

#[tokio::test]
async fn null_stands_for_an_absent_optional_field_without_a_default() {
    // As docs/protocol.md says: `null` is read as "left out" for optional
    // fields that have no default, and refused for those that have one.
    let (server, _dir) = TestServer::start().await;
    let app = server.register("null@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "is_group": null}))
        .await["conversation"]["id"]
        .clone();
    assert!(conv.is_string());
    let h = ann
        .request(json!({"type": "history", "conversation_id": conv, "limit": null, "after": null}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    let m = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "hi", "data": null, "recipients": null}))
        .await;
    assert_eq!(m["type"], "ack", "{m}");
    assert!(m["message"].get("data").is_none_or(Value::is_null), "{m}");
    let e = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": null, "data": 1}))
        .await;
    assert_eq!(e["code"], "invalid_request", "{e}");
    let e = ann
        .request(json!({"type": "create_conversation", "title": "u", "members": null}))
        .await;
    assert_eq!(e["code"], "invalid_request", "{e}");
    check_received(&ann);
}

/// A client that sends and reads frames of any size.
async fn unlimited_client(server: &TestServer, token: &str) -> Ws {
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    Ws::connect_with(
        server.ws_url(&format!("/api/v1/ws?token={token}")),
        server.tls.clone(),
        Some(config),
    )
    .await
}

#[tokio::test]
async fn a_frame_of_up_to_1_mib_is_answered_and_the_connection_stays_open() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("frame@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = unlimited_client(&server, &t1).await;
    for size in [128 * 1024 + 1, 1024 * 1024] {
        let head = r#"{"id":"big","type":"ping","pad":""#;
        let tail = r#""}"#;
        let frame = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
        assert_eq!(frame.len(), size);
        ann.send_text(frame).await;
        let e = ann.answer(&json!("big")).await;
        assert_eq!(e["code"], "frame_too_large", "{size}: {e}");
        let pong = ann.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "still open after {size} bytes");
    }
    check_received(&ann);
}

#[tokio::test]
async fn a_frame_over_1_mib_closes_with_1009() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("huge@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    // One frame just over the limit (the transport used to buffer it, then
    // drop the connection without a close frame), one over tungstenite's
    // own 16 MiB frame limit (refused from the frame header), and a message
    // of three 512 KiB fragments (1.5 MiB in all).
    let fragment = |opcode, last| {
        Message::Frame(Frame::message(
            "x".repeat(512 * 1024).into_bytes(),
            OpCode::Data(opcode),
            last,
        ))
    };
    let cases = [
        (
            "1 MiB + 1",
            vec![Message::Text("x".repeat(1024 * 1024 + 1).into())],
        ),
        (
            "17 MiB",
            vec![Message::Text("x".repeat(17 * 1024 * 1024).into())],
        ),
        (
            "3 fragments of 512 KiB",
            vec![
                fragment(Data::Text, false),
                fragment(Data::Continue, false),
                fragment(Data::Continue, true),
            ],
        ),
    ];
    for (size, frames) in cases {
        let ws = unlimited_client(&server, &t1).await;
        let (mut tx, mut rx) = ws.into_stream().split();
        // The server stops reading, so the write may never finish: write
        // and read at once.
        let writer = tokio::spawn(async move {
            for frame in frames {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
            tx
        });
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("{size} bytes: expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("a close frame within 10 s")
        .expect("a close code");
        assert_eq!(close.code, CloseCode::Size, "{size}: {close:?}");
        assert_eq!(close.reason.as_str(), "frame_too_large");
        writer.abort();
    }
    // The server serves others as before.
    let mut again = Ws::connect(&server, &t1, None).await;
    assert_eq!(again.request(json!({"type": "ping"})).await["type"], "pong");
}
