//! Tests of the SQLite store's own mechanics (the WAL's upkeep, the
//! storage of event payloads), beside the conformance suite that every
//! store passes.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::SqliteStore;
use super::conformance::{group_of_the_app, message, seq_event};
use super::messaging::{EventRecord, MessageStore as _};
use crate::ids::{Timestamp, UserId};

/// An event's payload is stored once for all the users it notifies;
/// rows written before that (payload inline) still read back, and
/// pruning by age removes shared payloads with their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_inline_payloads_read_back_and_are_pruned() {
    let store = SqliteStore::in_memory().await.unwrap();
    let (ann, bob) = (UserId::random(), UserId::random());
    sqlx::query(
        "INSERT INTO user_events (user_id, seq, payload, created_at) VALUES (?, 1, 'old', 1)",
    )
    .bind(ann.to_string())
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO user_event_heads (user_id, last_seq) VALUES (?, 1)")
        .bind(ann.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    let seqs = store
        .append_events(&[ann, bob], "{\"kind\":\"new\"}", Timestamp(5))
        .await
        .unwrap();
    assert_eq!(seqs, vec![(ann, 2), (bob, 1)]);
    let shared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_payloads")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(shared, 1, "one payload for both users");
    let payloads = |events: Vec<EventRecord>| -> Vec<(u64, String)> {
        events.into_iter().map(|e| (e.seq, e.payload)).collect()
    };
    assert_eq!(
        payloads(store.events_after(ann, 0, 10).await.unwrap()),
        vec![(1, "old".to_owned()), (2, "{\"kind\":\"new\"}".to_owned())]
    );
    assert_eq!(store.prune_events(Timestamp(3)).await.unwrap(), 1);
    assert_eq!(
        payloads(store.events_after(ann, 0, 10).await.unwrap()),
        vec![(2, "{\"kind\":\"new\"}".to_owned())]
    );
    assert_eq!(store.prune_events(Timestamp(6)).await.unwrap(), 2);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_payloads")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Under a steady stream of commits the WAL file starts over instead
/// of growing with everything ever written (it reached 11 GB for
/// 200 000 messages before the restart existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confer.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let conversation = group_of_the_app(&store).await;
    let event = seq_event();
    let wal = dir.path().join("confer.db-wal");
    let largest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watching = {
        let (wal, largest) = (wal.clone(), largest.clone());
        tokio::spawn(async move {
            loop {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    // 8 writers keep the group commit busy: ~100 MiB of text and index.
    let text = "x".repeat(16 * 1024);
    let writers = (0..8).map(|w| {
        let (store, event, text) = (store.clone(), event.clone(), text.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let m = message(w * 1000 + i, conversation.id, text.clone());
                store
                    .post(&m, &[], event.clone(), Timestamp(3))
                    .await
                    .unwrap();
            }
        })
    });
    for w in futures_util::future::join_all(writers).await {
        w.unwrap();
    }
    watching.abort();
    let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        largest < 48 << 20,
        "the WAL grew to {} MiB while 1 600 messages of 16 KiB were written",
        largest >> 20
    );
}
