//! What one message write does inside the writer's transaction: the
//! duplicate check by client id, numbering and storing the message, its
//! row of the search index, and one event in the log of each user it
//! notifies. Shared by new messages, edits and deletes.

use std::sync::Arc;

use super::messaging::{Author, NewMessage, PendingEvent, Posted, StoredMessage};
use super::sqlite_messaging::{MESSAGE_COLUMNS, message_from, parse, seq, to_i64};
use super::{StoreError, StoreResult};
use crate::ids::{ConversationId, Timestamp, UserId};

/// Adds a message's text to the full-text index and records the index
/// row in the message, so that an edit or a deletion finds it by id.
async fn index_text(
    tx: &mut sqlx::SqliteConnection,
    conversation: ConversationId,
    seq: u64,
    text: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO message_search (rowid, text, conversation_id, seq) VALUES (NULL, ?, ?, ?)",
    )
    .bind(text)
    .bind(conversation.to_string())
    .bind(to_i64(seq))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE messages SET search_rowid = last_insert_rowid() \
         WHERE conversation_id = ? AND seq = ?",
    )
    .bind(conversation.to_string())
    .bind(to_i64(seq))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Appends `payload` to each user's log inside `tx`: two statements
/// whatever the number of users (the ids travel as one JSON array).
pub(super) async fn append(
    tx: &mut sqlx::SqliteConnection,
    users: &[UserId],
    payload: &str,
    now: Timestamp,
) -> StoreResult<Vec<(UserId, u64)>> {
    // Each user once, in their first order (a set, not a scan per user:
    // an `all_users` conversation lists thousands).
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    let unique: Vec<String> = users
        .iter()
        .filter(|u| seen.insert(**u))
        .map(ToString::to_string)
        .collect();
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    let ids = serde_json::to_string(&unique).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the
    // INSERT, not to a join in the SELECT.
    let rows = sqlx::query(
        "INSERT INTO user_event_heads (user_id, last_seq) SELECT value, 1 FROM json_each(?) WHERE true \
         ON CONFLICT (user_id) DO UPDATE SET last_seq = user_event_heads.last_seq + 1 \
         RETURNING user_id, last_seq",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut pairs = Vec::with_capacity(rows.len());
    for row in &rows {
        let user: UserId = parse(row, "user_id")?;
        let n = seq(row, "last_seq")?;
        pairs.push((user.to_string(), to_i64(n)));
        out.push((user, n));
    }
    let pairs = serde_json::to_string(&pairs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO user_events (user_id, seq, payload, created_at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?, ? FROM json_each(?)",
    )
    .bind(payload)
    .bind(now.0)
    .bind(pairs)
    .execute(&mut *tx)
    .await?;
    Ok(out)
}

/// The message `author` sent with `client_id` in `conversation`.
pub(super) async fn by_client_id(
    db: impl sqlx::SqliteExecutor<'_>,
    conversation: ConversationId,
    author: Author,
    client_id: &str,
) -> StoreResult<Option<StoredMessage>> {
    sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND author = ? AND client_id = ?"
    ))
    .bind(conversation.to_string())
    .bind(author.key())
    .bind(client_id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(message_from)
    .transpose()
}

pub(super) async fn post_in(
    tx: &mut sqlx::SqliteConnection,
    m: &NewMessage,
    notify: &[UserId],
    event: &PendingEvent,
    now: Timestamp,
) -> StoreResult<Posted> {
    if let Some(message) = by_client_id(&mut *tx, m.conversation_id, m.author, &m.client_id).await?
    {
        return Ok(Posted {
            message,
            event: None,
            seqs: Vec::new(),
        });
    }
    if let Some(user) = m.joins {
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(m.conversation_id.to_string())
        .bind(user.to_string())
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
    }
    let row = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, last_activity = ? WHERE id = ? RETURNING last_seq",
    )
    .bind(now.0)
    .bind(m.conversation_id.to_string())
    .fetch_one(&mut *tx)
    .await?;
    let n = seq(&row, "last_seq")?;
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
    ))
    .bind(m.conversation_id.to_string())
    .bind(to_i64(n))
    .bind(m.id.to_string())
    .bind(m.author.key())
    .bind(&m.client_id)
    .bind(body)
    .bind(now.0)
    .execute(&mut *tx)
    .await?;
    if !m.body.attachments.is_empty() {
        let ids: Vec<_> = m.body.attachments.iter().map(|a| a.file_id).collect();
        super::sqlite_files::attach(tx, &ids, m.id, m.conversation_id, m.author).await?;
    }
    index_text(tx, m.conversation_id, n, &m.body.text).await?;
    let stored = m.stored(n, now);
    let payload = event.with_seq(n);
    let seqs = append(tx, notify, &payload, now).await?;
    Ok(Posted {
        message: stored,
        event: Some(Arc::from(payload)),
        seqs,
    })
}

/// Changes a stored message (an edit or a delete) inside `tx`: its row,
/// its row of the search index, its files when deleted, and the event in
/// each of `notify`'s logs.
pub(super) async fn update_in(
    tx: &mut sqlx::SqliteConnection,
    m: &StoredMessage,
    notify: &[UserId],
    event: &str,
    now: Timestamp,
) -> StoreResult<Vec<(UserId, u64)>> {
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query("UPDATE messages SET body = ?, edited_at = ?, deleted_at = ? WHERE conversation_id = ? AND id = ?")
        .bind(body)
        .bind(m.edited_at.map(|t| t.0))
        .bind(m.deleted_at.map(|t| t.0))
        .bind(m.conversation_id.to_string())
        .bind(m.id.to_string())
        .execute(&mut *tx)
        .await?;
    // The message's own row of the index, by its id (no scan).
    sqlx::query(
        "DELETE FROM message_search WHERE rowid = \
         (SELECT search_rowid FROM messages WHERE conversation_id = ? AND seq = ?)",
    )
    .bind(m.conversation_id.to_string())
    .bind(to_i64(m.seq))
    .execute(&mut *tx)
    .await?;
    if m.deleted_at.is_none() {
        index_text(tx, m.conversation_id, m.seq, &m.body.text).await?;
    } else {
        super::sqlite_files::discard_message_files(tx, m.id, now).await?;
    }
    append(tx, notify, event, now).await
}
