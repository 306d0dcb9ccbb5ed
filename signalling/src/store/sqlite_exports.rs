//! [`ExportStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::StoreResult;
use super::exports::{ExportRecord, ExportStore};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::parse;
use crate::ids::{AppId, ConversationId, ExportId, Timestamp, UserId};

const COLUMNS: &str = "id, app_id, subscriber_id, conversation_id, user_id, from_at, to_at, state, \
     conversations_total, conversations_done, messages, files, bytes, error, token, created_at, \
     updated_at, finished_at";

fn count(row: &SqliteRow, column: &str) -> StoreResult<u64> {
    Ok(row.try_get::<i64, _>(column)?.cast_unsigned())
}

fn export_from(row: &SqliteRow) -> StoreResult<ExportRecord> {
    let conversation: Option<String> = row.try_get("conversation_id")?;
    let user: Option<String> = row.try_get("user_id")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    Ok(ExportRecord {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        subscriber_id: parse(row, "subscriber_id")?,
        conversation_id: conversation.and_then(|c| c.parse().ok()),
        user_id: user.and_then(|u| u.parse().ok()),
        from: Timestamp(row.try_get("from_at")?),
        to: Timestamp(row.try_get("to_at")?),
        state: row.try_get("state")?,
        conversations_total: count(row, "conversations_total")?,
        conversations_done: count(row, "conversations_done")?,
        messages: count(row, "messages")?,
        files: count(row, "files")?,
        bytes: count(row, "bytes")?,
        error: row.try_get("error")?,
        token: row.try_get("token")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        finished_at: finished.map(Timestamp),
    })
}

#[async_trait]
impl ExportStore for SqliteStore {
    async fn create_export(&self, e: &ExportRecord) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO exports ({COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0, NULL, ?, ?, ?, NULL)"
        ))
        .bind(e.id.to_string())
        .bind(e.app_id.to_string())
        .bind(e.subscriber_id.to_string())
        .bind(e.conversation_id.map(|c| c.to_string()))
        .bind(e.user_id.map(|u| u.to_string()))
        .bind(e.from.0)
        .bind(e.to.0)
        .bind(&e.state)
        .bind(&e.token)
        .bind(e.created_at.0)
        .bind(e.updated_at.0)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn export(&self, id: ExportId) -> StoreResult<Option<ExportRecord>> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM exports WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(export_from)
            .transpose()
    }

    async fn exports_of(&self, app: AppId, limit: u32) -> StoreResult<Vec<ExportRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM exports WHERE app_id = ? \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(app.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(export_from)
        .collect()
    }

    async fn update_export(&self, e: &ExportRecord, from_state: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE exports SET state = ?, conversations_total = ?, conversations_done = ?, \
                 messages = ?, files = ?, bytes = ?, error = ?, updated_at = ?, finished_at = ? \
             WHERE id = ? AND state = ?",
        )
        .bind(&e.state)
        .bind(e.conversations_total.cast_signed())
        .bind(e.conversations_done.cast_signed())
        .bind(e.messages.cast_signed())
        .bind(e.files.cast_signed())
        .bind(e.bytes.cast_signed())
        .bind(&e.error)
        .bind(e.updated_at.0)
        .bind(e.finished_at.map(|t| t.0))
        .bind(e.id.to_string())
        .bind(from_state)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn exports_in(&self, state: &str, before: Timestamp) -> StoreResult<Vec<ExportRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM exports WHERE state = ? AND updated_at < ?"
        ))
        .bind(state)
        .bind(before.0)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(export_from)
        .collect()
    }

    async fn member_conversations(
        &self,
        app: AppId,
        user: UserId,
    ) -> StoreResult<Vec<ConversationId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM conversations WHERE app_id = ?1 AND (all_users OR id IN \
                 (SELECT conversation_id FROM conversation_members WHERE user_id = ?2)) \
             ORDER BY created_at, id",
        )
        .bind(app.to_string())
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?;
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }
}
