//! [`HookStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::StoreResult;
use super::hooks::{HookStore, IncomingWebhook};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::parse;
use crate::ids::{AppId, ConversationId, Timestamp, WebhookId};

const COLUMNS: &str = "id, app_id, conversation_id, name, token_digest, created_at, revoked_at";

fn hook_from(row: &SqliteRow) -> StoreResult<IncomingWebhook> {
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    Ok(IncomingWebhook {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        conversation_id: parse(row, "conversation_id")?,
        name: row.try_get("name")?,
        token_digest: row.try_get("token_digest")?,
        created_at: Timestamp(row.try_get("created_at")?),
        revoked_at: revoked.map(Timestamp),
    })
}

#[async_trait]
impl HookStore for SqliteStore {
    async fn create_hook(&self, h: &IncomingWebhook) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO incoming_webhooks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)"
        ))
        .bind(h.id.to_string())
        .bind(h.app_id.to_string())
        .bind(h.conversation_id.to_string())
        .bind(&h.name)
        .bind(&h.token_digest)
        .bind(h.created_at.0)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn hook_by_digest(&self, digest: &str) -> StoreResult<Option<IncomingWebhook>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM incoming_webhooks WHERE token_digest = ?"
        ))
        .bind(digest)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(hook_from)
        .transpose()
    }

    async fn hooks_of(
        &self,
        app: AppId,
        conversation: ConversationId,
    ) -> StoreResult<Vec<IncomingWebhook>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM incoming_webhooks WHERE app_id = ? AND conversation_id = ? \
             ORDER BY created_at, id"
        ))
        .bind(app.to_string())
        .bind(conversation.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(hook_from)
        .collect()
    }

    async fn revoke_hook(&self, app: AppId, id: WebhookId, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE incoming_webhooks SET revoked_at = ? \
             WHERE app_id = ? AND id = ? AND revoked_at IS NULL",
        )
        .bind(now.0)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }
}
