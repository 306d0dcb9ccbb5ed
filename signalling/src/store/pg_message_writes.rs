//! What the PostgreSQL writer's transaction does: lock what the batch
//! numbers from, then each write (a new message — with its event and log
//! rows in one statement —, an edit or delete, an event), then store the
//! new numbers.
//!
//! Locks come first, for the whole batch and in one order — the
//! conversations it posts to, the messages it changes, the users it
//! notifies, each sorted by id — so that two nodes' writers that touch
//! the same rows take them in the same order and never deadlock. A
//! user's row in `user_event_heads` (created when missing) stays locked
//! until the commit: another node numbering for the same user waits for
//! it, so a user's events commit in the order of their numbers.
//!
//! While the batch holds the locks the numbers are counted here
//! ([`Numbers`]); a write that fails gives its numbers back (with its
//! savepoint, or with the whole batch's rollback), and the heads and conversations are written once, at the
//! end of the batch.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sqlx::{PgConnection, Row as _};

use super::messaging::{NewMessage, PendingEvent, Posted, StoredMessage};
use super::pg_error::PgResult as _;
use super::pg_messaging::{MESSAGE_COLUMNS, message_from, to_i64};
use super::{StoreError, StoreResult};
use crate::ids::{Timestamp, UserId};

/// The numbers a batch hands out: each locked conversation's last message
/// and activity, each locked user's last event.
#[derive(Debug, Default)]
pub(super) struct Numbers {
    conversations: HashMap<String, (i64, i64)>,
    heads: HashMap<UserId, i64>,
    /// What the batch changed, to write back at its end.
    touched_conversations: HashSet<String>,
    touched_heads: HashSet<UserId>,
}

/// The numbers one write took, applied to [`Numbers`] once its savepoint
/// is released.
#[derive(Debug, Default)]
pub(super) struct Taken {
    conversation: Option<(String, i64, i64)>,
    heads: Vec<(UserId, i64)>,
}

impl Numbers {
    /// The write's numbers become the batch's.
    pub(super) fn keep(&mut self, taken: Taken) {
        if let Some((id, seq, at)) = taken.conversation {
            self.conversations.insert(id.clone(), (seq, at));
            self.touched_conversations.insert(id);
        }
        for (user, seq) in taken.heads {
            self.heads.insert(user, seq);
            self.touched_heads.insert(user);
        }
    }

    /// The next event number of each of `users` (each once, in their
    /// first order), as `taken` records them.
    fn number(&self, users: &[UserId], taken: &mut Taken) -> StoreResult<Vec<(UserId, u64)>> {
        let mut seen = HashSet::with_capacity(users.len());
        let mut out = Vec::with_capacity(users.len());
        for user in users.iter().filter(|u| seen.insert(**u)) {
            let last = self.heads.get(user).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("the writer numbers for {user} without its lock"))
            })?;
            let seq = last + 1;
            taken.heads.push((*user, seq));
            out.push((
                *user,
                u64::try_from(seq).map_err(|_| StoreError::Corrupt("last_seq negative".into()))?,
            ));
        }
        Ok(out)
    }
}

/// What a batch locks, gathered from its writes.
#[derive(Debug, Default)]
pub(super) struct LockSet {
    pub conversations: BTreeSet<String>,
    pub messages: BTreeSet<String>,
    pub users: BTreeSet<String>,
}

/// Takes the batch's locks in the one order every writer uses (see the
/// module's docs); returns what they hold.
pub(super) async fn lock(tx: &mut PgConnection, set: LockSet) -> StoreResult<Numbers> {
    let mut numbers = Numbers::default();
    if !set.conversations.is_empty() {
        // `NO KEY UPDATE`: what the final UPDATE takes anyway; foreign
        // key checks of other transactions (members added) do not wait.
        let rows = sqlx::query(
            "SELECT id, last_seq, last_activity FROM conversations WHERE id = ANY($1) \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(set.conversations.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
        .pg()?;
        for row in rows {
            let id: String = row.try_get("id").pg()?;
            let at = (
                row.try_get("last_seq").pg()?,
                row.try_get("last_activity").pg()?,
            );
            numbers.conversations.insert(id, at);
        }
    }
    if !set.messages.is_empty() {
        sqlx::query("SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(set.messages.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .pg()?;
    }
    if !set.users.is_empty() {
        // Each head row created or locked, in order; a row another
        // transaction holds is waited for, and then read as committed.
        let rows = sqlx::query(
            "INSERT INTO user_event_heads (user_id, last_seq) \
             SELECT u, 0 FROM unnest($1::text[]) AS u ORDER BY u \
             ON CONFLICT (user_id) DO UPDATE SET last_seq = user_event_heads.last_seq \
             RETURNING user_id, last_seq",
        )
        .bind(set.users.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
        .pg()?;
        for row in rows {
            let user: String = row.try_get("user_id").pg()?;
            let user: UserId = user
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("user_id: {user:?}")))?;
            numbers.heads.insert(user, row.try_get("last_seq").pg()?);
        }
    }
    Ok(numbers)
}

/// Writes the batch's new numbers back (its last statements before the
/// commit).
pub(super) async fn store_numbers(tx: &mut PgConnection, numbers: &Numbers) -> StoreResult<()> {
    if !numbers.touched_conversations.is_empty() {
        let mut ids = Vec::new();
        let mut seqs = Vec::new();
        let mut ats = Vec::new();
        for id in &numbers.touched_conversations {
            if let Some((seq, at)) = numbers.conversations.get(id) {
                ids.push(id.clone());
                seqs.push(*seq);
                ats.push(*at);
            }
        }
        sqlx::query(
            "UPDATE conversations c SET last_seq = v.last_seq, last_activity = v.at \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, last_seq, at) \
             WHERE c.id = v.id",
        )
        .bind(ids)
        .bind(seqs)
        .bind(ats)
        .execute(&mut *tx)
        .await
        .pg()?;
    }
    if !numbers.touched_heads.is_empty() {
        let mut users = Vec::new();
        let mut seqs = Vec::new();
        for user in &numbers.touched_heads {
            if let Some(seq) = numbers.heads.get(user) {
                users.push(user.to_string());
                seqs.push(*seq);
            }
        }
        sqlx::query(
            "UPDATE user_event_heads h SET last_seq = v.last_seq \
             FROM unnest($1::text[], $2::bigint[]) AS v(user_id, last_seq) \
             WHERE h.user_id = v.user_id",
        )
        .bind(users)
        .bind(seqs)
        .execute(&mut *tx)
        .await
        .pg()?;
    }
    Ok(())
}

/// Appends `payload` to each user's log with the next numbers: the
/// payload stored once, one row per user pointing at it, one statement.
pub(super) async fn append(
    tx: &mut PgConnection,
    numbers: &Numbers,
    taken: &mut Taken,
    users: &[UserId],
    payload: &str,
    now: Timestamp,
) -> StoreResult<Vec<(UserId, u64)>> {
    let seqs = numbers.number(users, taken)?;
    if seqs.is_empty() {
        return Ok(seqs);
    }
    let ids: Vec<String> = seqs.iter().map(|(u, _)| u.to_string()).collect();
    let numbers: Vec<i64> = seqs.iter().map(|(_, n)| to_i64(*n)).collect();
    sqlx::query(
        "WITH p AS (INSERT INTO event_payloads (payload, created_at) VALUES ($1, $2) RETURNING id) \
         INSERT INTO user_events (user_id, seq, payload_id, created_at) \
         SELECT v.user_id, v.seq, p.id, $2 FROM p, unnest($3::text[], $4::bigint[]) AS v(user_id, seq)",
    )
    .bind(payload)
    .bind(now.0)
    .bind(ids)
    .bind(numbers)
    .execute(&mut *tx)
    .await
    .pg()?;
    Ok(seqs)
}

/// Stores a new message (or finds the one stored before with its client
/// id, and writes nothing) and appends its event to each of `notify`'s
/// logs.
pub(super) async fn post_in(
    tx: &mut PgConnection,
    numbers: &Numbers,
    taken: &mut Taken,
    m: &NewMessage,
    notify: &[UserId],
    event: &PendingEvent,
    now: Timestamp,
) -> StoreResult<Posted> {
    let conversation = m.conversation_id.to_string();
    let Some((last, _)) = numbers.conversations.get(&conversation).copied() else {
        return Err(StoreError::Backend(
            format!("no conversation {conversation}").into(),
        ));
    };
    let n = last + 1;
    let seq = u64::try_from(n).map_err(|_| StoreError::Corrupt("last_seq negative".into()))?;
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // The message, its event payload and each recipient's log row in one
    // statement (one round trip). A retry (same author and client id)
    // conflicts and inserts nothing, so neither do the others; the batch
    // holds the conversation's lock, so no other node's copy is in flight.
    let seqs = numbers.number(notify, taken)?;
    let payload = event.with_seq(seq);
    let users: Vec<String> = seqs.iter().map(|(u, _)| u.to_string()).collect();
    let user_seqs: Vec<i64> = seqs.iter().map(|(_, n)| to_i64(*n)).collect();
    let inserted = sqlx::query(&format!(
        "WITH m AS (INSERT INTO messages ({MESSAGE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL) \
             ON CONFLICT (conversation_id, author, client_id) DO NOTHING RETURNING seq), \
         p AS (INSERT INTO event_payloads (payload, created_at) \
             SELECT $8, $7 FROM m WHERE cardinality($9::text[]) > 0 RETURNING id), \
         e AS (INSERT INTO user_events (user_id, seq, payload_id, created_at) \
             SELECT v.user_id, v.seq, p.id, $7 FROM p, unnest($9::text[], $10::bigint[]) AS v(user_id, seq)) \
         SELECT seq FROM m"
    ))
    .bind(&conversation)
    .bind(n)
    .bind(m.id.to_string())
    .bind(m.author.key())
    .bind(&m.client_id)
    .bind(body)
    .bind(now.0)
    .bind(&payload)
    .bind(users)
    .bind(user_seqs)
    .fetch_optional(&mut *tx)
    .await
    .pg()?;
    if inserted.is_none() {
        // Nothing was written: the numbers are not taken.
        taken.heads.clear();
        let first = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = $1 AND author = $2 AND client_id = $3"
        ))
        .bind(&conversation)
        .bind(m.author.key())
        .bind(&m.client_id)
        .fetch_one(&mut *tx)
        .await
        .pg()?;
        return Ok(Posted {
            message: message_from(&first)?,
            event: None,
            seqs: Vec::new(),
        });
    }
    taken.conversation = Some((conversation.clone(), n, now.0));
    if let Some(user) = m.joins {
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&conversation)
        .bind(user.to_string())
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .pg()?;
    }
    if !m.body.attachments.is_empty() {
        let ids: Vec<_> = m.body.attachments.iter().map(|a| a.file_id).collect();
        // A forward shows its original's files; it does not take them.
        if m.body.forwarded.is_some() {
            super::pg_files::refer(tx, &ids, m.id, m.conversation_id).await?;
        } else {
            super::pg_files::attach(tx, &ids, m.id, m.conversation_id, m.author).await?;
        }
    }
    Ok(Posted {
        message: m.stored(seq, now),
        event: Some(Arc::from(payload)),
        seqs,
    })
}

/// Changes a stored message (an edit or a delete; its search words follow
/// by themselves), forgets its files when deleted, and appends the event
/// to each of `notify`'s logs.
pub(super) async fn update_in(
    tx: &mut PgConnection,
    numbers: &Numbers,
    taken: &mut Taken,
    m: &StoredMessage,
    notify: &[UserId],
    event: &str,
    now: Timestamp,
) -> StoreResult<Vec<(UserId, u64)>> {
    let body = serde_json::to_string(&m.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if m.deleted_at.is_some() {
        // A message deleted under a legal hold keeps its files with the
        // version kept (see `GovernanceStore::keep_copy`).
        let kept: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM held_copies WHERE message_id = $1 AND why = 'deleted')",
        )
        .bind(m.id.to_string())
        .fetch_one(&mut *tx)
        .await
        .pg()?;
        if !kept {
            super::pg_files::discard_message_files(tx, m.id, now).await?;
        }
        super::pg_marks::unmark(tx, &m.conversation_id.to_string(), to_i64(m.seq)).await?;
    }
    sqlx::query(
        "UPDATE messages SET body = $1, edited_at = $2, deleted_at = $3 \
         WHERE conversation_id = $4 AND id = $5",
    )
    .bind(body)
    .bind(m.edited_at.map(|t| t.0))
    .bind(m.deleted_at.map(|t| t.0))
    .bind(m.conversation_id.to_string())
    .bind(m.id.to_string())
    .execute(&mut *tx)
    .await
    .pg()?;
    append(tx, numbers, taken, notify, event, now).await
}
