//! [`MessageStore`] on SQLite.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::messaging::{
    Author, Conversation, ConversationEntry, EventRecord, GrantChange, MessageBody, MessageStore,
    NewMessage, OnCommit, PendingEvent, Posted, StoredMessage,
};
use super::sqlite::SqliteStore;
use super::sqlite_writer::{Write, Written};
use super::{StoreError, StoreResult};
use crate::ids::{AppId, CallId, ConversationId, MessageId, Timestamp, UserId};

const CONVERSATION_COLUMNS: &str = "id, app_id, title, is_group, displayed, all_users, app_key, context, \
     last_seq, last_activity, created_at";
/// The messages that mention anyone (`m`), as the partial index
/// `messages_mentioning` has them: a query that says so uses it.
pub(super) const MENTIONING: &str = "(json_extract(m.body, '$.mentions') IS NOT NULL \
     OR json_extract(m.body, '$.mention_all') IS NOT NULL)";
pub(super) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, id, author, client_id, body, created_at, edited_at, deleted_at";

pub(super) fn parse<T: std::str::FromStr>(row: &SqliteRow, column: &str) -> StoreResult<T> {
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{column}: {text:?}")))
}

pub(super) fn seq(row: &SqliteRow, column: &str) -> StoreResult<u64> {
    let v: i64 = row.try_get(column)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} negative")))
}

fn conversation_from(row: &SqliteRow) -> StoreResult<Conversation> {
    Ok(Conversation {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        title: row.try_get("title")?,
        is_group: row.try_get("is_group")?,
        displayed: row.try_get("displayed")?,
        all_users: row.try_get("all_users")?,
        app_key: row.try_get("app_key")?,
        context: row.try_get("context")?,
        last_seq: seq(row, "last_seq")?,
        last_activity: Timestamp(row.try_get("last_activity")?),
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

pub(super) fn message_from(row: &SqliteRow) -> StoreResult<StoredMessage> {
    MessageColumns {
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        author: row.try_get("author")?,
        client_id: row.try_get("client_id")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
        edited_at: row.try_get("edited_at")?,
        deleted_at: row.try_get("deleted_at")?,
    }
    .decode()
}

/// A message's columns ([`MESSAGE_COLUMNS`]) as SQLite stores them, read
/// by either driver (the pool's or the writer's).
pub(super) struct MessageColumns {
    pub conversation_id: String,
    pub seq: i64,
    pub id: String,
    pub author: String,
    pub client_id: String,
    pub body: String,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

impl MessageColumns {
    /// The message these columns hold.
    pub(super) fn decode(self) -> StoreResult<StoredMessage> {
        let corrupt = |column: &str, text: &str| StoreError::Corrupt(format!("{column}: {text:?}"));
        let author = if self.author == "app" {
            Author::App
        } else {
            Author::User(
                self.author
                    .parse()
                    .map_err(|_| corrupt("author", &self.author))?,
            )
        };
        Ok(StoredMessage {
            conversation_id: self
                .conversation_id
                .parse()
                .map_err(|_| corrupt("conversation_id", &self.conversation_id))?,
            seq: u64::try_from(self.seq)
                .map_err(|_| StoreError::Corrupt("seq negative".to_owned()))?,
            id: self.id.parse().map_err(|_| corrupt("id", &self.id))?,
            author,
            client_id: self.client_id,
            body: serde_json::from_str(&self.body)
                .map_err(|e| StoreError::Corrupt(format!("body: {e}")))?,
            created_at: Timestamp(self.created_at),
            edited_at: self.edited_at.map(Timestamp),
            deleted_at: self.deleted_at.map(Timestamp),
        })
    }
}

/// The condition that lets a participant see a conversation `c` as far as
/// its object goes: not contextual, or every object (`?1` true: the
/// application), or the token's claims list it (`?2`, a JSON array), or a
/// grant of the participant (`?3`) does. Binds, in order: all, claims,
/// participant.
const VOUCHED: &str = "(c.context IS NULL OR ? OR c.context IN (SELECT value FROM json_each(?)) \
     OR EXISTS (SELECT 1 FROM context_grants g WHERE g.app_id = c.app_id AND g.user_id = ? \
                AND g.context = c.context))";

/// The `all` and `claims` binds of [`VOUCHED`].
fn vouched_binds(contexts: Option<&[String]>) -> StoreResult<(bool, String)> {
    Ok(match contexts {
        None => (true, "[]".to_owned()),
        Some(claims) => (
            false,
            serde_json::to_string(claims).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
    })
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Hands `write` (not a new message) to the writer; returns each
    /// notified user's event number.
    async fn write_events(
        &self,
        write: Write,
        notify: &[UserId],
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        match self.write(write, notify, now, then).await? {
            Written::Appended(seqs) => Ok(seqs),
            Written::Posted(_) | Written::Marked(..) => Err(StoreError::Corrupt(
                "the message writer answered an event with a post".to_owned(),
            )),
        }
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_conversation(
        &self,
        c: &Conversation,
        members: &[UserId],
    ) -> StoreResult<(Conversation, bool)> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) \
             ON CONFLICT DO NOTHING RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(c.id.to_string())
        .bind(c.app_id.to_string())
        .bind(&c.title)
        .bind(c.is_group)
        .bind(c.displayed)
        .bind(c.all_users)
        .bind(&c.app_key)
        .bind(&c.context)
        .bind(c.last_activity.0)
        .bind(c.created_at.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            // Same key or context: the existing one.
            let row = sqlx::query(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = ? AND \
                 ((app_key IS NOT NULL AND app_key = ?) OR (context IS NOT NULL AND context = ?))"
            ))
            .bind(c.app_id.to_string())
            .bind(&c.app_key)
            .bind(&c.context)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok((conversation_from(&row)?, false));
        };
        for user in members {
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, joined_at) VALUES (?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(c.id.to_string())
            .bind(user.to_string())
            .bind(c.created_at.0)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(context) = &c.context {
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
                 SELECT ?, user_id, ? FROM context_grants WHERE app_id = ? AND context = ? \
                 ON CONFLICT DO NOTHING",
            )
            .bind(c.id.to_string())
            .bind(c.created_at.0)
            .bind(c.app_id.to_string())
            .bind(context)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((conversation_from(&row)?, true))
    }

    async fn conversation(
        &self,
        app: AppId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = ? AND id = ?"
        ))
        .bind(app.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(conversation_from)
        .transpose()
    }

    async fn conversation_by_context(
        &self,
        app: AppId,
        context: &str,
    ) -> StoreResult<Option<Conversation>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = ? AND context = ?"
        ))
        .bind(app.to_string())
        .bind(context)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(conversation_from)
        .transpose()
    }

    async fn add_members(
        &self,
        id: ConversationId,
        users: &[UserId],
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        for user in users {
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, joined_at) VALUES (?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM conversation_members WHERE conversation_id = ? AND user_id = ?",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn members(&self, id: ConversationId) -> StoreResult<Vec<UserId>> {
        sqlx::query("SELECT user_id FROM conversation_members WHERE conversation_id = ? ORDER BY joined_at, user_id")
            .bind(id.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| parse(r, "user_id"))
            .collect()
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM conversation_members WHERE conversation_id = ? AND user_id = ?",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(self.pool())
        .await?
        .is_some())
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: Author,
        client_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = ? AND author = ? AND client_id = ?"
        ))
        .bind(conversation.to_string())
        .bind(author.key())
        .bind(client_id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(message_from)
        .transpose()
    }

    async fn post_then(
        &self,
        m: &NewMessage,
        notify: &[UserId],
        event: PendingEvent,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Posted> {
        let write = Write::Post {
            message: m.clone(),
            event,
        };
        match self.write(write, notify, now, then).await? {
            Written::Posted(posted) => Ok(*posted),
            Written::Appended(_) | Written::Marked(..) => Err(StoreError::Corrupt(
                "the message writer answered a post with an update".to_owned(),
            )),
        }
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> StoreResult<Option<StoredMessage>> {
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND id = ?"
        ))
        .bind(conversation.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(message_from)
        .transpose()
    }

    async fn update_message_then(
        &self,
        m: &StoredMessage,
        notify: &[UserId],
        event: &str,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        let write = Write::Update {
            message: m.clone(),
            event: Arc::from(event),
        };
        self.write_events(write, notify, now, then).await
    }

    async fn history(
        &self,
        conversation: ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        use super::threads::{Scope, ThreadStore as _};
        self.history_in(conversation, Scope::All, after, before, limit)
            .await
    }

    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq_no: u64,
    ) -> StoreResult<u64> {
        let row = sqlx::query(
            "INSERT INTO read_marks (conversation_id, user_id, seq) VALUES (?, ?, ?) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET seq = MAX(read_marks.seq, excluded.seq) \
             RETURNING seq",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .bind(to_i64(seq_no))
        .fetch_one(self.pool())
        .await?;
        seq(&row, "seq")
    }

    async fn conversations_of(
        &self,
        app: AppId,
        user: UserId,
        contexts: Option<&[String]>,
        before: Option<(Timestamp, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationEntry>> {
        let (before_at, before_id) =
            before.map_or((i64::MAX, String::new()), |(t, id)| (t.0, id.to_string()));
        let columns = CONVERSATION_COLUMNS
            .split(", ")
            .map(|c| format!("c.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (all, claims) = vouched_binds(contexts)?;
        // `hidden`: unread messages addressed to others (not to the user,
        // not by it); only messages with recipients are looked at
        // (`messages_addressed` indexes them). The bot (`?5`) sees all.
        let rows = sqlx::query(&format!(
            "SELECT {columns}, COALESCE(r.seq, 0) AS read_seq, \
             (SELECT COUNT(*) FROM messages m WHERE NOT ?5 AND m.conversation_id = c.id \
                AND m.seq > COALESCE(r.seq, 0) AND json_extract(m.body, '$.recipients') IS NOT NULL \
                AND m.author <> ?1 \
                AND NOT EXISTS (SELECT 1 FROM json_each(m.body, '$.recipients') WHERE value = ?1)) AS hidden, \
             (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id \
                AND m.seq > COALESCE(r.seq, 0) AND m.author <> ?1 AND {MENTIONING} \
                AND (json_extract(m.body, '$.mention_all') = 1 \
                     OR EXISTS (SELECT 1 FROM json_each(m.body, '$.mentions') WHERE value = ?1))) AS mentions \
             FROM conversations c \
             LEFT JOIN read_marks r ON r.conversation_id = c.id AND r.user_id = ?1 \
             WHERE c.id IN (SELECT conversation_id FROM conversation_members WHERE user_id = ?1 \
                            UNION SELECT id FROM conversations WHERE app_id = ?2 AND all_users = TRUE) \
             AND c.app_id = ?2 AND c.displayed = TRUE \
             AND (c.last_activity < ?3 OR (c.last_activity = ?3 AND c.id < ?4) OR ?4 = '') \
             AND (c.context IS NULL OR ?5 OR c.context IN (SELECT value FROM json_each(?6)) \
                  OR EXISTS (SELECT 1 FROM context_grants g WHERE g.app_id = c.app_id \
                             AND g.user_id = ?1 AND g.context = c.context)) \
             ORDER BY c.last_activity DESC, c.id DESC LIMIT ?7"
        ))
        .bind(user.to_string())
        .bind(app.to_string())
        .bind(before_at)
        .bind(&before_id)
        .bind(all)
        .bind(claims)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let conversation = conversation_from(row)?;
                let read = seq(row, "read_seq")?;
                let hidden = seq(row, "hidden")?;
                Ok(ConversationEntry {
                    mentions: seq(row, "mentions")?,
                    unread: conversation
                        .last_seq
                        .saturating_sub(read)
                        .saturating_sub(hidden),
                    conversation,
                })
            })
            .collect()
    }

    async fn append_events_then(
        &self,
        users: &[UserId],
        payload: &str,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        let write = Write::Append {
            event: Arc::from(payload),
        };
        self.write_events(write, users, now, then).await
    }

    async fn events_after(
        &self,
        user: UserId,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        sqlx::query(
            "SELECT e.seq, COALESCE(e.payload, p.payload) AS payload FROM user_events e \
             LEFT JOIN event_payloads p ON p.id = e.payload_id \
             WHERE e.user_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
        )
        .bind(user.to_string())
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(EventRecord {
                seq: seq(r, "seq")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect()
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM user_events WHERE created_at < ?")
            .bind(before.0)
            .execute(&mut *tx)
            .await?;
        // Every row pointing at a payload has its age: none is left.
        sqlx::query("DELETE FROM event_payloads WHERE created_at < ?")
            .bind(before.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn oldest_event(&self, user: UserId) -> StoreResult<Option<u64>> {
        let row = sqlx::query("SELECT MIN(seq) AS oldest FROM user_events WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_one(self.pool())
            .await?;
        Ok(row
            .try_get::<Option<i64>, _>("oldest")?
            .and_then(|v| u64::try_from(v).ok()))
    }

    async fn event_head(&self, user: UserId) -> StoreResult<u64> {
        let row = sqlx::query("SELECT last_seq FROM user_event_heads WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.map_or(Ok(0), |r| seq(&r, "last_seq"))
    }

    async fn search(
        &self,
        app: AppId,
        participant: UserId,
        contexts: Option<&[String]>,
        query: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        // Every message acknowledged so far into the index first: the
        // writer indexes in batches, off the send path.
        self.write_events(Write::Index, &[], Timestamp(0), Box::new(|_, _| {}))
            .await?;
        // Every word quoted (no query syntax from users), as a prefix.
        let terms: Vec<String> = query
            .split_whitespace()
            .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let (all, claims) = vouched_binds(contexts)?;
        let columns = MESSAGE_COLUMNS
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "SELECT {columns} FROM message_search s \
             JOIN messages m ON m.conversation_id = s.conversation_id AND m.seq = s.seq \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE message_search MATCH ? AND c.app_id = ? AND m.deleted_at IS NULL \
             AND (c.all_users = TRUE OR EXISTS (SELECT 1 FROM conversation_members cm \
                  WHERE cm.conversation_id = c.id AND cm.user_id = ?)) \
             AND {VOUCHED} \
             ORDER BY s.rank LIMIT ?"
        ))
        .bind(terms.join(" "))
        .bind(app.to_string())
        .bind(participant.to_string())
        .bind(all)
        .bind(claims)
        .bind(participant.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(message_from)
        .collect()
    }

    async fn set_grant(
        &self,
        app: AppId,
        user: UserId,
        context: &str,
        granted: bool,
        now: Timestamp,
    ) -> StoreResult<GrantChange> {
        let mut tx = self.write_tx().await?;
        let query = if granted {
            "INSERT INTO context_grants (app_id, user_id, context, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM context_grants WHERE app_id = ? AND user_id = ? AND context = ? AND ? IS NOT NULL"
        };
        let grant = sqlx::query(query)
            .bind(app.to_string())
            .bind(user.to_string())
            .bind(context)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        let conversation: Option<ConversationId> =
            sqlx::query("SELECT id FROM conversations WHERE app_id = ? AND context = ?")
                .bind(app.to_string())
                .bind(context)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| parse(&row, "id"))
                .transpose()?;
        let mut changed = grant.rows_affected() == 1;
        if let Some(id) = conversation {
            let query = if granted {
                "INSERT INTO conversation_members (conversation_id, user_id, joined_at) VALUES (?, ?, ?) \
                 ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM conversation_members WHERE conversation_id = ? AND user_id = ? AND ? IS NOT NULL"
            };
            let member = sqlx::query(query)
                .bind(id.to_string())
                .bind(user.to_string())
                .bind(now.0)
                .execute(&mut *tx)
                .await?;
            changed |= member.rows_affected() == 1;
        }
        tx.commit().await?;
        Ok(GrantChange {
            conversation,
            changed,
        })
    }

    async fn has_grant(&self, app: AppId, user: UserId, context: &str) -> StoreResult<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM context_grants WHERE app_id = ? AND user_id = ? AND context = ?",
        )
        .bind(app.to_string())
        .bind(user.to_string())
        .bind(context)
        .fetch_optional(self.pool())
        .await?
        .is_some())
    }

    async fn app_users(&self, app: AppId) -> StoreResult<Vec<UserId>> {
        sqlx::query("SELECT id FROM users WHERE app_id = ? ORDER BY created_at, id")
            .bind(app.to_string())
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| parse(r, "id"))
            .collect()
    }

    async fn set_call_open(
        &self,
        call: CallId,
        open: Option<(AppId, ConversationId, Timestamp)>,
    ) -> StoreResult<()> {
        match open {
            Some((app, conversation, started_at)) => {
                sqlx::query(
                    "INSERT INTO open_calls (id, app_id, conversation_id, started_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                )
                .bind(call.to_string())
                .bind(app.to_string())
                .bind(conversation.to_string())
                .bind(started_at.0)
                .execute(self.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM open_calls WHERE id = ?")
                    .bind(call.to_string())
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }

    async fn open_calls(&self) -> StoreResult<Vec<(CallId, AppId, ConversationId, Timestamp)>> {
        sqlx::query(
            "SELECT id, app_id, conversation_id, started_at FROM open_calls ORDER BY started_at",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                parse(r, "id")?,
                parse(r, "app_id")?,
                parse(r, "conversation_id")?,
                Timestamp(r.try_get("started_at")?),
            ))
        })
        .collect()
    }
}

impl MessageBody {
    /// The body of a deleted message.
    #[must_use]
    pub fn deleted() -> Self {
        Self::default()
    }
}
