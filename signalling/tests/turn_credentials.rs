//! TURN credentials go only to participants of a call, when they start or
//! join it: a ringing member, a non-member and `welcome` get none.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, default_clock, test_config};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_get_turn_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.calls.turn = Some(confer_signalling::config::TurnConfig {
        urls: vec!["turn:turn.example.com:3478?transport=udp".to_owned()],
        secret: "a-test-secret-of-16+".to_owned(),
        ttl_secs: 3600,
    });
    let server = TestServer::start_with(config, default_clock()).await;
    let app = server.register("turn@example.com", "ERP").await;
    let (ann_token, ann) = common::user_token(&server, &app, "ann", &[]).await;
    let (bob_token, bob) = common::user_token(&server, &app, "bob", &[]).await;
    let (eve_token, _) = common::user_token(&server, &app, "eve", &[]).await;
    let mut ann_ws = Ws::connect(&server, &ann_token, None).await;
    let mut bob_ws = Ws::connect(&server, &bob_token, None).await;
    let mut eve_ws = Ws::connect(&server, &eve_token, None).await;
    let created = ann_ws
        .request(json!({"type": "create_conversation", "title": "pair", "members": [bob]}))
        .await;
    let conversation = created["conversation"]["id"].clone();

    let started = ann_ws
        .request(json!({"type": "call_start", "conversation_id": conversation, "media": "audio"}))
        .await;
    assert_eq!(started["type"], "ack", "{started}");
    let turn = &started["ice_servers"][0];
    assert!(
        turn["username"].as_str().unwrap().ends_with(&ann),
        "{started}"
    );
    let call = started["call"]["id"].clone();

    // Bob's devices ring: no credential rides on the ring.
    let ring = bob_ws.ephemeral_of("call").await;
    assert!(!ring.to_string().contains("credential"), "{ring}");
    // Eve is not a member: refused, and nothing to relay with.
    let refused = eve_ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(!refused.to_string().contains("credential"), "{refused}");
    // A member who connects while it rings: not in `welcome` either.
    let late = Ws::connect(&server, &bob_token, None).await;
    assert!(
        !late.welcome.to_string().contains("credential"),
        "{}",
        late.welcome
    );
    // Bob joins: now he gets his own.
    let joined = bob_ws
        .request(json!({"type": "call_join", "call_id": call}))
        .await;
    assert_eq!(joined["type"], "ack", "{joined}");
    assert!(
        joined["ice_servers"][0]["username"]
            .as_str()
            .unwrap()
            .ends_with(&bob),
        "{joined}"
    );
    server.stop().await;
}
