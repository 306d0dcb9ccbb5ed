//! What one write of the message writer does inside its transaction: the
//! duplicate check by client id, numbering and storing a message, and one
//! event in the log of each user it notifies. Shared by new messages,
//! edits, deletes and other events. The full-text index is written apart,
//! in batches ([`index_pending`]).
//!
//! These run on the writer's own SQLite connection, synchronously, with
//! every statement prepared once and kept in the connection's cache: a
//! message costs a handful of B-tree writes and no thread hop.

use std::sync::Arc;

use rusqlite::{OptionalExtension as _, params};

use super::messaging::{
    Author, Mark, MarkChange, Marked, NewMessage, PendingEvent, Posted, StoredMessage,
};
use super::sqlite_messaging::{MESSAGE_COLUMNS, MessageColumns, to_i64};
use super::{StoreError, StoreResult};
use crate::ids::{Timestamp, UserId};

/// The writer's connection, inside its transaction.
type Tx = rusqlite::Connection;

/// Adds a message's text to the full-text index; returns the index row,
/// which the message keeps so that an edit or a deletion finds it by id.
fn index_text(tx: &Tx, conversation: &str, seq: i64, text: &str) -> StoreResult<i64> {
    tx.prepare_cached(
        "INSERT INTO message_search (rowid, text, conversation_id, seq) VALUES (NULL, ?1, ?2, ?3)",
    )?
    .execute(params![text, conversation, seq])?;
    Ok(tx.last_insert_rowid())
}

/// Adds up to `limit` messages that have no row in the full-text index
/// yet (new or edited since the last call) to it; returns how many. The
/// writer runs this between commits, in a transaction of its own: one
/// batch of the index's work for many messages instead of a little in
/// every commit (FTS5 writes a segment per transaction).
pub(super) fn index_pending(tx: &Tx, limit: usize) -> StoreResult<usize> {
    let pending: Vec<(String, i64, String)> = tx
        .prepare_cached(
            "SELECT conversation_id, seq, COALESCE(json_extract(body, '$.text'), '') FROM messages \
             WHERE search_rowid IS NULL AND deleted_at IS NULL LIMIT ?1",
        )?
        .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    for (conversation, seq, text) in &pending {
        let row = index_text(tx, conversation, *seq, text)?;
        tx.prepare_cached(
            "UPDATE messages SET search_rowid = ?1 WHERE conversation_id = ?2 AND seq = ?3",
        )?
        .execute(params![row, conversation, seq])?;
    }
    Ok(pending.len())
}

/// Appends `payload` to each user's log: three statements whatever the
/// number of users (the ids travel as one JSON array), and the payload
/// stored once.
pub(super) fn append(
    tx: &Tx,
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
    let mut heads = tx.prepare_cached(
        "INSERT INTO user_event_heads (user_id, last_seq) SELECT value, 1 FROM json_each(?1) WHERE true \
         ON CONFLICT (user_id) DO UPDATE SET last_seq = user_event_heads.last_seq + 1 \
         RETURNING user_id, last_seq",
    )?;
    let rows = heads.query_map(params![ids], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut out = Vec::with_capacity(unique.len());
    let mut pairs = Vec::with_capacity(unique.len());
    for row in rows {
        let (user, n) = row?;
        let id: UserId = user
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("user_id: {user:?}")))?;
        let seq = u64::try_from(n).map_err(|_| StoreError::Corrupt("last_seq negative".into()))?;
        out.push((id, seq));
        pairs.push((user, n));
    }
    let pairs = serde_json::to_string(&pairs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The payload once, whatever the number of users: each user's row
    // points at it.
    tx.prepare_cached("INSERT INTO event_payloads (payload, created_at) VALUES (?1, ?2)")?
        .execute(params![payload, now.0])?;
    let payload_id = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO user_events (user_id, seq, payload_id, created_at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?1, ?2 FROM json_each(?3)",
    )?
    .execute(params![payload_id, now.0, pairs])?;
    Ok(out)
}

/// The message `author` sent with `client_id` in `conversation`.
fn by_client_id(
    tx: &Tx,
    conversation: &str,
    author: Author,
    client_id: &str,
) -> StoreResult<Option<StoredMessage>> {
    tx.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages \
         WHERE conversation_id = ?1 AND author = ?2 AND client_id = ?3"
    ))?
    .query_row(params![conversation, author.key(), client_id], |row| {
        Ok(MessageColumns {
            conversation_id: row.get(0)?,
            seq: row.get(1)?,
            id: row.get(2)?,
            author: row.get(3)?,
            client_id: row.get(4)?,
            body: row.get(5)?,
            created_at: row.get(6)?,
            edited_at: row.get(7)?,
            deleted_at: row.get(8)?,
        })
    })
    .optional()?
    .map(MessageColumns::decode)
    .transpose()
}

/// Stores a new message (or finds the one stored before with its client
/// id) and appends its event to each of `notify`'s logs.
pub(super) fn post_in(
    tx: &Tx,
    m: &NewMessage,
    notify: &[UserId],
    event: &PendingEvent,
    now: Timestamp,
) -> StoreResult<Posted> {
    let conversation = m.conversation_id.to_string();
    if let Some(message) = by_client_id(tx, &conversation, m.author, &m.client_id)? {
        return Ok(Posted {
            message,
            event: None,
            seqs: Vec::new(),
        });
    }
    if let Some(user) = m.joins {
        tx.prepare_cached(
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
             VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![conversation, user.to_string(), now.0])?;
    }
    let n: i64 = tx
        .prepare_cached(
            "UPDATE conversations SET last_seq = last_seq + 1, last_activity = ?1 \
             WHERE id = ?2 RETURNING last_seq",
        )?
        .query_row(params![now.0, conversation], |row| row.get(0))?;
    let seq = u64::try_from(n).map_err(|_| StoreError::Corrupt("last_seq negative".into()))?;
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // Not indexed yet (`search_rowid` NULL): see [`index_pending`].
    tx.prepare_cached(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)"
    ))?
    .execute(params![
        conversation,
        n,
        m.id.to_string(),
        m.author.key(),
        m.client_id,
        body,
        now.0
    ])?;
    if !m.body.attachments.is_empty() {
        let ids: Vec<_> = m.body.attachments.iter().map(|a| a.file_id).collect();
        // A forward shows its original's files; it does not take them.
        if m.body.forwarded.is_some() {
            super::sqlite_files::refer(tx, &ids, m.id, m.conversation_id)?;
        } else {
            super::sqlite_files::attach(tx, &ids, m.id, m.conversation_id, m.author)?;
        }
    }
    let stored = m.stored(seq, now);
    let payload = event.with_seq(seq);
    let seqs = append(tx, notify, &payload, now)?;
    Ok(Posted {
        message: stored,
        event: Some(Arc::from(payload)),
        seqs,
    })
}

/// Changes a stored message (an edit or a delete): its row, its row of
/// the search index, its files when deleted, and the event in each of
/// `notify`'s logs.
pub(super) fn update_in(
    tx: &Tx,
    m: &StoredMessage,
    notify: &[UserId],
    event: &str,
    now: Timestamp,
) -> StoreResult<Vec<(UserId, u64)>> {
    let conversation = m.conversation_id.to_string();
    let seq = to_i64(m.seq);
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The message's own row of the index, by its id (no scan).
    tx.prepare_cached(
        "DELETE FROM message_search WHERE rowid = \
         (SELECT search_rowid FROM messages WHERE conversation_id = ?1 AND seq = ?2)",
    )?
    .execute(params![conversation, seq])?;
    if m.deleted_at.is_some() {
        // A message deleted under a legal hold keeps its files with the
        // version kept (see `GovernanceStore::keep_copy`).
        let kept: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM held_copies WHERE message_id = ?1 AND why = 'deleted')",
            )?
            .query_row(params![m.id.to_string()], |row| row.get(0))?;
        if !kept {
            super::sqlite_files::discard_message_files(tx, m.id, now)?;
        }
        unmark(tx, &conversation, seq)?;
    }
    // An edited message is indexed again with the others waiting.
    tx.prepare_cached(
        "UPDATE messages SET body = ?1, edited_at = ?2, deleted_at = ?3, search_rowid = NULL \
         WHERE conversation_id = ?4 AND id = ?5",
    )?
    .execute(params![
        body,
        m.edited_at.map(|t| t.0),
        m.deleted_at.map(|t| t.0),
        conversation,
        m.id.to_string()
    ])?;
    append(tx, notify, event, now)
}

/// Adds or withdraws a reaction or a pin (see [`MarkChange`]) and, when
/// that changed something, appends its event with the count after the
/// change to each of `notify`'s logs.
pub(super) fn mark_in(
    tx: &Tx,
    change: &MarkChange,
    notify: &[UserId],
    event: &PendingEvent,
    now: Timestamp,
) -> StoreResult<(Marked, Option<Arc<str>>)> {
    let conversation = change.conversation_id.to_string();
    let seq = to_i64(change.seq);
    let count = match &change.mark {
        Mark::Reaction { emoji, user, limit } => {
            let user = user.to_string();
            if change.on {
                let (distinct, mine, this): (i64, i64, i64) = tx
                    .prepare_cached(
                        "SELECT COUNT(DISTINCT emoji), COALESCE(SUM(emoji = ?3 AND user_id = ?4), 0), \
                         COALESCE(SUM(emoji = ?3), 0) \
                         FROM message_reactions WHERE conversation_id = ?1 AND seq = ?2",
                    )?
                    .query_row(params![conversation, seq, emoji, user], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?;
                if mine > 0 {
                    return Ok((Marked::Unchanged, None));
                }
                if this == 0 && distinct >= i64::from(*limit) {
                    return Ok((Marked::Full, None));
                }
                tx.prepare_cached(
                    "INSERT INTO message_reactions (conversation_id, seq, emoji, user_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![conversation, seq, emoji, user, now.0])?;
                this + 1
            } else {
                let gone = tx
                    .prepare_cached(
                        "DELETE FROM message_reactions \
                         WHERE conversation_id = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
                    )?
                    .execute(params![conversation, seq, emoji, user])?;
                if gone == 0 {
                    return Ok((Marked::Unchanged, None));
                }
                tx.prepare_cached(
                    "SELECT COUNT(*) FROM message_reactions \
                     WHERE conversation_id = ?1 AND seq = ?2 AND emoji = ?3",
                )?
                .query_row(params![conversation, seq, emoji], |row| row.get(0))?
            }
        }
        Mark::Pin { by, limit } => {
            let (pinned, this): (i64, i64) = tx
                .prepare_cached(
                    "SELECT COUNT(*), COALESCE(SUM(seq = ?2), 0) FROM pinned_messages \
                     WHERE conversation_id = ?1",
                )?
                .query_row(params![conversation, seq], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            match (change.on, this > 0) {
                (true, true) | (false, false) => return Ok((Marked::Unchanged, None)),
                (true, false) if pinned >= i64::from(*limit) => return Ok((Marked::Full, None)),
                (true, false) => {
                    tx.prepare_cached(
                        "INSERT INTO pinned_messages (conversation_id, seq, pinned_by, pinned_at) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![conversation, seq, by.key(), now.0])?;
                    pinned + 1
                }
                (false, true) => {
                    tx.prepare_cached(
                        "DELETE FROM pinned_messages WHERE conversation_id = ?1 AND seq = ?2",
                    )?
                    .execute(params![conversation, seq])?;
                    pinned - 1
                }
            }
        }
    };
    let count = u64::try_from(count).map_err(|_| StoreError::Corrupt("count negative".into()))?;
    let payload = event.with_seq(count);
    let seqs = append(tx, notify, &payload, now)?;
    Ok((Marked::Changed { count, seqs }, Some(Arc::from(payload))))
}

/// A deleted message's reactions and pin go with its body.
fn unmark(tx: &Tx, conversation: &str, seq: i64) -> StoreResult<()> {
    for table in ["message_reactions", "pinned_messages"] {
        tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE conversation_id = ?1 AND seq = ?2"
        ))?
        .execute(params![conversation, seq])?;
    }
    Ok(())
}
