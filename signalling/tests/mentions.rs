//! Mentions through the real server, over real WebSocket clients:
//! structured in the message, counted per user in the conversation list
//! until read, listed by `mentions`, `@all` where the application allows
//! it, and a mention makes its user follow the thread.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, user_token};
use serde_json::{Value, json};

/// The `unread` and `mentions` of `conv` in the user's list.
async fn counts(ws: &mut Ws, conv: &Value) -> (Value, Value) {
    let list = ws.request(json!({"type": "list"})).await;
    let c = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| &c["id"] == conv)
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    (c["unread"].clone(), c["mentions"].clone())
}

#[tokio::test]
async fn mentions_are_counted_listed_and_followed() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("mentions@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&server, &app, "carl", &[]).await;
    let (_, u4) = user_token(&server, &app, "dora", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut carl = Ws::connect(&server, &t3, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "team", "members": [u2, u3]}))
        .await["conversation"]["id"]
        .clone();
    let send = |client_id: &str, text: &str, extra: Value| {
        let mut frame =
            json!({"type": "send", "conversation_id": conv, "client_id": client_id, "text": text});
        for (k, v) in extra.as_object().unwrap() {
            frame[k] = v.clone();
        }
        frame
    };

    let first = ann
        .request(send(
            "1",
            "@bob please check",
            json!({"mentions": [u2, u2]}),
        ))
        .await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["message"]["mentions"], json!([u2]), "kept once");
    assert_eq!(counts(&mut bob, &conv).await, (json!(1), json!(1)));
    assert_eq!(counts(&mut carl, &conv).await, (json!(1), json!(0)));
    assert_eq!(counts(&mut ann, &conv).await.1, json!(0), "not her own");

    // Only who sees the message may be mentioned.
    let r = ann
        .request(send("2", "@dora?", json!({"mentions": [u4]})))
        .await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    let r = ann
        .request(send(
            "3",
            "@carl (for Bob only)",
            json!({"mentions": [u3], "recipients": [u2]}),
        ))
        .await;
    assert_eq!(r["code"], "invalid_request", "{r}");

    // @all in a group reaches everyone's count.
    let all = ann
        .request(send("4", "@all standup in 5", json!({"mention_all": true})))
        .await;
    assert_eq!(all["message"]["mention_all"], true, "{all}");
    assert_eq!(counts(&mut bob, &conv).await, (json!(2), json!(2)));
    assert_eq!(counts(&mut carl, &conv).await, (json!(2), json!(1)));

    // `mentions` lists them, newest first; reading clears the count.
    let listed = bob.request(json!({"type": "mentions"})).await;
    let texts: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["@all standup in 5", "@bob please check"]);
    let listed = carl.request(json!({"type": "mentions"})).await;
    assert_eq!(listed["messages"].as_array().unwrap().len(), 1);
    bob.request(json!({"type": "read", "conversation_id": conv, "seq": 2}))
        .await;
    assert_eq!(counts(&mut bob, &conv).await, (json!(0), json!(0)));

    // The application may forbid @all; it is never for one-to-one.
    let mut bot = Ws::connect_bot(&server, &app).await;
    let r = bot
        .request(
            json!({"type": "conversation_settings", "conversation_id": conv, "mention_all": false}),
        )
        .await;
    assert_eq!(
        (r["mention_all"].clone(), r["pins_app_only"].clone()),
        (json!(false), json!(false)),
        "{r}"
    );
    let r = ann
        .request(send("5", "@all again", json!({"mention_all": true})))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let read = carl
        .request(json!({"type": "conversation_settings", "conversation_id": conv}))
        .await;
    assert_eq!(
        read["mention_all"], false,
        "members read the settings: {read}"
    );
    let pair = ann
        .request(json!({"type": "create_conversation", "title": "pair", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    let r = ann
        .request(json!({"type": "send", "conversation_id": pair, "client_id": "p", "text": "@all", "mention_all": true}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");

    // Mentioned in a reply, Carl follows its thread.
    let reply = ann
        .request(send(
            "6",
            "@carl what do you think?",
            json!({"thread_id": first["message"]["id"], "mentions": [u3]}),
        ))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let threads = carl.request(json!({"type": "threads"})).await;
    assert_eq!(
        threads["threads"][0]["id"], first["message"]["id"],
        "{threads}"
    );

    // Another application's user is never told of them.
    let other = server.register("other-mentions@example.com", "Other").await;
    let (t, _) = user_token(&server, &other, "oscar", &[]).await;
    let mut oscar = Ws::connect(&server, &t, None).await;
    assert_eq!(
        oscar.request(json!({"type": "mentions"})).await["messages"],
        json!([])
    );
    let r = oscar
        .request(json!({"type": "conversation_settings", "conversation_id": conv}))
        .await;
    assert_eq!(r["code"], "not_found", "{r}");
    server.stop().await;
}
