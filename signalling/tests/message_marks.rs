//! Reactions and pins through the real server, over real WebSocket
//! clients: who may, what the others see (events, history, resume), the
//! limits, and that nothing crosses applications or reaches a message a
//! user cannot see.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, user_token};
use serde_json::{Value, json};

/// Ann's group with Bob, Carl outside it, and Ann's first message there:
/// the three connections, their ids, the conversation and the message.
async fn group_with_a_message(
    server: &TestServer,
    app: &common::App,
) -> ([Ws; 3], [String; 3], Value, Value) {
    let (t1, u1) = user_token(server, app, "ann", &[]).await;
    let (t2, u2) = user_token(server, app, "bob", &[]).await;
    let (t3, u3) = user_token(server, app, "carl", &[]).await;
    let mut ann = Ws::connect(server, &t1, None).await;
    let mut bob = Ws::connect(server, &t2, None).await;
    let carl = Ws::connect(server, &t3, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "team", "members": [u2], "is_group": true}))
        .await["conversation"]["id"]
        .clone();
    let sent = ann
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "ship it?"}),
        )
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    // Both have the conversation and the message in their logs.
    assert_eq!(ann.event().await["event"]["kind"], "conversation");
    assert_eq!(ann.event().await["event"]["kind"], "message");
    assert_eq!(bob.event().await["event"]["kind"], "conversation");
    assert_eq!(bob.event().await["event"]["kind"], "message");
    (
        [ann, bob, carl],
        [u1, u2, u3],
        conv,
        sent["message"]["id"].clone(),
    )
}

fn react(conv: &Value, message: &Value, emoji: &str, remove: bool) -> Value {
    json!({"type": "react", "conversation_id": conv, "message_id": message,
        "emoji": emoji, "remove": remove})
}

#[tokio::test]
async fn members_react_and_everyone_sees_counts_and_who() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("react@example.com", "ERP").await;
    let ([mut ann, mut bob, mut carl], [u1, u2, _], conv, msg) =
        group_with_a_message(&server, &app).await;

    let ack = bob.request(react(&conv, &msg, "👍", false)).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (ack["changed"].clone(), ack["count"].clone()),
        (json!(true), json!(1))
    );
    for ws in [&mut ann, &mut bob] {
        let e = ws.event().await["event"].clone();
        assert_eq!(
            e,
            json!({"kind": "reaction", "count": 1, "conversation_id": conv, "message_id": msg,
                "seq": 1, "user_id": u2, "added": true, "emoji": "👍"})
        );
    }
    // The same again changes nothing and tells nobody.
    let again = bob.request(react(&conv, &msg, "👍", false)).await;
    assert_eq!(again["changed"], false, "{again}");
    assert!(again.get("count").is_none(), "{again}");
    let ack = ann.request(react(&conv, &msg, "👍", false)).await;
    assert_eq!(ack["count"], 2, "{ack}");
    let e = bob.event().await["event"].clone();
    assert_eq!(
        (e["user_id"].clone(), e["count"].clone()),
        (json!(u1), json!(2))
    );
    ann.request(react(&conv, &msg, ":tada:", false)).await;

    // History shows each reaction once, in the order of first use, with
    // who chose it.
    let history = carl_or(&mut ann, &conv).await;
    assert_eq!(
        history[0]["reactions"],
        json!([{"emoji": "👍", "count": 2, "users": [u2, u1]},
               {"emoji": ":tada:", "count": 1, "users": [u1]}])
    );

    // An edit keeps them; taking one back is an event with the new count.
    ann.request(
        json!({"type": "edit", "conversation_id": conv, "message_id": msg, "text": "ship it!"}),
    )
    .await;
    let back = bob.request(react(&conv, &msg, "👍", true)).await;
    assert_eq!(
        (back["changed"].clone(), back["count"].clone()),
        (json!(true), json!(1))
    );
    let history = carl_or(&mut ann, &conv).await;
    assert_eq!(history[0]["text"], "ship it!");
    assert_eq!(
        history[0]["reactions"][0],
        json!({"emoji": "👍", "count": 1, "users": [u1]})
    );
    let not_there = bob.request(react(&conv, &msg, "👍", true)).await;
    assert_eq!(not_there["changed"], false, "{not_there}");

    // Bad reactions, strangers and other messages are refused.
    for bad in ["", "two words", &"x".repeat(65)] {
        let r = bob.request(react(&conv, &msg, bad, false)).await;
        assert_eq!(r["code"], "invalid_request", "{bad:?}: {r}");
    }
    let r = carl.request(react(&conv, &msg, "👍", false)).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = bob
        .request(react(
            &conv,
            &json!("00000000-0000-4000-8000-000000000000"),
            "👍",
            false,
        ))
        .await;
    assert_eq!(r["code"], "not_found", "{r}");

    // At most 20 different reactions on one message (the ones there
    // still take more users).
    for i in 0..18 {
        let r = bob
            .request(react(&conv, &msg, &format!(":r{i}:"), false))
            .await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let full = bob
        .request(react(&conv, &msg, ":one-too-many:", false))
        .await;
    assert_eq!(full["code"], "limit_reached", "{full}");
    let r = bob.request(react(&conv, &msg, ":tada:", false)).await;
    assert_eq!(r["count"], 2, "{r}");

    // A deleted message takes its reactions with it and takes no more.
    ann.request(json!({"type": "delete", "conversation_id": conv, "message_id": msg}))
        .await;
    let r = bob.request(react(&conv, &msg, "👍", false)).await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    let history = carl_or(&mut ann, &conv).await;
    assert!(history[0].get("reactions").is_none(), "{}", history[0]);
    server.stop().await;
}

/// The whole history of `conv` as `ws` reads it.
async fn carl_or(ws: &mut Ws, conv: &Value) -> Vec<Value> {
    ws.history(conv.as_str().unwrap()).await
}

#[tokio::test]
async fn reactions_reach_only_who_sees_the_message_and_come_back_on_resume() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("private@example.com", "ERP").await;
    let ([mut ann, mut bob, _carl], [u1, u2, _], conv, _) =
        group_with_a_message(&server, &app).await;
    let (t4, u4) = user_token(&server, &app, "dora", &[]).await;
    let mut dora = Ws::connect(&server, &t4, None).await;
    ann.request(json!({"type": "add_members", "conversation_id": conv, "members": [u4]}))
        .await;
    assert_eq!(dora.event().await["event"]["kind"], "conversation");
    // A message for Bob only: Dora can neither see nor react to it.
    let private = ann
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "p",
            "text": "for Bob", "recipients": [u2]}),
        )
        .await["message"]["id"]
        .clone();
    let r = dora.request(react(&conv, &private, "👀", false)).await;
    assert_eq!(r["code"], "not_found", "{r}");

    // Bob goes away; Ann reacts to the private message; Bob's resume
    // brings the reaction, and Dora never gets it.
    let head = loop {
        let e = bob.event().await;
        if e["event"]["kind"] == "message" && e["event"]["message"]["id"] == private {
            break e["seq"].as_u64().unwrap();
        }
    };
    drop(bob);
    let r = ann.request(react(&conv, &private, "✅", false)).await;
    assert_eq!(r["count"], 1, "{r}");
    let (t2, _) = user_token(&server, &app, "bob", &[]).await;
    let mut bob = Ws::connect(&server, &t2, Some(head)).await;
    let e = bob.event().await;
    assert_eq!(e["seq"].as_u64().unwrap(), head + 1);
    assert_eq!(
        (e["event"]["kind"].clone(), e["event"]["user_id"].clone()),
        (json!("reaction"), json!(u1))
    );
    // Dora's next event is the next message, not the reaction.
    ann.request(json!({"type": "send", "conversation_id": conv, "client_id": "n", "text": "all"}))
        .await;
    let next = dora.event().await;
    assert_eq!(next["event"]["kind"], "message", "{next}");
    assert_eq!(next["event"]["message"]["text"], "all");
    server.stop().await;
}

fn pin(conv: &Value, message: &Value, unpin: bool) -> Value {
    json!({"type": "pin", "conversation_id": conv, "message_id": message, "unpin": unpin})
}

#[tokio::test]
async fn members_pin_unless_the_application_keeps_pins_to_itself() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("pins@example.com", "ERP").await;
    let ([mut ann, mut bob, mut carl], [_, u2, _], conv, msg) =
        group_with_a_message(&server, &app).await;

    let ack = bob.request(pin(&conv, &msg, false)).await;
    assert_eq!(
        (ack["changed"].clone(), ack["count"].clone()),
        (json!(true), json!(1))
    );
    let e = ann.event().await["event"].clone();
    assert_eq!(
        e,
        json!({"kind": "pin", "count": 1, "conversation_id": conv, "message_id": msg, "seq": 1,
            "pinned": true, "by": {"kind": "user", "user_id": u2}})
    );
    let again = ann.request(pin(&conv, &msg, false)).await;
    assert_eq!(again["changed"], false, "{again}");
    let pins = ann
        .request(json!({"type": "pins", "conversation_id": conv}))
        .await;
    assert_eq!(pins["type"], "pins", "{pins}");
    assert_eq!(pins["app_only"], false);
    assert_eq!(pins["messages"][0]["id"], msg);
    assert_eq!(pins["messages"][0]["text"], "ship it?");
    // Carl is no member: neither pins nor reads the pins.
    for r in [
        carl.request(pin(&conv, &msg, false)).await,
        carl.request(json!({"type": "pins", "conversation_id": conv}))
            .await,
    ] {
        assert_eq!(r["code"], "forbidden", "{r}");
    }

    // The application keeps pins to itself: members may not, its bot may.
    let r = bob
        .request(json!({"type": "conversation_settings", "conversation_id": conv, "pins_app_only": true}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let mut bot = Ws::connect_bot(&server, &app).await;
    let r = bot
        .request(json!({"type": "conversation_settings", "conversation_id": conv, "pins_app_only": true}))
        .await;
    assert_eq!(
        (r["type"].clone(), r["pins_app_only"].clone()),
        (json!("conversation_settings"), json!(true)),
        "{r}"
    );
    let r = bob.request(pin(&conv, &msg, true)).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = bot.request(pin(&conv, &msg, true)).await;
    assert_eq!(
        (r["changed"].clone(), r["count"].clone()),
        (json!(true), json!(0))
    );
    let e = loop {
        let e = bob.event().await;
        if e["event"]["kind"] == "pin" && e["event"]["pinned"] == false {
            break e["event"].clone();
        }
    };
    assert_eq!(e["by"], json!({"kind": "app"}));
    let pins = bob
        .request(json!({"type": "pins", "conversation_id": conv}))
        .await;
    assert_eq!(
        (pins["messages"].clone(), pins["app_only"].clone()),
        (json!([]), json!(true))
    );

    // At most 50 pinned messages in a conversation.
    for i in 0..51 {
        let m = bot
            .request(json!({"type": "send", "conversation_id": conv, "client_id": format!("b{i}"), "text": i.to_string()}))
            .await["message"]["id"]
            .clone();
        let r = bot.request(pin(&conv, &m, false)).await;
        if i < 50 {
            assert_eq!(r["count"], i + 1, "{r}");
        } else {
            assert_eq!(r["code"], "limit_reached", "{r}");
        }
    }
    let pins = bob
        .request(json!({"type": "pins", "conversation_id": conv}))
        .await;
    let listed = pins["messages"].as_array().unwrap();
    assert_eq!(listed.len(), 50);
    assert_eq!(listed[0]["text"], "49", "most recently pinned first");
    server.stop().await;
}

#[tokio::test]
async fn reactions_and_pins_never_cross_applications() {
    let (server, _dir) = TestServer::start().await;
    let a = server.register("a@example.com", "A").await;
    let b = server.register("b@example.com", "B").await;
    let ([mut ann, ..], _, conv, msg) = group_with_a_message(&server, &a).await;
    let (tb, _) = user_token(&server, &b, "ben", &[]).await;
    let mut ben = Ws::connect(&server, &tb, None).await;
    let mut bot_b = Ws::connect_bot(&server, &b).await;
    let requests = [
        react(&conv, &msg, "👍", false),
        pin(&conv, &msg, false),
        json!({"type": "pins", "conversation_id": conv}),
        json!({"type": "conversation_settings", "conversation_id": conv, "pins_app_only": true}),
    ];
    for req in &requests {
        let r = ben.request(req.clone()).await;
        assert_eq!(r["code"], "not_found", "{req}: {r}");
        let r = bot_b.request(req.clone()).await;
        assert_eq!(r["code"], "not_found", "{req}: {r}");
    }
    // Nothing reached A's conversation.
    let history = ann.history(conv.as_str().unwrap()).await;
    assert!(history[0].get("reactions").is_none(), "{}", history[0]);
    let pins = ann
        .request(json!({"type": "pins", "conversation_id": conv}))
        .await;
    assert_eq!(pins["messages"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn read_by_comes_from_the_read_marks_of_who_may_see_the_message() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("readby@example.com", "ERP").await;
    let ([mut ann, mut bob, mut carl], [_, u2, u3], conv, msg) =
        group_with_a_message(&server, &app).await;
    let read_by = |m: &Value| json!({"type": "read_by", "conversation_id": conv, "message_id": m});
    // Nobody but its author has read it yet; the author is left out.
    ann.request(json!({"type": "read", "conversation_id": conv, "seq": 1}))
        .await;
    let r = ann.request(read_by(&msg)).await;
    assert_eq!(r["type"], "read_by", "{r}");
    assert_eq!(
        (r["users"].clone(), r["truncated"].clone()),
        (json!([]), json!(false))
    );
    // Bob reads past it: he has read it.
    ann.request(json!({"type": "add_members", "conversation_id": conv, "members": [u3]}))
        .await;
    let later = ann
        .request(
            json!({"type": "send", "conversation_id": conv, "client_id": "2", "text": "later"}),
        )
        .await["message"]["id"]
        .clone();
    bob.request(json!({"type": "read", "conversation_id": conv, "seq": 2}))
        .await;
    assert_eq!(ann.request(read_by(&msg)).await["users"], json!([u2]));
    carl.request(json!({"type": "read", "conversation_id": conv, "seq": 1}))
        .await;
    let mut both = ann.request(read_by(&msg)).await["users"]
        .as_array()
        .unwrap()
        .clone();
    both.sort_by_key(|u| u.as_str().unwrap().to_owned());
    let mut expected = vec![json!(u2), json!(u3)];
    expected.sort_by_key(|u| u.as_str().unwrap().to_owned());
    assert_eq!(both, expected);
    assert_eq!(ann.request(read_by(&later)).await["users"], json!([u2]));
    // Who leaves no longer counts.
    carl.request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u3}))
        .await;
    assert_eq!(ann.request(read_by(&msg)).await["users"], json!([u2]));
    let r = carl.request(read_by(&msg)).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // Another application's user finds nothing.
    let other = server.register("other@example.com", "Other").await;
    let (t, _) = user_token(&server, &other, "oscar", &[]).await;
    let mut oscar = Ws::connect(&server, &t, None).await;
    let r = oscar.request(read_by(&msg)).await;
    assert_eq!(r["code"], "not_found", "{r}");
    server.stop().await;
}
