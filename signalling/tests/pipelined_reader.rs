//! A client that reads everything is never dropped as a slow consumer:
//! one user with four connections, each keeping four sends in flight and
//! reading every frame, receives all of its events (requests waiting for
//! their commit no longer hold back the deliveries).

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use common::{TestServer, Ws, user_token};
use serde_json::json;

const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 4;
const SENDS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pipelining_connections_of_one_user_get_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    // This test is about delivery, not about the frame limits.
    config.limits.frames_per_connection.count = 0;
    config.limits.writes_per_connection.count = 0;
    let server = TestServer::start_with(config, common::default_clock()).await;
    let app = server.register("pipe@example.com", "ERP").await;
    let (token, _) = user_token(&server, &app, "ann", &[]).await;
    let (_, bob) = user_token(&server, &app, "bob", &[]).await;
    let mut first = Ws::connect(&server, &token, None).await;
    let created = first
        .request(json!({"type": "create_conversation", "title": "pipe", "members": [bob]}))
        .await;
    let conversation = created["conversation"]["id"].clone();
    let mut connections = vec![first];
    for _ in 1..CONNECTIONS {
        connections.push(Ws::connect(&server, &token, None).await);
    }
    let total = CONNECTIONS * SENDS;
    let mut tasks = Vec::new();
    for (c, mut ws) in connections.into_iter().enumerate() {
        let conversation = conversation.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut acked, mut events) = (0, 0, 0);
            // The conversation event of the creation, for the first.
            let mut last_seq = 0;
            while acked < SENDS || events < total {
                while sent < SENDS && sent - acked < IN_FLIGHT {
                    ws.send_text(
                        json!({"type": "send", "id": format!("{c}-{sent}"),
                            "conversation_id": conversation,
                            "client_id": format!("{c}-{sent}"), "text": "x"})
                        .to_string(),
                    )
                    .await;
                    sent += 1;
                }
                let f = ws.frame().await;
                match f["type"].as_str() {
                    Some("ack") => acked += 1,
                    Some("event") => {
                        let seq = f["seq"].as_u64().unwrap();
                        assert!(
                            seq > last_seq,
                            "connection {c}: event {seq} after {last_seq}"
                        );
                        last_seq = seq;
                        if f["event"]["kind"] == "message" {
                            events += 1;
                        }
                    }
                    Some("ephemeral") => {}
                    _ => panic!("connection {c} after {events} events: {f}"),
                }
            }
            events
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), total);
    }
    server.stop().await;
}
