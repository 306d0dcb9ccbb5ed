//! Conversations cannot be squatted: keys and "all users" conversations
//! are the application's (a user asking gets `forbidden`, so the bot is
//! never handed a user's conversation), and a one-to-one conversation
//! never gets more members (`not_a_group`).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, user_token};
use serde_json::json;

#[tokio::test]
async fn keys_and_all_users_conversations_are_the_applications() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("keys@example.com", "ERP").await;
    let (token, ann) = user_token(&server, &app, "ann", &[]).await;
    let mut user = Ws::connect(&server, &token, None).await;
    let mut bot = Ws::connect_bot(&server, &app).await;

    // Ann tries to take the key the bot will use, and an all-users room.
    for request in [
        json!({"type": "create_conversation", "title": "Support", "key": "support"}),
        json!({"type": "create_conversation", "title": "Everyone", "all_users": true}),
    ] {
        let r = user.request(request).await;
        assert_eq!(r["code"], "forbidden", "{r}");
    }
    // The bot's key names the bot's conversation, found again by key.
    let first = bot
        .request(json!({"type": "create_conversation", "title": "Support", "members": [ann], "key": "support"}))
        .await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["conversation"]["title"], "Support");
    let again = bot
        .request(json!({"type": "create_conversation", "title": "Other", "key": "support"}))
        .await;
    assert_eq!(again["conversation"]["id"], first["conversation"]["id"]);
    let all = bot
        .request(json!({"type": "create_conversation", "title": "Everyone", "all_users": true}))
        .await;
    assert_eq!(all["conversation"]["all_users"], true, "{all}");
    // Ann lists the bot's two conversations, and none of her own.
    let list = user.request(json!({"type": "list"})).await;
    let titles: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 2, "{list}");
    assert!(titles.contains(&"Support") && titles.contains(&"Everyone"));
    server.stop().await;
}

#[tokio::test]
async fn a_one_to_one_conversation_gets_no_more_members() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("pair@example.com", "ERP").await;
    let (token, _) = user_token(&server, &app, "ann", &[]).await;
    let (_, bob) = user_token(&server, &app, "bob", &[]).await;
    let (_, carl) = user_token(&server, &app, "carl", &[]).await;
    let mut ann = Ws::connect(&server, &token, None).await;
    let mut bot = Ws::connect_bot(&server, &app).await;

    let pair = ann
        .request(json!({"type": "create_conversation", "title": "Ann and Bob", "members": [bob]}))
        .await;
    assert_eq!(pair["conversation"]["is_group"], false, "{pair}");
    let pair = pair["conversation"]["id"].clone();
    // Neither a member nor the application adds a third person.
    for ws in [&mut ann, &mut bot] {
        let r = ws
            .request(json!({"type": "add_members", "conversation_id": pair, "members": [carl]}))
            .await;
        assert_eq!(r["code"], "not_a_group", "{r}");
    }
    let members = ann
        .request(json!({"type": "members", "conversation_id": pair}))
        .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    // Nor is a "one-to-one" of three created.
    let three = ann
        .request(json!({"type": "create_conversation", "title": "x", "members": [bob, carl], "is_group": false}))
        .await;
    assert_eq!(three["code"], "invalid_request", "{three}");
    // A group takes new members.
    let group = ann
        .request(json!({"type": "create_conversation", "title": "Team", "members": [bob], "is_group": true}))
        .await["conversation"]["id"]
        .clone();
    let added = ann
        .request(json!({"type": "add_members", "conversation_id": group, "members": [carl]}))
        .await;
    assert_eq!(added["type"], "ack", "{added}");
    server.stop().await;
}
