//! Threads through the real server, over real WebSocket clients: replies,
//! a reply to a reply, the conversation's top level with each root's
//! thread, a thread's own history, read mark and unread count, following,
//! deleted replies, and what is refused (strangers, other applications,
//! private messages).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, user_token};
use serde_json::{Value, json};

fn reply(conv: &Value, to: &Value, client_id: &str, text: &str) -> Value {
    json!({"type": "send", "conversation_id": conv, "client_id": client_id, "text": text,
        "thread_id": to})
}

#[tokio::test]
async fn replies_make_a_thread_with_its_own_history_read_mark_and_followers() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("threads@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&server, &app, "carl", &[]).await;
    let (t4, u4) = user_token(&server, &app, "dora", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut carl = Ws::connect(&server, &t3, None).await;
    let mut dora = Ws::connect(&server, &t4, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "team", "members": [u2, u3, u4]}))
        .await["conversation"]["id"]
        .clone();
    let root = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "r", "text": "Deploy on Friday?"}))
        .await["message"]
        .clone();
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "o", "text": "Lunch?"}),
    )
    .await;

    // Bob replies; Carl replies to Bob's reply: both land in the root's thread.
    let r1 = bob.request(reply(&conv, &root["id"], "b1", "yes")).await;
    assert_eq!(r1["type"], "ack", "{r1}");
    assert_eq!(
        (
            r1["message"]["thread_id"].clone(),
            r1["message"]["thread_seq"].clone()
        ),
        (root["id"].clone(), json!(1))
    );
    let r2 = carl
        .request(reply(&conv, &r1["message"]["id"], "c1", "after 15:00"))
        .await;
    assert_eq!(r2["message"]["thread_id"], root["id"], "{r2}");
    // Every member gets the replies as messages naming the thread.
    let replies: Vec<Value> = {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = dora.event().await;
            if e["event"]["kind"] == "message" && !e["event"]["message"]["thread_id"].is_null() {
                seen.push(e["event"]["message"].clone());
            }
        }
        seen
    };
    assert_eq!(replies[1]["text"], "after 15:00");

    // The top level shows the root with its thread, not the replies.
    let top = ann
        .request(json!({"type": "history", "conversation_id": conv, "top_level": true}))
        .await;
    let texts: Vec<&str> = top["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Deploy on Friday?", "Lunch?"]);
    let thread = &top["messages"][0]["thread"];
    assert_eq!(thread["replies"], 2, "{thread}");
    assert_eq!(thread["last_reply_seq"], r2["message"]["seq"]);
    assert_eq!(thread["unread"], 2, "Ann has read none of the replies");
    assert!(top["messages"][1].get("thread").is_none());
    // Bob has one unread reply (Carl's), not his own.
    let seen_by_bob = bob
        .request(json!({"type": "history", "conversation_id": conv, "top_level": true}))
        .await;
    assert_eq!(seen_by_bob["messages"][0]["thread"]["unread"], 1);

    // The thread's own history, asked by any of its messages.
    let own = ann
        .request(
            json!({"type": "history", "conversation_id": conv, "thread_id": r2["message"]["id"]}),
        )
        .await;
    let texts: Vec<&str> = own["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["yes", "after 15:00"]);
    // The plain history still has everything.
    assert_eq!(ann.history(conv.as_str().unwrap()).await.len(), 4);

    // Ann reads the thread: her thread mark, not the conversation's.
    let read = ann
        .request(
            json!({"type": "read", "conversation_id": conv, "thread_id": root["id"],
            "seq": r2["message"]["seq"]}),
        )
        .await;
    assert_eq!(read["read_seq"], r2["message"]["seq"], "{read}");
    let e = loop {
        let e = ann.event().await;
        if e["event"]["kind"] == "read" {
            break e["event"].clone();
        }
    };
    assert_eq!(e["thread_id"], root["id"]);
    let top = ann
        .request(json!({"type": "history", "conversation_id": conv, "top_level": true}))
        .await;
    assert_eq!(top["messages"][0]["thread"]["unread"], 0);
    let list = ann.request(json!({"type": "list"})).await;
    assert_eq!(
        list["conversations"][0]["unread"], 4,
        "the conversation's mark did not move: {list}"
    );

    // Following: the root's author and the repliers follow; Dora does not
    // until she asks.
    for ws in [&mut ann, &mut bob, &mut carl] {
        let threads = ws.request(json!({"type": "threads"})).await;
        assert_eq!(threads["threads"][0]["id"], root["id"], "{threads}");
        assert_eq!(threads["threads"][0]["thread"]["replies"], 2);
    }
    assert_eq!(
        dora.request(json!({"type": "threads"})).await["threads"],
        json!([])
    );
    let f = dora
        .request(
            json!({"type": "follow", "conversation_id": conv, "thread_id": r1["message"]["id"]}),
        )
        .await;
    assert_eq!(f["type"], "ack", "{f}");
    let threads = dora.request(json!({"type": "threads"})).await;
    assert_eq!(threads["threads"][0]["thread"]["unread"], 2, "{threads}");
    dora.request(json!({"type": "follow", "conversation_id": conv, "thread_id": root["id"], "unfollow": true}))
        .await;
    assert_eq!(
        dora.request(json!({"type": "threads"})).await["threads"],
        json!([])
    );

    // A deleted reply stays in the thread, shown deleted, and is no longer
    // counted.
    carl.request(
        json!({"type": "delete", "conversation_id": conv, "message_id": r2["message"]["id"]}),
    )
    .await;
    let own = ann
        .request(json!({"type": "history", "conversation_id": conv, "thread_id": root["id"]}))
        .await;
    assert_eq!(own["messages"].as_array().unwrap().len(), 2);
    assert!(own["messages"][1]["deleted_at"].is_string());
    let top = ann
        .request(json!({"type": "history", "conversation_id": conv, "top_level": true}))
        .await;
    assert_eq!(top["messages"][0]["thread"]["replies"], 1);
    let _ = (u1, u3);
    server.stop().await;
}

#[tokio::test]
async fn replies_are_refused_where_they_would_leak_or_go_nowhere() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("thread-refusals@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, _) = user_token(&server, &app, "carl", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut carl = Ws::connect(&server, &t3, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "pair", "members": [u2], "is_group": true}))
        .await["conversation"]["id"]
        .clone();
    let root = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "r", "text": "root"}))
        .await["message"]["id"]
        .clone();
    let private = ann
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "p", "text": "for Bob",
            "recipients": [u2]}),
        )
        .await["message"]["id"]
        .clone();
    let unknown = json!("00000000-0000-4000-8000-000000000000");
    for (req, code) in [
        (reply(&conv, &private, "x1", "re"), "invalid_request"),
        (reply(&conv, &unknown, "x2", "re"), "not_found"),
        (
            json!({"type": "send", "conversation_id": conv, "client_id": "x3", "text": "re",
                "thread_id": root, "recipients": [u2]}),
            "invalid_request",
        ),
        (
            json!({"type": "history", "conversation_id": conv, "thread_id": root, "top_level": true}),
            "invalid_request",
        ),
    ] {
        let r = bob.request(req.clone()).await;
        assert_eq!(r["code"], code, "{req}: {r}");
    }
    // A stranger, and another application's user, reach nothing.
    for req in [
        reply(&conv, &root, "s1", "me too"),
        json!({"type": "history", "conversation_id": conv, "thread_id": root}),
        json!({"type": "follow", "conversation_id": conv, "thread_id": root}),
        json!({"type": "read", "conversation_id": conv, "thread_id": root, "seq": 1}),
    ] {
        let r = carl.request(req.clone()).await;
        assert_eq!(r["code"], "forbidden", "{req}: {r}");
    }
    let other = server.register("other-threads@example.com", "Other").await;
    let (t, _) = user_token(&server, &other, "oscar", &[]).await;
    let mut oscar = Ws::connect(&server, &t, None).await;
    for req in [
        reply(&conv, &root, "o1", "hi"),
        json!({"type": "history", "conversation_id": conv, "thread_id": root}),
        json!({"type": "follow", "conversation_id": conv, "thread_id": root}),
    ] {
        let r = oscar.request(req.clone()).await;
        assert_eq!(r["code"], "not_found", "{req}: {r}");
    }
    assert_eq!(
        oscar.request(json!({"type": "threads"})).await["threads"],
        json!([])
    );
    // A deleted root takes no more replies; its thread stays readable.
    bob.request(reply(&conv, &root, "early", "just in time"))
        .await;
    ann.request(json!({"type": "delete", "conversation_id": conv, "message_id": root}))
        .await;
    let r = bob.request(reply(&conv, &root, "late", "too late")).await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    let own = bob
        .request(json!({"type": "history", "conversation_id": conv, "thread_id": root}))
        .await;
    assert_eq!(own["messages"][0]["text"], "just in time", "{own}");
    server.stop().await;
}
