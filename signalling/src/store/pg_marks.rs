//! Reactions and pins on PostgreSQL: the writer's part (a change and its
//! event, in the batch's transaction, with the message's row locked so
//! that two nodes count one message's reactions one after the other) and
//! the reads.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{PgConnection, Row as _};

use super::marks::{ConversationSettings, MarkStore};
use super::messaging::{
    Author, Mark, MarkChange, Marked, OnCommit, PendingEvent, PinRecord, ReactionRecord,
    StoredMessage,
};
use super::pg::PgStore;
use super::pg_error::PgResult as _;
use super::pg_message_writes::{Numbers, Taken, append};
use super::pg_messaging::{MENTIONING, MESSAGE_COLUMNS, message_from, to_i64};
use super::pg_writer::{Write, Written};
use super::{StoreError, StoreResult};
use crate::ids::{AppId, ConversationId, Timestamp, UserId};

/// Adds or withdraws a reaction or a pin and, when that changed
/// something, appends its event with the count after the change. The
/// batch holds the message's lock (and, for a pin, the conversation's).
pub(super) async fn mark_in(
    tx: &mut PgConnection,
    numbers: &Numbers,
    taken: &mut Taken,
    change: &MarkChange,
    notify: &[UserId],
    event: &PendingEvent,
    now: Timestamp,
) -> StoreResult<(Marked, Option<Arc<str>>)> {
    let conversation = change.conversation_id.to_string();
    let seq = to_i64(change.seq);
    let count: i64 = match &change.mark {
        Mark::Reaction { emoji, user, limit } => {
            let user = user.to_string();
            if change.on {
                let row = sqlx::query(
                    "SELECT COUNT(DISTINCT emoji) AS distinct_emojis, \
                     COUNT(*) FILTER (WHERE emoji = $3 AND user_id = $4) AS mine, \
                     COUNT(*) FILTER (WHERE emoji = $3) AS this \
                     FROM message_reactions WHERE conversation_id = $1 AND seq = $2",
                )
                .bind(&conversation)
                .bind(seq)
                .bind(emoji)
                .bind(&user)
                .fetch_one(&mut *tx)
                .await
                .pg()?;
                let (distinct, mine, this): (i64, i64, i64) = (
                    row.try_get("distinct_emojis").pg()?,
                    row.try_get("mine").pg()?,
                    row.try_get("this").pg()?,
                );
                if mine > 0 {
                    return Ok((Marked::Unchanged, None));
                }
                if this == 0 && distinct >= i64::from(*limit) {
                    return Ok((Marked::Full, None));
                }
                sqlx::query(
                    "INSERT INTO message_reactions (conversation_id, seq, emoji, user_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&conversation)
                .bind(seq)
                .bind(emoji)
                .bind(&user)
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .pg()?;
                this + 1
            } else {
                let gone = sqlx::query(
                    "DELETE FROM message_reactions \
                     WHERE conversation_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4",
                )
                .bind(&conversation)
                .bind(seq)
                .bind(emoji)
                .bind(&user)
                .execute(&mut *tx)
                .await
                .pg()?
                .rows_affected();
                if gone == 0 {
                    return Ok((Marked::Unchanged, None));
                }
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM message_reactions \
                     WHERE conversation_id = $1 AND seq = $2 AND emoji = $3",
                )
                .bind(&conversation)
                .bind(seq)
                .bind(emoji)
                .fetch_one(&mut *tx)
                .await
                .pg()?
            }
        }
        Mark::Pin { by, limit } => {
            let row = sqlx::query(
                "SELECT COUNT(*) AS pinned, COUNT(*) FILTER (WHERE seq = $2) AS this \
                 FROM pinned_messages WHERE conversation_id = $1",
            )
            .bind(&conversation)
            .bind(seq)
            .fetch_one(&mut *tx)
            .await
            .pg()?;
            let (pinned, this): (i64, i64) =
                (row.try_get("pinned").pg()?, row.try_get("this").pg()?);
            match (change.on, this > 0) {
                (true, true) | (false, false) => return Ok((Marked::Unchanged, None)),
                (true, false) if pinned >= i64::from(*limit) => return Ok((Marked::Full, None)),
                (true, false) => {
                    sqlx::query(
                        "INSERT INTO pinned_messages (conversation_id, seq, pinned_by, pinned_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&conversation)
                    .bind(seq)
                    .bind(by.key())
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .pg()?;
                    pinned + 1
                }
                (false, true) => {
                    sqlx::query(
                        "DELETE FROM pinned_messages WHERE conversation_id = $1 AND seq = $2",
                    )
                    .bind(&conversation)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .pg()?;
                    pinned - 1
                }
            }
        }
    };
    let count = u64::try_from(count).map_err(|_| StoreError::Corrupt("count negative".into()))?;
    let payload = event.with_seq(count);
    let seqs = append(tx, numbers, taken, notify, &payload, now).await?;
    Ok((Marked::Changed { count, seqs }, Some(Arc::from(payload))))
}

/// A deleted message's reactions and pin go with its body.
pub(super) async fn unmark(tx: &mut PgConnection, conversation: &str, seq: i64) -> StoreResult<()> {
    for table in ["message_reactions", "pinned_messages"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE conversation_id = $1 AND seq = $2"
        ))
        .bind(conversation)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .pg()?;
    }
    Ok(())
}

#[async_trait]
impl MarkStore for PgStore {
    async fn mark_then(
        &self,
        change: &MarkChange,
        notify: &[UserId],
        event: PendingEvent,
        now: Timestamp,
        then: OnCommit,
    ) -> StoreResult<Marked> {
        let write = Write::Mark {
            change: change.clone(),
            event,
        };
        match self.writer().write(write, notify, now, then).await? {
            Written::Marked(marked, _) => Ok(marked),
            Written::Posted(_) | Written::Appended(_) => Err(StoreError::Corrupt(
                "the message writer answered a mark with another write".to_owned(),
            )),
        }
    }

    async fn reactions(
        &self,
        conversation: ConversationId,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<ReactionRecord>> {
        let rows = sqlx::query(
            "SELECT seq, emoji, user_id FROM message_reactions \
             WHERE conversation_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq, id",
        )
        .bind(conversation.to_string())
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(self.pool())
        .await
        .pg()?;
        rows.iter()
            .map(|row| {
                let user: String = row.try_get("user_id").pg()?;
                let seq: i64 = row.try_get("seq").pg()?;
                Ok(ReactionRecord {
                    seq: u64::try_from(seq)
                        .map_err(|_| StoreError::Corrupt("seq negative".into()))?,
                    emoji: row.try_get("emoji").pg()?,
                    user: user
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("user_id: {user:?}")))?,
                })
            })
            .collect()
    }

    async fn pins(&self, conversation: ConversationId) -> StoreResult<Vec<PinRecord>> {
        let rows = sqlx::query(
            "SELECT seq, pinned_by, pinned_at FROM pinned_messages \
             WHERE conversation_id = $1 ORDER BY pinned_at DESC, seq DESC",
        )
        .bind(conversation.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?;
        rows.iter()
            .map(|row| {
                let by: String = row.try_get("pinned_by").pg()?;
                let seq: i64 = row.try_get("seq").pg()?;
                Ok(PinRecord {
                    seq: u64::try_from(seq)
                        .map_err(|_| StoreError::Corrupt("seq negative".into()))?,
                    by: Author::from_key(&by)
                        .ok_or_else(|| StoreError::Corrupt(format!("pinned_by: {by:?}")))?,
                    at: Timestamp(row.try_get("pinned_at").pg()?),
                })
            })
            .collect()
    }

    async fn read_by(
        &self,
        conversation: ConversationId,
        seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<UserId>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM read_marks WHERE conversation_id = $1 AND seq >= $2 LIMIT $3",
        )
        .bind(conversation.to_string())
        .bind(to_i64(seq))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?;
        users
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|_| StoreError::Corrupt(format!("user_id: {u:?}")))
            })
            .collect()
    }

    async fn mentioning(
        &self,
        app: AppId,
        user: UserId,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {MENTIONING} AND m.author <> $1 \
             AND ((m.body::jsonb ->> 'mention_all') = 'true' OR (m.body::jsonb -> 'mentions') ? $1) \
             AND m.conversation_id IN (SELECT conversation_id FROM conversation_members WHERE user_id = $1 \
                 UNION SELECT id FROM conversations WHERE app_id = $2 AND all_users) \
             ORDER BY m.created_at DESC, m.seq DESC LIMIT $3"
        ))
        .bind(user.to_string())
        .bind(app.to_string())
        .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .pg()?
            .iter()
            .map(message_from)
            .collect()
    }

    async fn settings(&self, conversation: ConversationId) -> StoreResult<ConversationSettings> {
        let row = sqlx::query(
            "SELECT pins_app_only, mention_all FROM conversation_settings WHERE conversation_id = $1",
        )
        .bind(conversation.to_string())
        .fetch_optional(self.pool())
        .await.pg()?;
        Ok(match row {
            Some(row) => ConversationSettings {
                pins_app_only: row.try_get("pins_app_only").pg()?,
                mention_all: row.try_get("mention_all").pg()?,
            },
            None => ConversationSettings::default(),
        })
    }

    async fn set_settings(
        &self,
        conversation: ConversationId,
        settings: ConversationSettings,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO conversation_settings (conversation_id, pins_app_only, mention_all) \
             VALUES ($1, $2, $3) ON CONFLICT (conversation_id) DO UPDATE \
             SET pins_app_only = excluded.pins_app_only, mention_all = excluded.mention_all",
        )
        .bind(conversation.to_string())
        .bind(settings.pins_app_only)
        .bind(settings.mention_all)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }
}
