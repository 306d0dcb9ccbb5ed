//! [`AuditStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::audit::{AuditEntry, AuditQuery, AuditStore};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::{parse, seq, to_i64};
use super::{StoreError, StoreResult};
use crate::ids::{SubscriberId, Timestamp};

fn entry_from(row: &SqliteRow) -> StoreResult<AuditEntry> {
    let app_id: Option<String> = row.try_get("app_id")?;
    let details: Option<String> = row.try_get("details")?;
    Ok(AuditEntry {
        id: seq(row, "id")?,
        at: Timestamp(row.try_get("at")?),
        subscriber_id: parse(row, "subscriber_id")?,
        app_id: app_id
            .map(|a| {
                a.parse()
                    .map_err(|_| StoreError::Corrupt(format!("app_id: {a:?}")))
            })
            .transpose()?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        source_ip: row.try_get("source_ip")?,
        details: details
            .map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO audit_log (at, subscriber_id, app_id, actor, action, target, source_ip, details) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(e.at.0)
        .bind(e.subscriber_id.to_string())
        .bind(e.app_id.map(|a| a.to_string()))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.source_ip)
        .bind(e.details.as_ref().map(ToString::to_string))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        seq(&row, "id")
    }

    async fn audit_entries(
        &self,
        subscriber: SubscriberId,
        q: &AuditQuery,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        sqlx::query(
            "SELECT id, at, subscriber_id, app_id, actor, action, target, source_ip, details \
             FROM audit_log WHERE subscriber_id = ?1 AND (?2 IS NULL OR app_id = ?2) \
             AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR at >= ?4) \
             AND (?5 IS NULL OR at < ?5) AND (?6 IS NULL OR id < ?6) \
             ORDER BY id DESC LIMIT ?7",
        )
        .bind(subscriber.to_string())
        .bind(q.app_id.map(|a| a.to_string()))
        .bind(&q.action)
        .bind(q.from.map(|t| t.0))
        .bind(q.to.map(|t| t.0))
        .bind(q.before_id.map(to_i64))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(entry_from)
        .collect()
    }

    async fn prune_audit(&self, before: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let gone = sqlx::query("DELETE FROM audit_log WHERE at < ?")
            .bind(before.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }
}
