//! Reading reactions and pins on SQLite (the writer changes them:
//! `sqlite_message_writes::mark_in`).

use async_trait::async_trait;
use sqlx::Row as _;

use super::marks::MarkStore;
use super::messaging::{
    Author, MarkChange, Marked, OnCommit, PendingEvent, PinRecord, ReactionRecord,
};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::{parse, seq, to_i64};
use super::sqlite_writer::{Write, Written};
use super::{StoreError, StoreResult};
use crate::ids::{ConversationId, Timestamp, UserId};

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

    async fn pins_by_app_only(&self, conversation: ConversationId) -> StoreResult<bool> {
        let app_only: Option<bool> = sqlx::query_scalar(
            "SELECT app_only FROM conversation_pin_policy WHERE conversation_id = ?",
        )
        .bind(conversation.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(app_only.unwrap_or(false))
    }

    async fn set_pins_by_app_only(
        &self,
        conversation: ConversationId,
        app_only: bool,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO conversation_pin_policy (conversation_id, app_only) VALUES (?, ?) \
             ON CONFLICT (conversation_id) DO UPDATE SET app_only = excluded.app_only",
        )
        .bind(conversation.to_string())
        .bind(app_only)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
