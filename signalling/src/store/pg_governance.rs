//! [`GovernanceStore`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::StoreResult;
use super::governance::{GovernanceStore, HeldCopy, LegalHold, RetentionPolicy, held, policies};
use super::pg::{PgStore, parse_id as parse};
use super::pg_error::PgResult as _;
use super::pg_files::discard_where;
use crate::ids::{AppId, ConversationId, HoldId, Timestamp, UserId};

const HOLD: &str = "id, app_id, conversation_id, user_id, reason, created_at, released_at";

const COPY: &str = "message_id, conversation_id, seq, author, body, created_at, why, kept_at";

fn hold_from(row: &PgRow) -> StoreResult<LegalHold> {
    let conversation: Option<String> = row.try_get("conversation_id").pg()?;
    let user: Option<String> = row.try_get("user_id").pg()?;
    let released: Option<i64> = row.try_get("released_at").pg()?;
    Ok(LegalHold {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        conversation_id: conversation.and_then(|c| c.parse().ok()),
        user_id: user.and_then(|u| u.parse().ok()),
        reason: row.try_get("reason").pg()?,
        created_at: Timestamp(row.try_get("created_at").pg()?),
        released_at: released.map(Timestamp),
    })
}

fn copy_from(row: &PgRow) -> StoreResult<HeldCopy> {
    Ok(HeldCopy {
        message_id: parse(row, "message_id")?,
        conversation_id: parse(row, "conversation_id")?,
        seq: row.try_get::<i64, _>("seq").pg()?.cast_unsigned(),
        author: row.try_get("author").pg()?,
        body: row.try_get("body").pg()?,
        created_at: Timestamp(row.try_get("created_at").pg()?),
        why: row.try_get("why").pg()?,
        kept_at: Timestamp(row.try_get("kept_at").pg()?),
    })
}

#[async_trait]
impl GovernanceStore for PgStore {
    async fn set_retention(
        &self,
        app: AppId,
        conversation: Option<ConversationId>,
        days: Option<u64>,
    ) -> StoreResult<()> {
        let conversation = conversation.map(|c| c.to_string()).unwrap_or_default();
        match days {
            Some(days) => {
                sqlx::query(
                    "INSERT INTO retention_policies (app_id, conversation_id, days) VALUES ($1, $2, $3) \
                     ON CONFLICT (app_id, conversation_id) DO UPDATE SET days = excluded.days",
                )
                .bind(app.to_string())
                .bind(conversation)
                .bind(days.cast_signed())
                .execute(self.pool())
                .await.pg()?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM retention_policies WHERE app_id = $1 AND conversation_id = $2",
                )
                .bind(app.to_string())
                .bind(conversation)
                .execute(self.pool())
                .await
                .pg()?;
            }
        }
        Ok(())
    }

    async fn retention_of(&self, app: AppId) -> StoreResult<RetentionPolicy> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT app_id, conversation_id, days FROM retention_policies WHERE app_id = $1 \
             ORDER BY conversation_id",
        )
        .bind(app.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?;
        Ok(policies(rows).pop().unwrap_or(RetentionPolicy {
            app_id: Some(app),
            ..RetentionPolicy::default()
        }))
    }

    async fn retention_policies(&self) -> StoreResult<Vec<RetentionPolicy>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT app_id, conversation_id, days FROM retention_policies \
             ORDER BY app_id, conversation_id",
        )
        .fetch_all(self.pool())
        .await
        .pg()?;
        Ok(policies(rows))
    }

    async fn conversation_ids(&self, app: AppId) -> StoreResult<Vec<ConversationId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM conversations WHERE app_id = $1")
            .bind(app.to_string())
            .fetch_all(self.pool())
            .await
            .pg()?;
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }

    async fn create_hold(&self, h: &LegalHold) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO legal_holds ({HOLD}) VALUES ($1, $2, $3, $4, $5, $6, NULL)"
        ))
        .bind(h.id.to_string())
        .bind(h.app_id.to_string())
        .bind(h.conversation_id.map(|c| c.to_string()))
        .bind(h.user_id.map(|u| u.to_string()))
        .bind(&h.reason)
        .bind(h.created_at.0)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }

    async fn holds_of(&self, app: AppId) -> StoreResult<Vec<LegalHold>> {
        sqlx::query(&format!(
            "SELECT {HOLD} FROM legal_holds WHERE app_id = $1 ORDER BY created_at, id"
        ))
        .bind(app.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(hold_from)
        .collect()
    }

    async fn release_hold(&self, app: AppId, id: HoldId, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE legal_holds SET released_at = $1 \
             WHERE app_id = $2 AND id = $3 AND released_at IS NULL",
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

    async fn is_held(&self, conversation: ConversationId, author: &str) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(&format!("SELECT {}", held("$1", "$2")))
            .bind(conversation.to_string())
            .bind(author)
            .fetch_one(self.pool())
            .await
            .pg()?)
    }

    async fn keep_copy(&self, c: &HeldCopy) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO held_copies ({COPY}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(c.message_id.to_string())
        .bind(c.conversation_id.to_string())
        .bind(c.seq.cast_signed())
        .bind(&c.author)
        .bind(&c.body)
        .bind(c.created_at.0)
        .bind(&c.why)
        .bind(c.kept_at.0)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }

    async fn held_copies(
        &self,
        conversation: ConversationId,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<HeldCopy>> {
        sqlx::query(&format!(
            "SELECT {COPY} FROM held_copies \
             WHERE conversation_id = $1 AND created_at >= $2 AND created_at < $3 \
             ORDER BY seq, kept_at"
        ))
        .bind(conversation.to_string())
        .bind(from.0)
        .bind(to.0)
        .fetch_all(self.pool())
        .await
        .pg()?
        .iter()
        .map(copy_from)
        .collect()
    }

    async fn expire_messages(
        &self,
        conversation: ConversationId,
        before: Timestamp,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await.pg()?;
        let doomed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "SELECT m.seq, m.id FROM messages m \
             WHERE m.conversation_id = $1 AND m.created_at < $2 \
               AND NOT {} ORDER BY m.seq LIMIT $3",
            held("m.conversation_id", "m.author")
        ))
        .bind(conversation.to_string())
        .bind(before.0)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .pg()?;
        let conversation = conversation.to_string();
        for (seq, id) in &doomed {
            discard_where(&mut tx, "message_id = $2", id.clone(), now).await?;
            for by_message in ["file_references", "held_copies"] {
                sqlx::query(&format!("DELETE FROM {by_message} WHERE message_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .pg()?;
            }
            for (table, column) in [
                ("message_reactions", "seq"),
                ("pinned_messages", "seq"),
                ("thread_read_marks", "root_seq"),
                ("thread_followers", "root_seq"),
                ("messages", "seq"),
            ] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE conversation_id = $1 AND {column} = $2"
                ))
                .bind(&conversation)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .pg()?;
            }
        }
        tx.commit().await.pg()?;
        Ok(doomed.len() as u64)
    }

    async fn release_copies(&self, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await.pg()?;
        let free = format!("NOT {}", held("hc.conversation_id", "hc.author"));
        discard_where(
            &mut tx,
            &format!(
                "message_id IN (SELECT hc.message_id FROM held_copies hc \
                 WHERE hc.why = $2 AND {free})"
            ),
            "deleted",
            now,
        )
        .await?;
        let gone = sqlx::query(&format!("DELETE FROM held_copies hc WHERE {free}"))
            .execute(&mut *tx)
            .await
            .pg()?
            .rows_affected();
        tx.commit().await.pg()?;
        Ok(gone)
    }

    async fn prune_app_events(
        &self,
        app: AppId,
        also: &[UserId],
        before: Timestamp,
    ) -> StoreResult<u64> {
        let also: Vec<String> = also.iter().map(ToString::to_string).collect();
        Ok(sqlx::query(
            "DELETE FROM user_events WHERE created_at < $1 AND ( \
                 user_id IN (SELECT id FROM users WHERE app_id = $2) \
                 OR user_id = ANY($3))",
        )
        .bind(before.0)
        .bind(app.to_string())
        .bind(also)
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected())
    }
}
