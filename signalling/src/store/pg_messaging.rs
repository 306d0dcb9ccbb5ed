//! [`MessageStore`] on PostgreSQL: reads and the rarer writes on the
//! pool; messages and events through the group-commit writer
//! (`pg_writer`).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgRow;

use super::messaging::{
    Author, Conversation, ConversationEntry, EventRecord, GrantChange, MessageStore, NewMessage,
    OnCommit, PendingEvent, Posted, StoredMessage,
};
use super::pg::{PgStore, get, parse_id};
use super::pg_error::PgResult as _;
use super::pg_writer::{Write, Written};
use super::sqlite_messaging::MessageColumns;
use super::{StoreError, StoreResult};
use crate::ids::{AppId, CallId, ConversationId, MessageId, Timestamp, UserId};

const CONVERSATION_COLUMNS: &str = "id, app_id, title, is_group, displayed, all_users, app_key, context, \
     last_seq, last_activity, created_at";
/// The messages that mention anyone (`m`), as the partial index
/// `messages_mentioning` has them: a query that says so uses it.
pub(super) const MENTIONING: &str = "((m.body::jsonb -> 'mentions') IS NOT NULL \
     OR (m.body::jsonb -> 'mention_all') IS NOT NULL)";
pub(super) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, id, author, client_id, body, created_at, edited_at, deleted_at";

/// Most words of a search query that count (the rest are ignored).
const SEARCH_WORDS: usize = 32;

pub(super) fn seq(row: &PgRow, column: &str) -> StoreResult<u64> {
    let v: i64 = get(row, column)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} negative")))
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn conversation_from(row: &PgRow) -> StoreResult<Conversation> {
    Ok(Conversation {
        id: parse_id(row, "id")?,
        app_id: parse_id(row, "app_id")?,
        title: get(row, "title")?,
        is_group: get(row, "is_group")?,
        displayed: get(row, "displayed")?,
        all_users: get(row, "all_users")?,
        app_key: get(row, "app_key")?,
        context: get(row, "context")?,
        last_seq: seq(row, "last_seq")?,
        last_activity: Timestamp(get(row, "last_activity")?),
        created_at: Timestamp(get(row, "created_at")?),
    })
}

pub(super) fn message_from(row: &PgRow) -> StoreResult<StoredMessage> {
    MessageColumns {
        conversation_id: get(row, "conversation_id")?,
        seq: get(row, "seq")?,
        id: get(row, "id")?,
        author: get(row, "author")?,
        client_id: get(row, "client_id")?,
        body: get(row, "body")?,
        created_at: get(row, "created_at")?,
        edited_at: get(row, "edited_at")?,
        deleted_at: get(row, "deleted_at")?,
    }
    .decode()
}

/// `columns` each prefixed with `alias.`.
fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The words of a search query: runs of letters and digits, everything
/// else (quotes, operators, punctuation) a separator, so that no input is
/// query syntax; at most [`SEARCH_WORDS`].
pub(super) fn search_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(SEARCH_WORDS)
        .map(str::to_owned)
        .collect()
}

/// The condition that lets a participant see a conversation `c` as far as
/// its object goes: not contextual, or every object (`$all`: the
/// application), or the token's claims list it (`$claims`, a text array),
/// or a grant of the participant (`$user`) does.
fn vouched(all: &str, claims: &str, user: &str) -> String {
    format!(
        "(c.context IS NULL OR {all} OR c.context = ANY({claims}) \
         OR EXISTS (SELECT 1 FROM context_grants g WHERE g.app_id = c.app_id \
                    AND g.user_id = {user} AND g.context = c.context))"
    )
}

/// The `all` and `claims` binds of [`vouched`].
fn vouched_binds(contexts: Option<&[String]>) -> (bool, Vec<String>) {
    match contexts {
        None => (true, Vec::new()),
        Some(claims) => (false, claims.to_vec()),
    }
}

impl PgStore {
    /// Hands `write` (not a new message) to the writer; returns each
    /// notified user's event number.
    async fn write_events(
        &self,
        write: Write,
        notify: &[UserId],
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        match self.writer().write(write, notify, now, then).await? {
            Written::Appended(seqs) => Ok(seqs),
            Written::Posted(_) | Written::Marked(..) => Err(StoreError::Corrupt(
                "the message writer answered an event with a post".to_owned(),
            )),
        }
    }
}

#[async_trait]
impl MessageStore for PgStore {
    async fn create_conversation(
        &self,
        c: &Conversation,
        members: &[UserId],
    ) -> StoreResult<(Conversation, bool)> {
        let mut tx = self.pool().begin().await.pg()?;
        // A concurrent creation with the same key or context waits on the
        // unique index, then does nothing: the other's is found below.
        let inserted = sqlx::query(&format!(
            "INSERT INTO conversations ({CONVERSATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10) \
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
        .await
        .pg()?;
        let Some(row) = inserted else {
            let row = sqlx::query(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = $1 AND \
                 ((app_key IS NOT NULL AND app_key = $2) OR (context IS NOT NULL AND context = $3))"
            ))
            .bind(c.app_id.to_string())
            .bind(&c.app_key)
            .bind(&c.context)
            .fetch_one(&mut *tx)
            .await
            .pg()?;
            tx.commit().await.pg()?;
            return Ok((conversation_from(&row)?, false));
        };
        let members: Vec<String> = members.iter().map(ToString::to_string).collect();
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
             SELECT $1, u, $3 FROM unnest($2::text[]) AS u ON CONFLICT DO NOTHING",
        )
        .bind(c.id.to_string())
        .bind(members)
        .bind(c.created_at.0)
        .execute(&mut *tx)
        .await
        .pg()?;
        if let Some(context) = &c.context {
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
                 SELECT $1, user_id, $2 FROM context_grants WHERE app_id = $3 AND context = $4 \
                 ON CONFLICT DO NOTHING",
            )
            .bind(c.id.to_string())
            .bind(c.created_at.0)
            .bind(c.app_id.to_string())
            .bind(context)
            .execute(&mut *tx)
            .await
            .pg()?;
        }
        tx.commit().await.pg()?;
        Ok((conversation_from(&row)?, true))
    }

    async fn conversation(
        &self,
        app: AppId,
        id: ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = $1 AND id = $2"
        ))
        .bind(app.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await
        .pg()?
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
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE app_id = $1 AND context = $2"
        ))
        .bind(app.to_string())
        .bind(context)
        .fetch_optional(self.pool())
        .await
        .pg()?
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
        let users: Vec<String> = users.iter().map(ToString::to_string).collect();
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
             SELECT $1, u, $3 FROM unnest($2::text[]) AS u ON CONFLICT DO NOTHING",
        )
        .bind(id.to_string())
        .bind(users)
        .bind(now.0)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }

    async fn remove_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(self.pool())
        .await
        .pg()?;
        Ok(done.rows_affected() == 1)
    }

    async fn members(&self, id: ConversationId) -> StoreResult<Vec<UserId>> {
        sqlx::query(
            "SELECT user_id FROM conversation_members WHERE conversation_id = $1 \
             ORDER BY joined_at, user_id",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(|r| parse_id(r, "user_id"))
        .collect()
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(self.pool())
        .await
        .pg()?
        .is_some())
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
        match self.writer().write(write, notify, now, then).await? {
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
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id = $2"
        ))
        .bind(conversation.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await
        .pg()?
        .as_ref()
        .map(message_from)
        .transpose()
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        author: Author,
        client_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = $1 AND author = $2 AND client_id = $3"
        ))
        .bind(conversation.to_string())
        .bind(author.key())
        .bind(client_id)
        .fetch_optional(self.pool())
        .await
        .pg()?
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
            "INSERT INTO read_marks (conversation_id, user_id, seq) VALUES ($1, $2, $3) \
             ON CONFLICT (conversation_id, user_id) \
             DO UPDATE SET seq = GREATEST(read_marks.seq, excluded.seq) \
             RETURNING seq",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .bind(to_i64(seq_no))
        .fetch_one(self.pool())
        .await
        .pg()?;
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
        let columns = qualified(CONVERSATION_COLUMNS, "c");
        let (all, claims) = vouched_binds(contexts);
        let vouched = vouched("$5", "$6", "$1");
        // `hidden`: unread messages addressed to others (not to the user,
        // not by it); only messages with recipients are looked at
        // (`messages_addressed` indexes them). The bot (`$5`) sees all.
        let rows = sqlx::query(&format!(
            "SELECT {columns}, COALESCE(r.seq, 0) AS read_seq, \
             (SELECT COUNT(*) FROM messages m WHERE NOT $5 AND m.conversation_id = c.id \
                AND m.seq > COALESCE(r.seq, 0) AND (m.body::jsonb -> 'recipients') IS NOT NULL \
                AND m.author <> $1 \
                AND NOT ((m.body::jsonb -> 'recipients') ? $1)) AS hidden, \
             (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id \
                AND m.seq > COALESCE(r.seq, 0) AND m.author <> $1 AND {MENTIONING} \
                AND ((m.body::jsonb ->> 'mention_all') = 'true' \
                     OR (m.body::jsonb -> 'mentions') ? $1)) AS mentions \
             FROM conversations c \
             LEFT JOIN read_marks r ON r.conversation_id = c.id AND r.user_id = $1 \
             WHERE c.id IN (SELECT conversation_id FROM conversation_members WHERE user_id = $1 \
                            UNION SELECT id FROM conversations WHERE app_id = $2 AND all_users) \
             AND c.app_id = $2 AND c.displayed \
             AND (c.last_activity < $3 OR (c.last_activity = $3 AND c.id < $4) OR $4 = '') \
             AND {vouched} \
             ORDER BY c.last_activity DESC, c.id DESC LIMIT $7"
        ))
        .bind(user.to_string())
        .bind(app.to_string())
        .bind(before_at)
        .bind(&before_id)
        .bind(all)
        .bind(claims)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?;
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
            "SELECT e.seq, p.payload FROM user_events e \
             JOIN event_payloads p ON p.id = e.payload_id \
             WHERE e.user_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(user.to_string())
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(|r| {
            Ok(EventRecord {
                seq: seq(r, "seq")?,
                payload: get(r, "payload")?,
            })
        })
        .collect()
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await.pg()?;
        let done = sqlx::query("DELETE FROM user_events WHERE created_at < $1")
            .bind(before.0)
            .execute(&mut *tx)
            .await
            .pg()?;
        // Every row pointing at a payload has its age: none is left.
        sqlx::query("DELETE FROM event_payloads WHERE created_at < $1")
            .bind(before.0)
            .execute(&mut *tx)
            .await
            .pg()?;
        tx.commit().await.pg()?;
        Ok(done.rows_affected())
    }

    async fn oldest_event(&self, user: UserId) -> StoreResult<Option<u64>> {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(seq) FROM user_events WHERE user_id = $1")
                .bind(user.to_string())
                .fetch_one(self.pool())
                .await
                .pg()?;
        Ok(oldest.and_then(|v| u64::try_from(v).ok()))
    }

    async fn event_head(&self, user: UserId) -> StoreResult<u64> {
        let row = sqlx::query("SELECT last_seq FROM user_event_heads WHERE user_id = $1")
            .bind(user.to_string())
            .fetch_optional(self.pool())
            .await
            .pg()?;
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
        let words = search_words(query);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let (all, claims) = vouched_binds(contexts);
        let columns = qualified(MESSAGE_COLUMNS, "m");
        let vouched = vouched("$4", "$5", "$3");
        // `messages_search` (GIN) finds the candidates; the query is
        // built once (`q`), ranked per match.
        sqlx::query(&format!(
            "SELECT {columns} FROM (SELECT confer_search_query($1) AS query) q \
             JOIN messages m ON m.search @@ q.query \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.app_id = $2 AND m.deleted_at IS NULL \
             AND (c.all_users OR EXISTS (SELECT 1 FROM conversation_members cm \
                  WHERE cm.conversation_id = c.id AND cm.user_id = $3)) \
             AND {vouched} \
             ORDER BY ts_rank(m.search, q.query) DESC, m.created_at DESC, m.seq DESC LIMIT $6"
        ))
        .bind(words)
        .bind(app.to_string())
        .bind(participant.to_string())
        .bind(all)
        .bind(claims)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?
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
        let mut tx = self.pool().begin().await.pg()?;
        let grant = if granted {
            sqlx::query(
                "INSERT INTO context_grants (app_id, user_id, context, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(app.to_string())
            .bind(user.to_string())
            .bind(context)
            .bind(now.0)
        } else {
            sqlx::query(
                "DELETE FROM context_grants WHERE app_id = $1 AND user_id = $2 AND context = $3",
            )
            .bind(app.to_string())
            .bind(user.to_string())
            .bind(context)
        }
        .execute(&mut *tx)
        .await
        .pg()?;
        let conversation: Option<ConversationId> =
            sqlx::query("SELECT id FROM conversations WHERE app_id = $1 AND context = $2")
                .bind(app.to_string())
                .bind(context)
                .fetch_optional(&mut *tx)
                .await
                .pg()?
                .map(|row| parse_id(&row, "id"))
                .transpose()?;
        let mut changed = grant.rows_affected() == 1;
        if let Some(id) = conversation {
            let member = if granted {
                sqlx::query(
                    "INSERT INTO conversation_members (conversation_id, user_id, joined_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(id.to_string())
                .bind(user.to_string())
                .bind(now.0)
            } else {
                sqlx::query(
                    "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2",
                )
                .bind(id.to_string())
                .bind(user.to_string())
            }
            .execute(&mut *tx)
            .await
            .pg()?;
            changed |= member.rows_affected() == 1;
        }
        tx.commit().await.pg()?;
        Ok(GrantChange {
            conversation,
            changed,
        })
    }

    async fn has_grant(&self, app: AppId, user: UserId, context: &str) -> StoreResult<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM context_grants WHERE app_id = $1 AND user_id = $2 AND context = $3",
        )
        .bind(app.to_string())
        .bind(user.to_string())
        .bind(context)
        .fetch_optional(self.pool())
        .await
        .pg()?
        .is_some())
    }

    async fn app_users(&self, app: AppId) -> StoreResult<Vec<UserId>> {
        sqlx::query("SELECT id FROM users WHERE app_id = $1 ORDER BY created_at, id")
            .bind(app.to_string())
            .fetch_all(self.pool())
            .await
            .pg()?
            .iter()
            .map(|r| parse_id(r, "id"))
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
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .bind(call.to_string())
                .bind(app.to_string())
                .bind(conversation.to_string())
                .bind(started_at.0)
                .execute(self.pool())
                .await
                .pg()?;
            }
            None => {
                sqlx::query("DELETE FROM open_calls WHERE id = $1")
                    .bind(call.to_string())
                    .execute(self.pool())
                    .await
                    .pg()?;
            }
        }
        Ok(())
    }

    async fn open_calls(&self) -> StoreResult<Vec<(CallId, AppId, ConversationId, Timestamp)>> {
        sqlx::query(
            "SELECT id, app_id, conversation_id, started_at FROM open_calls ORDER BY started_at",
        )
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(|r| {
            Ok((
                parse_id(r, "id")?,
                parse_id(r, "app_id")?,
                parse_id(r, "conversation_id")?,
                Timestamp(get(r, "started_at")?),
            ))
        })
        .collect()
    }
}
