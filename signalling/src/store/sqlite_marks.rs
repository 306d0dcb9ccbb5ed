//! Reading reactions and pins on SQLite (the writer changes them:
//! `sqlite_message_writes::mark_in`).

use async_trait::async_trait;
use sqlx::Row as _;

use super::marks::{ConversationSettings, MarkStore};
use super::messaging::{
    Author, MarkChange, Marked, OnCommit, PendingEvent, PinRecord, ReactionRecord, StoredMessage,
};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::{MENTIONING, MESSAGE_COLUMNS, message_from, parse, seq, to_i64};
use super::sqlite_writer::{Write, Written};
use super::{StoreError, StoreResult};
use crate::ids::{AppId, ConversationId, Timestamp, UserId};

#[async_trait]
impl MarkStore for SqliteStore {
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
        match self.write(write, notify, now, then).await? {
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
        sqlx::query(
            "SELECT seq, emoji, user_id FROM message_reactions \
             WHERE conversation_id = ? AND seq >= ? AND seq <= ? ORDER BY seq, rowid",
        )
        .bind(conversation.to_string())
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(ReactionRecord {
                seq: seq(row, "seq")?,
                emoji: row.try_get("emoji")?,
                user: parse(row, "user_id")?,
            })
        })
        .collect()
    }

    async fn pins(&self, conversation: ConversationId) -> StoreResult<Vec<PinRecord>> {
        sqlx::query(
            "SELECT seq, pinned_by, pinned_at FROM pinned_messages \
             WHERE conversation_id = ? ORDER BY pinned_at DESC, seq DESC",
        )
        .bind(conversation.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            let by: String = row.try_get("pinned_by")?;
            Ok(PinRecord {
                seq: seq(row, "seq")?,
                by: Author::from_key(&by)
                    .ok_or_else(|| StoreError::Corrupt(format!("pinned_by: {by:?}")))?,
                at: Timestamp(row.try_get("pinned_at")?),
            })
        })
        .collect()
    }

    async fn read_by(
        &self,
        conversation: ConversationId,
        seq_no: u64,
        limit: u32,
    ) -> StoreResult<Vec<UserId>> {
        sqlx::query("SELECT user_id FROM read_marks WHERE conversation_id = ? AND seq >= ? LIMIT ?")
            .bind(conversation.to_string())
            .bind(to_i64(seq_no))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| parse(row, "user_id"))
            .collect()
    }

    async fn mentioning(
        &self,
        app: AppId,
        user: UserId,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE {MENTIONING} AND m.author <> ?1 \
             AND (json_extract(m.body, '$.mention_all') = 1 \
                  OR EXISTS (SELECT 1 FROM json_each(m.body, '$.mentions') WHERE value = ?1)) \
             AND m.conversation_id IN (SELECT conversation_id FROM conversation_members WHERE user_id = ?1 \
                 UNION SELECT id FROM conversations WHERE app_id = ?2 AND all_users = TRUE) \
             ORDER BY m.created_at DESC, m.seq DESC LIMIT ?3"
        ))
        .bind(user.to_string())
        .bind(app.to_string())
        .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(message_from)
            .collect()
    }

    async fn settings(&self, conversation: ConversationId) -> StoreResult<ConversationSettings> {
        let row = sqlx::query(
            "SELECT pins_app_only, mention_all FROM conversation_settings WHERE conversation_id = ?",
        )
        .bind(conversation.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(row) => ConversationSettings {
                pins_app_only: row.try_get("pins_app_only")?,
                mention_all: row.try_get("mention_all")?,
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
             VALUES (?, ?, ?) ON CONFLICT (conversation_id) DO UPDATE \
             SET pins_app_only = excluded.pins_app_only, mention_all = excluded.mention_all",
        )
        .bind(conversation.to_string())
        .bind(settings.pins_app_only)
        .bind(settings.mention_all)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
