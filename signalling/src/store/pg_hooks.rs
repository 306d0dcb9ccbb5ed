//! [`HookStore`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::StoreResult;
use super::hooks::{HookStore, IncomingWebhook};
use super::pg::{PgStore, parse_id};
use super::pg_error::PgResult as _;
use crate::ids::{AppId, ConversationId, Timestamp, WebhookId};

const COLUMNS: &str = "id, app_id, conversation_id, name, token_digest, created_at, revoked_at";

fn hook_from(row: &PgRow) -> StoreResult<IncomingWebhook> {
    let revoked: Option<i64> = row.try_get("revoked_at").pg()?;
    Ok(IncomingWebhook {
        id: parse_id(row, "id")?,
        app_id: parse_id(row, "app_id")?,
        conversation_id: parse_id(row, "conversation_id")?,
        name: row.try_get("name").pg()?,
        token_digest: row.try_get("token_digest").pg()?,
        created_at: Timestamp(row.try_get("created_at").pg()?),
        revoked_at: revoked.map(Timestamp),
    })
}

#[async_trait]
impl HookStore for PgStore {
    async fn create_hook(&self, h: &IncomingWebhook) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO incoming_webhooks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)"
        ))
        .bind(h.id.to_string())
        .bind(h.app_id.to_string())
        .bind(h.conversation_id.to_string())
        .bind(&h.name)
        .bind(&h.token_digest)
        .bind(h.created_at.0)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }

    async fn hook_by_digest(&self, digest: &str) -> StoreResult<Option<IncomingWebhook>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM incoming_webhooks WHERE token_digest = $1"
        ))
        .bind(digest)
        .fetch_optional(self.pool())
        .await
        .pg()?
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
            "SELECT {COLUMNS} FROM incoming_webhooks WHERE app_id = $1 AND conversation_id = $2 \
             ORDER BY created_at, id"
        ))
        .bind(app.to_string())
        .bind(conversation.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(hook_from)
        .collect()
    }

    async fn revoke_hook(&self, app: AppId, id: WebhookId, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE incoming_webhooks SET revoked_at = $1 \
             WHERE app_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now.0)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected();
        Ok(done == 1)
    }
}
