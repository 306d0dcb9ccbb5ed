//! Bugs found by trying the server from outside (issue 13), each through
//! the real server: a real WebSocket client, real HTTP uploads, the real
//! store on disk.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use common::{TestServer, Ws, upload_file, user_token};
use serde_json::{Value, json};
use sqlx::Connection;

/// A server, Ann's token and a conversation of hers with Bob.
async fn setup() -> (TestServer, tempfile::TempDir, String, Value) {
    let (server, dir) = TestServer::start().await;
    let app = server.register("outside@example.com", "Outside").await;
    let (ann, _) = user_token(&server, &app, "ann", &[]).await;
    let (_, bob) = user_token(&server, &app, "bob", &[]).await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    let created = ws
        .request(json!({"type": "create_conversation", "title": "t", "members": [bob]}))
        .await;
    assert_eq!(created["type"], "ack", "{created}");
    (server, dir, ann, created["conversation"]["id"].clone())
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// `after: 0` pages forwards from the first message (it used to be taken
/// for "no `after`" and answered the newest page).
#[tokio::test]
async fn history_after_zero_starts_at_the_first_message() {
    let (server, _dir, ann, conversation) = setup().await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    for i in 0..5 {
        let ack = ws
            .request(json!({"type": "send", "conversation_id": conversation,
                "client_id": format!("c{i}"), "text": format!("m{i}")}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let page = |after: Option<u64>| {
        let mut frame = json!({"type": "history", "conversation_id": conversation, "limit": 2});
        if let Some(after) = after {
            frame["after"] = json!(after);
        }
        frame
    };
    assert_eq!(seqs(&ws.request(page(Some(0))).await), [1, 2]);
    assert_eq!(seqs(&ws.request(page(Some(2))).await), [3, 4]);
    // Without `after`: the newest page, oldest first.
    assert_eq!(seqs(&ws.request(page(None)).await), [4, 5]);
}

/// A search for text with U+0000 is refused as bad input (the full-text
/// query parser cannot take it; it used to answer `internal`); searching
/// goes on working.
#[tokio::test]
async fn search_with_a_nul_character_is_invalid_request() {
    let (server, _dir, ann, conversation) = setup().await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    let ack = ws
        .request(json!({"type": "send", "conversation_id": conversation,
            "client_id": "c1", "text": "invoice ready"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for query in ["invoice\u{0}", "\u{0}", "inv\u{0}oice ready"] {
        let answer = ws.request(json!({"type": "search", "query": query})).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("U+0000"),
            "{answer}"
        );
    }
    let found = ws
        .request(json!({"type": "search", "query": "invoice"}))
        .await;
    assert_eq!(seqs(&found), [1]);
}

/// A resend with the same `client_id` of a message with an attachment (its
/// acknowledgement was lost) is acknowledged with the first message, not
/// refused because the file is attached (to that very message).
#[tokio::test]
async fn resending_a_message_with_an_attachment_returns_the_first() {
    let (server, _dir, ann, conversation) = setup().await;
    let file = upload_file(&server, &ann, conversation.as_str().unwrap(), b"bytes").await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    let send = json!({"type": "send", "conversation_id": conversation, "client_id": "once",
        "text": "see attached", "attachments": [{"file_id": file["id"]}]});
    let first = ws.request(send.clone()).await;
    assert_eq!(first["type"], "ack", "{first}");
    // Another connection, as after a reconnect.
    let mut again = Ws::connect(&server, &ann, None).await;
    let second = again.request(send).await;
    assert_eq!(second["type"], "ack", "{second}");
    assert_eq!(second["message"], first["message"]);
    let page = ws
        .request(json!({"type": "history", "conversation_id": conversation, "after": 0}))
        .await;
    assert_eq!(seqs(&page), [1]);
    // The same file with another client id is a new message: refused.
    let other = ws
        .request(
            json!({"type": "send", "conversation_id": conversation, "client_id": "twice",
            "text": "again", "attachments": [{"file_id": file["id"]}]}),
        )
        .await;
    assert_eq!(other["code"], "attachment_unavailable", "{other}");
}

/// A file that goes away after the send's checks but before its commit is
/// a conflict the writer finds; alone in its commit it used to become
/// `internal`. The test holds the database's write lock so that the send
/// waits in the writer, deletes the file's row meanwhile (as a concurrent
/// deletion would), then lets the writer go on. The send's checks must
/// have run before that deletion: the store's own sentence in the answer
/// shows they did, otherwise the test tries again with a longer wait.
#[tokio::test]
async fn a_conflict_found_by_the_writer_keeps_its_code() {
    let (server, _dir, ann, conversation) = setup().await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(server.data_dir.join("confer.db"))
        .busy_timeout(Duration::from_secs(5));
    let mut db = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    for (attempt, wait_ms) in [100, 400, 1500].into_iter().enumerate() {
        let file = upload_file(&server, &ann, conversation.as_str().unwrap(), b"x").await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut db)
            .await
            .unwrap();
        let id = format!("s{attempt}");
        ws.send_text(
            json!({"type": "send", "id": id, "conversation_id": conversation,
                "client_id": id, "text": "t", "attachments": [{"file_id": file["id"]}]})
            .to_string(),
        )
        .await;
        // The checks read without the write lock; the commit waits for it
        // (the writer's busy timeout is 5 s).
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        sqlx::query("DELETE FROM files WHERE id = ?")
            .bind(file["id"].as_str().unwrap())
            .execute(&mut db)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut db).await.unwrap();
        let answer = ws.answer(&json!(id)).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "attachment_unavailable", "{answer}");
        if answer["message"]
            .as_str()
            .unwrap()
            .starts_with("an attached file is not ready")
        {
            return;
        }
    }
    panic!("the send's checks never ran before the file was deleted");
}

/// An edit or deletion replaces the message's own row of the full-text
/// index, found by the id the message keeps (it used to delete by the
/// unindexed conversation and seq columns: a scan of every application's
/// index inside the writer's transaction); what search finds is unchanged.
#[tokio::test]
async fn edits_and_deletions_replace_the_messages_own_index_row() {
    let (server, _dir, ann, conversation) = setup().await;
    let mut ws = Ws::connect(&server, &ann, None).await;
    let mut ids = Vec::new();
    for (i, text) in ["alpha", "bravo", "charlie"].iter().enumerate() {
        let ack = ws
            .request(json!({"type": "send", "conversation_id": conversation,
                "client_id": format!("s{i}"), "text": text}))
            .await;
        ids.push(ack["message"]["id"].clone());
    }
    let r = ws
        .request(json!({"type": "edit", "conversation_id": conversation,
            "message_id": ids[1], "text": "delta"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = ws
        .request(json!({"type": "delete", "conversation_id": conversation,
            "message_id": ids[2]}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    for (query, expected) in [
        ("alpha", vec![1]),
        ("bravo", vec![]),
        ("delta", vec![2]),
        ("charlie", vec![]),
    ] {
        let page = ws.request(json!({"type": "search", "query": query})).await;
        assert_eq!(seqs(&page), expected, "{query}: {page}");
    }

    // In the store: one index row per live message, the one it names.
    let url = format!(
        "sqlite://{}",
        server.services.config.database_path().display()
    );
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT m.seq, m.search_rowid, (SELECT count(*) FROM message_search s WHERE s.rowid = m.search_rowid) \
         FROM messages m ORDER BY m.seq",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0].2, 1, "{rows:?}");
    assert_eq!(rows[1].2, 1, "{rows:?}");
    assert_eq!(
        rows[2].2, 0,
        "the deleted message has no index row: {rows:?}"
    );
    let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM message_search")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(total, 2);
}
