//! [`AuditStore`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::audit::{AuditEntry, AuditQuery, AuditStore};
use super::pg::{PgStore, parse_id};
use super::pg_error::PgResult as _;
use super::pg_messaging::to_i64;
use super::{StoreError, StoreResult};
use crate::ids::{SubscriberId, Timestamp};

fn entry_from(row: &PgRow) -> StoreResult<AuditEntry> {
    let id: i64 = row.try_get("id").pg()?;
    let app_id: Option<String> = row.try_get("app_id").pg()?;
    let details: Option<String> = row.try_get("details").pg()?;
    Ok(AuditEntry {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt("id negative".into()))?,
        at: Timestamp(row.try_get("at").pg()?),
        subscriber_id: parse_id(row, "subscriber_id")?,
        app_id: app_id
            .map(|a| {
                a.parse()
                    .map_err(|_| StoreError::Corrupt(format!("app_id: {a:?}")))
            })
            .transpose()?,
        actor: row.try_get("actor").pg()?,
        action: row.try_get("action").pg()?,
        target: row.try_get("target").pg()?,
        source_ip: row.try_get("source_ip").pg()?,
        details: details
            .map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
    })
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<u64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (at, subscriber_id, app_id, actor, action, target, source_ip, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(e.at.0)
        .bind(e.subscriber_id.to_string())
        .bind(e.app_id.map(|a| a.to_string()))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.source_ip)
        .bind(e.details.as_ref().map(ToString::to_string))
        .fetch_one(self.pool())
        .await
        .pg()?;
        u64::try_from(id).map_err(|_| StoreError::Corrupt("id negative".into()))
    }

    async fn audit_entries(
        &self,
        subscriber: SubscriberId,
        q: &AuditQuery,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, subscriber_id, app_id, actor, action, target, source_ip, details \
             FROM audit_log WHERE subscriber_id = $1 AND ($2::text IS NULL OR app_id = $2) \
             AND ($3::text IS NULL OR action = $3) AND ($4::bigint IS NULL OR at >= $4) \
             AND ($5::bigint IS NULL OR at < $5) AND ($6::bigint IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7",
        )
        .bind(subscriber.to_string())
        .bind(q.app_id.map(|a| a.to_string()))
        .bind(&q.action)
        .bind(q.from.map(|t| t.0))
        .bind(q.to.map(|t| t.0))
        .bind(q.before_id.map(to_i64))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?;
        rows.iter().map(entry_from).collect()
    }

    async fn prune_audit(&self, before: Timestamp) -> StoreResult<u64> {
        Ok(sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before.0)
            .execute(self.pool())
            .await
            .pg()?
            .rows_affected())
    }
}
