//! Access to a discussion bound to a business object (a contextual
//! conversation) follows the application: a session sees its events (live
//! and replayed), history, search hits, list entry, files and calls only
//! while its token's `ctx` claim or a grant vouches for the object, and a
//! withdrawn grant ends all of it at once. Also: unread counts leave out
//! messages addressed to others.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{App, TestServer, Ws, user_token};
use reqwest::StatusCode;
use serde_json::{Value, json};

const OBJECT: &str = "order:7";

/// Grants (`true`) or withdraws Ann's access to [`OBJECT`], as the
/// application's server does.
async fn grant(server: &TestServer, app: &App, user: &str, granted: bool) {
    let url = server.url(&format!("/api/v1/users/{user}/contexts/order%3A7"));
    let request = if granted {
        server.client.put(url)
    } else {
        server.client.delete(url)
    };
    let r = request
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Uploads a small file to `conversation` with `token`, attaches it to a
/// message sent on `ws`; returns the file id.
async fn attach_file(
    server: &TestServer,
    token: &str,
    ws: &mut Ws,
    conversation: &Value,
) -> String {
    let bytes = b"the plan".to_vec();
    let ticket = common::json(
        server
            .post(&format!(
                "/api/v1/conversations/{}/files",
                conversation.as_str().unwrap()
            ))
            .bearer_auth(token)
            .json(&json!({"name": "plan.txt", "size": bytes.len(), "content_type": "text/plain"})),
    )
    .await;
    let put = server
        .client
        .put(ticket["upload"]["url"].as_str().unwrap())
        .header("content-type", "text/plain")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let file = ticket["file"]["id"].as_str().unwrap().to_owned();
    let done = server
        .post(&format!("/api/v1/files/{file}/complete"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let sent = ws
        .request(json!({"type": "send", "conversation_id": conversation, "client_id": "file", "attachments": [{"file_id": file}]}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    file
}

/// The status of `GET /api/v1/files/{file}` and of asking to upload to
/// `conversation`, with `token`.
async fn file_statuses(
    server: &TestServer,
    token: &str,
    file: &str,
    conversation: &Value,
) -> (StatusCode, StatusCode) {
    let get = server
        .get(&format!("/api/v1/files/{file}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    let upload = server
        .post(&format!(
            "/api/v1/conversations/{}/files",
            conversation.as_str().unwrap()
        ))
        .bearer_auth(token)
        .json(&json!({"name": "x.txt", "size": 1, "content_type": "text/plain"}))
        .send()
        .await
        .unwrap()
        .status();
    (get, upload)
}

/// Bob creates a group with Ann: a `conversation` event she must see,
/// after every earlier event of hers (one queue, one log, in order).
async fn marker(bob: &mut Ws, ann: &str, title: &str) -> Value {
    let ack = bob
        .request(json!({"type": "create_conversation", "title": title, "members": [ann], "is_group": true}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["conversation"]["id"].clone()
}

/// Frames up to the `conversation` event of `marker`; none may be about
/// `hidden` (the raw frames are searched for its id).
async fn nothing_about_until(ws: &mut Ws, hidden: &Value, marker: &Value) {
    let hidden = hidden.as_str().unwrap();
    loop {
        let f = match ws.events.pop_front() {
            Some(f) => f,
            None => ws.frame().await,
        };
        assert!(
            !f.to_string().contains(hidden),
            "a session without access got {f}"
        );
        if f["type"] == "event"
            && f["event"]["kind"] == "conversation"
            && &f["event"]["conversation"]["id"] == marker
        {
            break;
        }
    }
    for f in ws.ephemerals.iter().chain(&ws.events) {
        assert!(!f.to_string().contains(hidden), "{f}");
    }
}

fn listed(list: &Value, conversation: &Value) -> bool {
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| &c["id"] == conversation)
}

#[tokio::test]
async fn an_object_discussion_is_seen_only_while_the_claim_or_a_grant_vouches_for_it() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("access@example.com", "ERP").await;
    // Ann has two tokens: one that claims the order, one that does not.
    let (claiming, ann) = user_token(&server, &app, "ann", &[OBJECT]).await;
    let (plain, ann_again) = user_token(&server, &app, "ann", &[]).await;
    assert_eq!(ann, ann_again);
    let (bob_token, _) = user_token(&server, &app, "bob", &[OBJECT]).await;
    let mut with_claim = Ws::connect(&server, &claiming, None).await;
    let mut bob = Ws::connect(&server, &bob_token, None).await;
    let opened = with_claim
        .request(json!({"type": "open_context", "context": OBJECT}))
        .await;
    assert_eq!(opened["type"], "ack", "{opened}");
    let conv = opened["conversation"]["id"].clone();
    bob.request(json!({"type": "open_context", "context": OBJECT}))
        .await;
    let file = attach_file(&server, &claiming, &mut with_claim, &conv).await;

    // A second session of Ann's, without the claim and without a grant.
    let mut without = Ws::connect(&server, &plain, None).await;
    let since = without.welcome["event_seq"].as_u64().unwrap();
    let sent = bob
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "secret plan"}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let call = bob
        .request(json!({"type": "call_start", "conversation_id": conv, "media": "audio"}))
        .await;
    assert_eq!(call["type"], "ack", "{call}");
    let call = call["call"]["id"].clone();
    let m1 = marker(&mut bob, &ann, "m1").await;
    // The session with the claim sees the message live; the other one
    // neither the message nor the ringing call.
    loop {
        let e = with_claim.event().await;
        if e["event"]["kind"] == "message" && e["event"]["message"]["text"] == "secret plan" {
            break;
        }
    }
    nothing_about_until(&mut without, &conv, &m1).await;
    // Nor on resume.
    let mut resumed = Ws::connect(&server, &plain, Some(since)).await;
    nothing_about_until(&mut resumed, &conv, &m1).await;
    // No list entry, no search hit, no history, no members, no files, no call.
    let list = without.request(json!({"type": "list"})).await;
    assert!(!listed(&list, &conv), "{list}");
    assert!(listed(&list, &m1), "{list}");
    let found = without
        .request(json!({"type": "search", "query": "secret"}))
        .await;
    assert_eq!(found["messages"], json!([]), "{found}");
    for request in [
        json!({"type": "history", "conversation_id": conv}),
        json!({"type": "members", "conversation_id": conv}),
        json!({"type": "send", "conversation_id": conv, "client_id": "x", "text": "let me in"}),
        json!({"type": "call_join", "call_id": call}),
    ] {
        let r = without.request(request).await;
        assert_eq!(r["code"], "forbidden", "{r}");
    }
    // Not even the file Ann uploaded with her other token.
    assert_eq!(
        file_statuses(&server, &plain, &file, &conv).await,
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)
    );
    // The token with the claim still has all of it.
    let list = with_claim.request(json!({"type": "list"})).await;
    assert!(listed(&list, &conv), "{list}");
    assert_eq!(
        file_statuses(&server, &claiming, &file, &conv).await.0,
        StatusCode::OK
    );

    // The application grants the object: the same session, at once.
    grant(&server, &app, &ann, true).await;
    let e = without.event().await;
    assert_eq!(e["event"]["kind"], "conversation", "{e}");
    assert_eq!(e["event"]["conversation"]["id"], conv);
    bob.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": "granted news"}),
    )
    .await;
    let e = without.event().await;
    assert_eq!(e["event"]["message"]["text"], "granted news", "{e}");
    let list = without.request(json!({"type": "list"})).await;
    assert!(listed(&list, &conv), "{list}");
    let found = without
        .request(json!({"type": "search", "query": "secret"}))
        .await;
    assert_eq!(found["messages"][0]["text"], "secret plan", "{found}");
    let history = without
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    assert_eq!(history["type"], "history", "{history}");
    assert_eq!(
        file_statuses(&server, &plain, &file, &conv).await,
        (StatusCode::OK, StatusCode::CREATED)
    );
    let joined = without
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    // Resuming now replays what the grant opens.
    let mut resumed = Ws::connect(&server, &plain, Some(since)).await;
    loop {
        let e = resumed.event().await;
        if e["event"]["message"]["text"] == "secret plan" {
            break;
        }
    }

    // Withdrawn: a `removed` event, and everything stops at once.
    grant(&server, &app, &ann, false).await;
    loop {
        let e = without.event().await;
        if e["event"]["kind"] == "removed" {
            assert_eq!(e["event"]["conversation_id"], conv);
            break;
        }
    }
    bob.request(json!({"type": "send", "conversation_id": conv, "client_id": "3", "text": "withdrawn news"}))
        .await;
    let m2 = marker(&mut bob, &ann, "m2").await;
    // Frames kept from before the withdrawal (the call Ann joined) are
    // not what is checked.
    without.events.clear();
    without.ephemerals.clear();
    nothing_about_until(&mut without, &conv, &m2).await;
    let list = without.request(json!({"type": "list"})).await;
    assert!(!listed(&list, &conv), "{list}");
    let found = without
        .request(json!({"type": "search", "query": "news"}))
        .await;
    assert_eq!(found["messages"], json!([]), "{found}");
    let history = without
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    assert_eq!(history["code"], "forbidden", "{history}");
    assert_eq!(
        file_statuses(&server, &plain, &file, &conv).await,
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)
    );
    server.stop().await;
}

#[tokio::test]
async fn unread_counts_leave_out_messages_addressed_to_others() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("unread@example.com", "ERP").await;
    let (ann_token, _) = user_token(&server, &app, "ann", &[]).await;
    let (bob_token, bob) = user_token(&server, &app, "bob", &[]).await;
    let (_, carl) = user_token(&server, &app, "carl", &[]).await;
    let mut ann = Ws::connect(&server, &ann_token, None).await;
    let mut bob_ws = Ws::connect(&server, &bob_token, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "trio", "members": [bob, carl]}))
        .await["conversation"]["id"]
        .clone();
    let unread = |list: &Value| {
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == conv)
            .map(|c| c["unread"].clone())
    };
    let to_carl = bob_ws
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "for Carl only", "recipients": [carl]}))
        .await;
    assert_eq!(to_carl["type"], "ack", "{to_carl}");
    let list = ann.request(json!({"type": "list"})).await;
    assert_eq!(unread(&list), Some(json!(0)), "{list}");
    bob_ws
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": "for all"}),
        )
        .await;
    let list = ann.request(json!({"type": "list"})).await;
    assert_eq!(unread(&list), Some(json!(1)), "{list}");
    server.stop().await;
}
