//! Real-time messaging over real WebSocket clients (tokio-tungstenite)
//! against the running server.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{App, TestServer, Ws, default_clock, user_token};
use serde_json::{Value, json};

#[tokio::test]
async fn two_users_chat_in_a_group_and_on_a_business_object() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("chat@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &["order:42"]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &["order:42"]).await;
    let (t3, _u3) = user_token(&server, &app, "eve", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut eve = Ws::connect(&server, &t3, None).await;

    // A group between Ann and Bob.
    let created = ann
        .request(json!({"type": "create_conversation", "title": "Отдел продаж", "members": [u2]}))
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    let group = created["conversation"]["id"].clone();
    let e = bob.event().await;
    assert_eq!(e["event"]["kind"], "conversation");
    assert_eq!(e["event"]["conversation"]["id"], group);

    let ack = ann
        .request(json!({"type": "send", "conversation_id": group, "client_id": "m1", "text": "Привет, Bob"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["message"]["seq"], 1);
    let e = bob.event().await;
    assert_eq!(e["event"]["kind"], "message");
    assert_eq!(e["event"]["message"]["text"], "Привет, Bob");
    assert_eq!(
        e["event"]["message"]["author"],
        json!({"kind": "user", "user_id": u1})
    );
    bob.request(
        json!({"type": "send", "conversation_id": group, "client_id": "m1", "text": "Hi Ann"}),
    )
    .await;
    // Ann sees the new conversation, her own message, then Bob's.
    assert_eq!(ann.event().await["event"]["kind"], "conversation");
    let mine = ann.event().await;
    assert_eq!(mine["event"]["message"]["seq"], 1);
    let reply = ann.event().await;
    assert_eq!(reply["event"]["message"]["text"], "Hi Ann");
    assert!(reply["seq"].as_u64().unwrap() > mine["seq"].as_u64().unwrap());

    // Eve is not a member: refused, named by request id.
    let refused = eve
        .request(json!({"id": "eve-1", "type": "send", "conversation_id": group, "client_id": "x", "text": "let me in"}))
        .await;
    assert_eq!(
        refused,
        json!({"type": "error", "id": "eve-1", "code": "forbidden", "message": "not a member of this conversation"})
    );

    // A discussion bound to order 42: one conversation for both.
    let a = ann
        .request(json!({"type": "open_context", "context": "order:42", "title": "Заказ 42"}))
        .await;
    let b = bob
        .request(json!({"type": "open_context", "context": "order:42"}))
        .await;
    assert_eq!(a["conversation"]["id"], b["conversation"]["id"]);
    let order = a["conversation"]["id"].clone();
    common::advance(&server, 1);
    bob.request(json!({"type": "send", "conversation_id": order, "client_id": "o1", "text": "Отгрузка завтра"}))
        .await;
    loop {
        let e = ann.event().await;
        if e["event"]["message"]["conversation_id"] == order {
            assert_eq!(e["event"]["message"]["text"], "Отгрузка завтра");
            break;
        }
    }
    // Eve may not see order 42.
    let no = eve
        .request(json!({"type": "open_context", "context": "order:42"}))
        .await;
    assert_eq!(no["code"], "forbidden", "{no}");
    let no = eve
        .request(json!({"type": "history", "conversation_id": order}))
        .await;
    assert_eq!(no["code"], "forbidden", "{no}");

    // History and the conversation list with unread counts.
    let h = bob
        .request(json!({"type": "history", "conversation_id": group}))
        .await;
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Привет, Bob", "Hi Ann"]);
    let list = ann.request(json!({"type": "list"})).await;
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0]["id"], order, "most recent activity first");
    assert_eq!(convs[0]["unread"], 1);
    let read = ann
        .request(json!({"type": "read", "conversation_id": order, "seq": 1}))
        .await;
    assert_eq!(read["read_seq"], 1);
    let list = ann.request(json!({"type": "list"})).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_missed_100_messages_gets_exactly_those_on_resume() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("resume@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let created = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await;
    let conv = created["conversation"]["id"].clone();

    let bob = Ws::connect(&server, &t2, None).await;
    let last_seen = bob.welcome["event_seq"].as_u64().unwrap();
    drop(bob);
    for i in 0..100 {
        let ack = ann
            .request(json!({"type": "send", "conversation_id": conv, "client_id": format!("m{i}"), "text": format!("n{i}")}))
            .await;
        assert_eq!(ack["type"], "ack");
    }
    let mut bob = Ws::connect(&server, &t2, Some(last_seen)).await;
    let mut texts = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..100 {
        let e = bob.event().await;
        seqs.push(e["seq"].as_u64().unwrap());
        texts.push(e["event"]["message"]["text"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    assert_eq!(texts, expected, "exactly the missed messages, in order");
    assert_eq!(
        seqs,
        ((last_seen + 1)..=(last_seen + 100)).collect::<Vec<_>>()
    );
    // Nothing twice: the next frame answers a ping.
    let pong = bob.request(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(pong["type"], "pong");
    assert!(bob.events.is_empty(), "{:?}", bob.events);
    server.stop().await;
}

#[tokio::test]
async fn acknowledged_messages_survive_a_restart_and_retries_make_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = default_clock();
    let server = TestServer::start_in(dir.path(), clock.clone()).await;
    let app = server.register("durable@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t"}))
        .await["conversation"]["id"]
        .clone();
    let send =
        json!({"type": "send", "conversation_id": conv, "client_id": "same-id", "text": "once"});
    let first = ann.request(send.clone()).await;
    let again = ann.request(send.clone()).await;
    assert_eq!(first["message"]["id"], again["message"]["id"]);
    drop(ann);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), clock).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let after = ann.request(send).await;
    assert_eq!(
        after["message"]["id"], first["message"]["id"],
        "no duplicate after a restart"
    );
    let h = ann
        .request(json!({"type": "history", "conversation_id": conv}))
        .await;
    let messages: &Vec<Value> = h["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["text"], "once");
    server.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("bad@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    let msg = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "a", "text": "mine"}))
        .await;

    let e = ann.request(json!({"id": "u", "type": "teleport"})).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_type")),
        "{e}"
    );
    ann.send_text("{not json".to_owned()).await;
    let e = ann.frame().await;
    assert_eq!(e["code"], "malformed_json");
    assert_eq!(e["id"], Value::Null);
    let big = "x".repeat(130 * 1024);
    let e = ann.request(json!({"id": "big", "type": "send", "conversation_id": conv, "client_id": "b", "text": big})).await;
    assert_eq!(e["code"], "frame_too_large", "{e}");
    let e = ann.request(json!({"id": "f", "type": "send", "conversation_id": conv, "client_id": "c", "text": "x", "colour": "red"})).await;
    assert_eq!(e["code"], "invalid_request", "{e}");
    let e = bob
        .request(json!({"id": "edit", "type": "edit", "conversation_id": conv, "message_id": msg["message"]["id"], "text": "hacked"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = bob
        .request(json!({"id": "nf", "type": "send", "conversation_id": "00000000-0000-0000-0000-000000000000", "client_id": "z", "text": "?"}))
        .await;
    assert_eq!(e["code"], "not_found", "{e}");

    // Still open: the author edits, Bob sees the edit.
    let edited = ann
        .request(json!({"type": "edit", "conversation_id": conv, "message_id": msg["message"]["id"], "text": "mine, edited"}))
        .await;
    assert_eq!(edited["message"]["text"], "mine, edited");
    loop {
        let ev = bob.event().await;
        if ev["event"]["kind"] == "message_edited" {
            assert_eq!(ev["event"]["message"]["text"], "mine, edited");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_application_posts_actions_as_a_bot_and_receives_the_click() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("bot@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;

    // The application connects with its own credentials.
    let mut bot = Ws::connect_bot(&server, &app).await;

    let created = bot
        .request(json!({"type": "create_conversation", "title": "Согласование", "members": [u1]}))
        .await;
    let conv = created["conversation"]["id"].clone();
    let posted = bot
        .request(json!({
            "type": "send", "conversation_id": conv, "client_id": "ask-1",
            "text": "Согласовать счёт 17?",
            "data": {"invoice": 17, "amount": "1200.00"},
            "actions": [{"value": "approve", "presentation": "Согласовать"}, {"value": "reject", "presentation": "Отклонить"}]
        }))
        .await;
    assert_eq!(
        posted["message"]["author"],
        json!({"kind": "app"}),
        "{posted}"
    );
    let message_id = posted["message"]["id"].clone();

    let seen = loop {
        let e = ann.event().await;
        if e["event"]["kind"] == "message" {
            break e;
        }
    };
    assert_eq!(seen["event"]["message"]["data"]["invoice"], 17);
    assert_eq!(
        seen["event"]["message"]["actions"][0]["presentation"],
        "Согласовать"
    );

    // A value the message does not offer is refused; the real one goes to the bot.
    let bad = ann
        .request(json!({"type": "click", "conversation_id": conv, "message_id": message_id, "value": "steal"}))
        .await;
    assert_eq!(bad["code"], "invalid_request", "{bad}");
    let ok = ann
        .request(json!({"type": "click", "conversation_id": conv, "message_id": message_id, "value": "approve"}))
        .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let click = loop {
        let e = bot.event().await;
        if e["event"]["kind"] == "action" {
            break e;
        }
    };
    assert_eq!(click["event"]["value"], "approve");
    assert_eq!(click["event"]["user_id"], u1.as_str());
    assert_eq!(click["event"]["message_id"], message_id);
    server.stop().await;
}

#[tokio::test]
async fn typing_and_presence_reach_the_people_who_share_a_conversation() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("presence@example.com", "ERP").await;
    let (t1, _u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&server, &app, "eve", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    let eve = Ws::connect(&server, &t3, None).await;

    let mut bob = Ws::connect(&server, &t2, None).await;
    let online = ann.ephemeral().await;
    assert_eq!(online["type"], "ephemeral", "{online}");
    assert_eq!(
        online["event"],
        json!({"kind": "presence", "user_id": u2, "presence": "online"})
    );

    let t = bob
        .request(json!({"type": "typing", "conversation_id": conv}))
        .await;
    assert_eq!(t["sent"], true);
    let typing = ann.ephemeral().await;
    assert_eq!(typing["event"]["kind"], "typing");
    assert_eq!(typing["event"]["user_id"], u2.as_str());
    let again = bob
        .request(json!({"type": "typing", "conversation_id": conv}))
        .await;
    assert_eq!(again["sent"], false, "rate-limited");

    let away = bob.request(json!({"type": "presence", "away": true})).await;
    assert_eq!(away["type"], "presence");
    assert_eq!(ann.ephemeral().await["event"]["presence"], "away");
    let q = ann
        .request(json!({"type": "presence", "users": [u2, u3]}))
        .await;
    assert_eq!(
        q["users"],
        json!({u2.clone(): "away"}),
        "eve shares nothing with ann: not shown"
    );

    drop(bob);
    assert_eq!(ann.ephemeral().await["event"]["presence"], "offline");
    drop(eve);
    server.stop().await;
}

/// A user who reconnects within the offline grace (a reload, a network
/// change) shows its contacts no offline-online flap; one who stays away
/// is told offline after it.
#[tokio::test]
async fn a_quick_reconnect_shows_contacts_no_flap() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("flap@example.com", "ERP").await;
    let (t1, _u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    ann.request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await;
    let bob = Ws::connect(&server, &t2, None).await;
    assert_eq!(ann.ephemeral().await["event"]["presence"], "online");
    drop(bob);
    let mut bob = Ws::connect(&server, &t2, None).await;
    // Longer than the grace: had Ann been told "offline", it is here now.
    tokio::time::sleep(confer_signalling::messaging::OFFLINE_GRACE * 2).await;
    bob.request(json!({"type": "presence", "away": true})).await;
    assert_eq!(
        ann.ephemeral().await["event"],
        json!({"kind": "presence", "user_id": u2, "presence": "away"}),
        "nothing between online and away"
    );
    drop(bob);
    assert_eq!(
        ann.ephemeral().await["event"],
        json!({"kind": "presence", "user_id": u2, "presence": "offline"})
    );
    server.stop().await;
}

/// Presence contacts are kept in memory once computed (on a connect): a
/// conversation made afterwards must count at the next change.
#[tokio::test]
async fn presence_follows_conversations_made_after_a_connect() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("contacts@example.com", "ERP").await;
    let (t1, _u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, u3) = user_token(&server, &app, "carl", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    ann.request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await;
    // Bob's contacts, computed as he connects: Ann only.
    let bob = Ws::connect(&server, &t2, None).await;
    assert_eq!(ann.ephemeral().await["event"]["presence"], "online");
    let mut carl = Ws::connect(&server, &t3, None).await;
    let q = carl
        .request(json!({"type": "presence", "users": [u2]}))
        .await;
    assert_eq!(q["users"], json!({}), "nothing shared yet");
    // Now Carl shares a group with Bob: he sees Bob leave.
    ann.request(json!({"type": "create_conversation", "title": "u", "members": [u2, u3]}))
        .await;
    let q = carl
        .request(json!({"type": "presence", "users": [u2]}))
        .await;
    assert_eq!(q["users"], json!({u2.clone(): "online"}));
    drop(bob);
    assert_eq!(
        carl.ephemeral_of("presence").await["event"],
        json!({"kind": "presence", "user_id": u2, "presence": "offline"})
    );
    server.stop().await;
}

/// A conversation of more than 50 members carries no presence: Ann, who
/// shares only such a channel with Bob, neither hears him come online nor
/// can ask for his presence; in a small group she does both.
#[tokio::test]
async fn presence_stays_out_of_conversations_of_more_than_50_members() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("channel@example.com", "ERP").await;
    let (t1, _u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut others = Vec::new();
    for i in 0..49 {
        others.push(
            user_token(&server, &app, &format!("member-{i}"), &[])
                .await
                .1,
        );
    }
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut members = others.clone();
    members.push(u2.clone());
    let channel = ann
        .request(json!({"type": "create_conversation", "title": "all hands", "members": members}))
        .await;
    assert_eq!(channel["type"], "ack", "{channel}");
    let bob = Ws::connect(&server, &t2, None).await;
    let q = ann
        .request(json!({"type": "presence", "users": [u2]}))
        .await;
    assert_eq!(q["users"], json!({}), "51 members: no presence");
    assert!(
        ann.ephemerals
            .iter()
            .all(|e| e["event"]["kind"] != "presence"),
        "{:?}",
        ann.ephemerals
    );
    drop(bob);

    // A group of three carries it.
    ann.request(
        json!({"type": "create_conversation", "title": "team", "members": [u2, others[0]]}),
    )
    .await;
    let _bob = Ws::connect(&server, &t2, None).await;
    // Bob's first connection may be noticed closed only now, once he
    // shares the group with Ann: she may hear him go offline first.
    let mut online = ann.ephemeral().await;
    if online["event"] == json!({"kind": "presence", "user_id": u2, "presence": "offline"}) {
        online = ann.ephemeral().await;
    }
    assert_eq!(
        online["event"],
        json!({"kind": "presence", "user_id": u2, "presence": "online"})
    );
    server.stop().await;
}

#[tokio::test]
async fn search_finds_russian_and_english_words_only_where_the_user_may_read() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("search@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let (t3, _) = user_token(&server, &app, "eve", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;
    let mut eve = Ws::connect(&server, &t3, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    for (i, text) in [
        "Счёт №17 оплачен",
        "The INVOICE was approved",
        "Обед в 13:00",
    ]
    .iter()
    .enumerate()
    {
        ann.request(json!({"type": "send", "conversation_id": conv, "client_id": format!("s{i}"), "text": text}))
            .await;
    }
    let eves = eve
        .request(json!({"type": "create_conversation", "title": "private"}))
        .await["conversation"]["id"]
        .clone();
    eve.request(json!({"type": "send", "conversation_id": eves, "client_id": "e", "text": "invoice of eve"}))
        .await;

    let texts = |r: Value| -> Vec<String> {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        texts(
            bob.request(json!({"type": "search", "query": "СЧЁТ"}))
                .await
        ),
        ["Счёт №17 оплачен"]
    );
    assert_eq!(
        texts(
            bob.request(json!({"type": "search", "query": "опла"}))
                .await
        ),
        ["Счёт №17 оплачен"],
        "prefix"
    );
    assert_eq!(
        texts(
            bob.request(json!({"type": "search", "query": "invoice"}))
                .await
        ),
        ["The INVOICE was approved"]
    );
    assert_eq!(
        texts(
            eve.request(json!({"type": "search", "query": "invoice"}))
                .await
        ),
        ["invoice of eve"]
    );
    assert!(
        texts(
            bob.request(json!({"type": "search", "query": "\"unbalanced OR ("}))
                .await
        )
        .is_empty(),
        "no query syntax"
    );
    let e = bob.request(json!({"type": "search", "query": "  "})).await;
    assert_eq!(e["code"], "invalid_request");
    server.stop().await;
}

/// Ann, Bob and Carl of `app`, connected, their ids, and the group Ann
/// made with Bob ("team").
async fn team(server: &TestServer, app: &App) -> ([Ws; 3], [String; 3], Value) {
    let (t1, u1) = user_token(server, app, "ann", &[]).await;
    let (t2, u2) = user_token(server, app, "bob", &[]).await;
    let (t3, u3) = user_token(server, app, "carl", &[]).await;
    let mut ann = Ws::connect(server, &t1, None).await;
    let bob = Ws::connect(server, &t2, None).await;
    let carl = Ws::connect(server, &t3, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "team", "members": [u2], "is_group": true}))
        .await["conversation"]["id"]
        .clone();
    ([ann, bob, carl], [u1, u2, u3], conv)
}

#[tokio::test]
async fn members_join_and_leave_and_the_list_pages() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("members@example.com", "ERP").await;
    let ([mut ann, mut bob, mut carl], [_, u2, u3], conv) = team(&server, &app).await;

    let added = bob
        .request(json!({"type": "add_members", "conversation_id": conv, "members": [u3]}))
        .await;
    assert_eq!(added["type"], "ack", "{added}");
    assert_eq!(carl.event().await["event"]["conversation"]["id"], conv);
    let no = carl
        .request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u2}))
        .await;
    assert_eq!(no["code"], "forbidden");
    let left = carl
        .request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u3}))
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    assert_eq!(
        carl.event().await["event"],
        json!({"kind": "removed", "conversation_id": conv})
    );
    let out = carl.request(json!({"type": "send", "conversation_id": conv, "client_id": "x", "text": "still here?"})).await;
    assert_eq!(out["code"], "forbidden");

    // Five more conversations, one second apart: pages of two.
    for i in 0..5 {
        common::advance(&server, 1);
        ann.request(json!({"type": "create_conversation", "title": format!("c{i}")}))
            .await;
    }
    let mut titles = Vec::new();
    let mut after = Value::Null;
    loop {
        let mut req = json!({"type": "list", "limit": 2});
        if !after.is_null() {
            req["after"] = after.clone();
        }
        let page = ann.request(req).await;
        for c in page["conversations"].as_array().unwrap() {
            titles.push(c["title"].as_str().unwrap().to_owned());
        }
        after = page["next"].clone();
        if after.is_null() {
            break;
        }
    }
    assert_eq!(titles, ["c4", "c3", "c2", "c1", "c0", "team"]);
    server.stop().await;
}

/// The send path keeps who is in a conversation in memory: every change
/// of membership made after a send must show in the next one.
#[tokio::test]
async fn sends_follow_membership_changes_made_after_earlier_sends() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("rosters@example.com", "ERP").await;
    let ([mut ann, mut bob, mut carl], [_, u2, u3], conv) = team(&server, &app).await;
    assert_eq!(bob.event().await["event"]["kind"], "conversation");
    let send =
        |n: &str| json!({"type": "send", "conversation_id": conv, "client_id": n, "text": n});

    // Ann's first send; Carl is no member yet and may not post.
    assert_eq!(ann.request(send("1")).await["type"], "ack");
    assert_eq!(bob.event().await["event"]["message"]["text"], "1");
    assert_eq!(carl.request(send("c1")).await["code"], "forbidden");

    // Added: Carl posts, and gets Ann's next message.
    let added = bob
        .request(json!({"type": "add_members", "conversation_id": conv, "members": [u3]}))
        .await;
    assert_eq!(added["type"], "ack", "{added}");
    assert_eq!(carl.event().await["event"]["kind"], "conversation");
    assert_eq!(carl.request(send("c2")).await["type"], "ack");
    assert_eq!(ann.request(send("2")).await["type"], "ack");
    assert_eq!(carl.event().await["event"]["message"]["text"], "c2");
    assert_eq!(carl.event().await["event"]["message"]["text"], "2");

    // Bob leaves: he may not post, and Ann's next message is not his.
    let left = bob
        .request(json!({"type": "remove_member", "conversation_id": conv, "user_id": u2}))
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    assert_eq!(bob.request(send("b1")).await["code"], "forbidden");
    assert_eq!(ann.request(send("3")).await["type"], "ack");
    assert_eq!(carl.event().await["event"]["message"]["text"], "3");
    // Bob's log, in order: his removal, then the next conversation Ann
    // opens with him, and no message 3 between them.
    assert_eq!(bob.event().await["event"]["message"]["text"], "c2");
    assert_eq!(bob.event().await["event"]["message"]["text"], "2");
    assert_eq!(bob.event().await["event"]["kind"], "removed");
    ann.request(json!({"type": "create_conversation", "title": "after", "members": [u2]}))
        .await;
    let next = bob.event().await;
    assert_eq!(
        next["event"]["kind"], "conversation",
        "Bob left before 3: {next}"
    );
    server.stop().await;
}

#[tokio::test]
async fn nothing_crosses_applications() {
    let (server, _dir) = TestServer::start().await;
    let a = server.register("a@example.com", "A").await;
    let b = server.register("b@example.com", "B").await;
    let (ta, _) = user_token(&server, &a, "ann", &["order:1"]).await;
    let (tb, ub) = user_token(&server, &b, "ben", &["order:1"]).await;
    let mut ann = Ws::connect(&server, &ta, None).await;
    let mut ben = Ws::connect(&server, &tb, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "A only"}))
        .await["conversation"]["id"]
        .clone();
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "1", "text": "secret of A"}),
    )
    .await;

    // B's user cannot reach, find or join A's conversation.
    for req in [
        json!({"type": "send", "conversation_id": conv, "client_id": "x", "text": "hi"}),
        json!({"type": "history", "conversation_id": conv}),
        json!({"type": "add_members", "conversation_id": conv, "members": [ub]}),
    ] {
        let r = ben.request(req).await;
        assert_eq!(r["code"], "not_found", "{r}");
    }
    let found = ben
        .request(json!({"type": "search", "query": "secret"}))
        .await;
    assert_eq!(found["messages"], json!([]));
    // A's user cannot add B's user.
    let r = ann
        .request(json!({"type": "add_members", "conversation_id": conv, "members": [ub]}))
        .await;
    assert_eq!(r["code"], "invalid_request", "{r}");
    // The same context string is a different conversation in each application.
    let ca = ann
        .request(json!({"type": "open_context", "context": "order:1"}))
        .await;
    let cb = ben
        .request(json!({"type": "open_context", "context": "order:1"}))
        .await;
    assert_ne!(ca["conversation"]["id"], cb["conversation"]["id"]);
    server.stop().await;
}

#[tokio::test]
async fn a_server_to_server_grant_opens_an_object_and_withdrawing_it_closes_it() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("grant@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let no = ann
        .request(json!({"type": "open_context", "context": "Document.Invoice:17"}))
        .await;
    assert_eq!(no["code"], "forbidden");

    let url = |u: &str| format!("/api/v1/users/{u}/contexts/Document.Invoice%3A17");
    let r = server
        .client
        .put(server.url(&url(&u1)))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let yes = ann
        .request(json!({"type": "open_context", "context": "Document.Invoice:17"}))
        .await;
    assert_eq!(yes["type"], "ack", "{yes}");
    assert_eq!(yes["conversation"]["context"], "Document.Invoice:17");
    let conv = yes["conversation"]["id"].clone();

    let r = server
        .client
        .delete(server.url(&url(&u1)))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let closed = ann
        .request(json!({"type": "send", "conversation_id": conv, "client_id": "x", "text": "?"}))
        .await;
    assert_eq!(closed["code"], "forbidden", "{closed}");
    // Another application's user id is not found.
    let other = server.register("other@example.com", "Other").await;
    let r = server
        .client
        .put(server.url(&url(&u1)))
        .basic_auth(&other.id, Some(&other.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_client_behind_the_pruned_log_is_told_to_resynchronise() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("prune@example.com", "ERP").await;
    let (t1, _) = user_token(&server, &app, "ann", &[]).await;
    let (t2, u2) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let conv = ann
        .request(json!({"type": "create_conversation", "title": "t", "members": [u2]}))
        .await["conversation"]["id"]
        .clone();
    let bob = Ws::connect(&server, &t2, None).await;
    let last_seen = bob.welcome["event_seq"].as_u64().unwrap();
    drop(bob);
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "old", "text": "old"}),
    )
    .await;

    // 31 days later the pruning job (run here directly) deletes that event.
    common::advance(&server, 31 * 24 * 60 * 60);
    let cutoff = confer_signalling::ids::Timestamp(
        confer_signalling::ids::Clock::now(&*server.clock).0 - 30 * 24 * 60 * 60 * 1000,
    );
    let deleted = server
        .services
        .messaging
        .store()
        .prune_events(cutoff)
        .await
        .unwrap();
    assert!(deleted >= 1);
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "new", "text": "new"}),
    )
    .await;

    // Tokens expired meanwhile: fresh ones.
    let (t2, _) = user_token(&server, &app, "bob", &[]).await;
    let mut bob = Ws::connect(&server, &t2, Some(last_seen)).await;
    let resync = bob.frame().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    // Live events carry on after the resync point.
    ann.request(
        json!({"type": "send", "conversation_id": conv, "client_id": "live", "text": "live"}),
    )
    .await;
    let e = bob.event().await;
    assert_eq!(e["event"]["message"]["text"], "live");
    server.stop().await;
}

#[tokio::test]
async fn locking_a_user_or_unregistering_its_application_ends_its_sessions() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("revoke@example.com", "ERP").await;
    let (t1, u1) = user_token(&server, &app, "ann", &[]).await;
    let (t2, _) = user_token(&server, &app, "bob", &[]).await;
    let mut ann = Ws::connect(&server, &t1, None).await;
    let mut bob = Ws::connect(&server, &t2, None).await;

    let r = server
        .post(&format!("/api/v1/users/{u1}/lock"))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let closed = ann.frame().await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert!(
        closed["close"].as_str().unwrap().contains("4003"),
        "{closed}"
    );
    // Bob is untouched.
    assert_eq!(bob.request(json!({"type": "ping"})).await["type"], "pong");

    let r = server
        .delete(&format!("/api/v1/applications/{}", app.id))
        .basic_auth(&app.id, Some(&app.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let closed = bob.frame().await;
    assert!(
        closed["close"].as_str().unwrap().contains("4003"),
        "{closed}"
    );
    server.stop().await;
}
