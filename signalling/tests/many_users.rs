//! 200 users log in at once, each in several conversations; every one
//! receives each message exactly once, in order. And a client that stops
//! reading is disconnected without slowing anyone else.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::latency::{percentile, send_tagged, spawn_readers};
use common::{TestServer, Ws, user_token};
use serde_json::{Value, json};

const USERS: usize = 200;
const GROUP: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_each_receive_every_message_once_in_order() {
    let (server, _dir) = TestServer::start().await;
    let app = server.register("many@example.com", "ERP").await;
    let mut tokens = Vec::new();
    for i in 0..USERS {
        tokens.push(user_token(&server, &app, &format!("u{i}"), &[]).await);
    }
    // Everyone connects at once.
    let connects = tokens.iter().map(|(t, _)| Ws::connect(&server, t, None));
    let mut clients: Vec<Ws> = futures_util::future::join_all(connects).await;

    // Groups of 10, plus one conversation of everyone.
    let mut groups = Vec::new();
    for g in 0..USERS / GROUP {
        let members: Vec<&String> = (g * GROUP + 1..(g + 1) * GROUP)
            .map(|i| &tokens[i].1)
            .collect();
        let r = clients[g * GROUP]
            .request(json!({"type": "create_conversation", "title": format!("g{g}"), "members": members}))
            .await;
        groups.push(r["conversation"]["id"].clone());
    }
    let everyone: Vec<&String> = tokens[1..].iter().map(|(_, u)| u).collect();
    let all = clients[0]
        .request(json!({"type": "create_conversation", "title": "всем", "members": everyone}))
        .await["conversation"]["id"]
        .clone();

    // Every user writes once in its group; five write to everyone.
    let sends = clients.iter_mut().enumerate().map(|(i, c)| {
        let group = groups[i / GROUP].clone();
        let all = all.clone();
        async move {
            let ack = c
                .request(json!({"type": "send", "conversation_id": group, "client_id": "g", "text": format!("from u{i}")}))
                .await;
            assert_eq!(ack["type"], "ack", "{ack}");
            if i % 40 == 0 {
                let ack = c
                    .request(json!({"type": "send", "conversation_id": all, "client_id": "a", "text": format!("all from u{i}")}))
                    .await;
                assert_eq!(ack["type"], "ack", "{ack}");
            }
        }
    });
    futures_util::future::join_all(sends).await;

    // Each client: exactly 10 group messages + 5 to everyone, each once,
    // in conversation order.
    let checks = clients.iter_mut().map(|c| async move {
        let mut by_conv: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut total = 0;
        while total < GROUP + USERS / 40 {
            let e = c.event().await;
            if e["event"]["kind"] != "message" {
                continue;
            }
            let m = &e["event"]["message"];
            by_conv
                .entry(m["conversation_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(m["seq"].as_u64().unwrap());
            total += 1;
        }
        // Nothing more: the next frame answers a ping.
        let pong = c.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
        let extra: Vec<&Value> = c
            .events
            .iter()
            .filter(|e| e["event"]["kind"] == "message")
            .collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");
        by_conv
    });
    let results = futures_util::future::join_all(checks).await;
    for by_conv in results {
        assert_eq!(by_conv.len(), 2);
        for seqs in by_conv.values() {
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, &expected, "each message once, in order");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_slows_nobody() {
    const BASE: usize = 200;
    const FLOOD: usize = 1500;
    const AFTER: usize = 200;
    // One user writes as fast as it can: its frame limits are off here.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.limits.frames_per_connection.count = 0;
    config.limits.writes_per_connection.count = 0;
    let server = TestServer::start_with(config, common::default_clock()).await;
    let app = server.register("slow@example.com", "ERP").await;
    let (tw, _) = user_token(&server, &app, "writer", &[]).await;
    let (ts, us) = user_token(&server, &app, "sleeper", &[]).await;
    let mut writer = Ws::connect(&server, &tw, None).await;
    let mut members = vec![us.clone()];
    let mut reader_tokens = Vec::new();
    for i in 0..5 {
        let (t, u) = user_token(&server, &app, &format!("r{i}"), &[]).await;
        reader_tokens.push(t);
        members.push(u);
    }
    let conv = writer
        .request(json!({"type": "create_conversation", "title": "load", "members": members}))
        .await["conversation"]["id"]
        .clone();
    let t0 = Instant::now();
    let readers = spawn_readers(&server, &reader_tokens, t0, BASE + FLOOD + AFTER).await;

    send_tagged(&mut writer, &conv, t0, "base", BASE, "").await;
    // The sleeper connects and never reads a frame again; 1500 messages of
    // 16 KiB (24 MiB) overflow its queue of 1024 events and its socket.
    let sleeper = Ws::connect(&server, &ts, None).await;
    send_tagged(
        &mut writer,
        &conv,
        t0,
        "flood",
        FLOOD,
        &"x".repeat(16 * 1024),
    )
    .await;
    send_tagged(&mut writer, &conv, t0, "after", AFTER, "").await;

    let mut base = Vec::new();
    let mut after = Vec::new();
    for r in readers {
        let mut latencies = r.await.unwrap();
        assert_eq!(
            latencies["flood"].len(),
            FLOOD,
            "every reader got every message"
        );
        base.extend(latencies.remove("base").unwrap());
        after.extend(latencies.remove("after").unwrap());
    }
    let (b50, b_max) = (percentile(base.clone(), 0.5), percentile(base, 1.0));
    let (a50, a_max) = (percentile(after.clone(), 0.5), percentile(after, 1.0));
    eprintln!(
        "delivery to 5 readers, ms: before the stalled client p50 {b50:.2} max {b_max:.2}; after it p50 {a50:.2} max {a_max:.2}"
    );
    assert!(
        !server.services.bus.is_online(us.parse().unwrap()),
        "the sleeper was dropped"
    );
    assert!(
        a50 < b50 * 5.0 + 20.0,
        "others were slowed: p50 {b50:.2} ms → {a50:.2} ms"
    );
    drop(sleeper);
    server.stop().await;
}
