//! [`OutboxStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::outbox::{Attempt, Delivery, DeliveryState, Endpoint, OutboxStore};
use super::sqlite::SqliteStore;
use super::sqlite_messaging::parse;
use super::{StoreError, StoreResult};
use crate::ids::{AppId, DeliveryId, EndpointId, Timestamp};

const ENDPOINT: &str = "id, app_id, url, kinds, secret, previous_secret, previous_until, start_seq, created_at, revoked_at";

const DELIVERY: &str = "id, endpoint_id, app_id, event_seq, event_type, payload, state, attempts, \
     next_attempt_at, last_status, last_error, last_attempt_at, created_at";

fn endpoint_from(row: &SqliteRow) -> StoreResult<Endpoint> {
    let kinds: String = row.try_get("kinds")?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let previous: Option<String> = row.try_get("previous_secret")?;
    let until: Option<i64> = row.try_get("previous_until")?;
    Ok(Endpoint {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        url: row.try_get("url")?,
        kinds: kinds.split(',').map(str::to_owned).collect(),
        secret: row.try_get("secret")?,
        previous_secret: previous.zip(until.map(Timestamp)),
        start_seq: row.try_get::<i64, _>("start_seq")?.cast_unsigned(),
        created_at: Timestamp(row.try_get("created_at")?),
        revoked_at: revoked.map(Timestamp),
    })
}

fn delivery_from(row: &SqliteRow) -> StoreResult<Delivery> {
    let state: String = row.try_get("state")?;
    let status: Option<i64> = row.try_get("last_status")?;
    let last: Option<i64> = row.try_get("last_attempt_at")?;
    Ok(Delivery {
        id: parse(row, "id")?,
        endpoint_id: parse(row, "endpoint_id")?,
        app_id: parse(row, "app_id")?,
        event_seq: row.try_get::<i64, _>("event_seq")?.cast_unsigned(),
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state {state}")))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: Timestamp(row.try_get("next_attempt_at")?),
        last_status: status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error")?,
        last_attempt_at: last.map(Timestamp),
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn create_endpoint(&self, e: &Endpoint) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT}) VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?, NULL)"
        ))
        .bind(e.id.to_string())
        .bind(e.app_id.to_string())
        .bind(&e.url)
        .bind(e.kinds.join(","))
        .bind(&e.secret)
        .bind(e.start_seq.cast_signed())
        .bind(e.created_at.0)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn endpoints_of(&self, app: AppId) -> StoreResult<Vec<Endpoint>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT} FROM webhook_endpoints WHERE app_id = ? ORDER BY created_at, id"
        ))
        .bind(app.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(endpoint_from)
        .collect()
    }

    async fn rotate_endpoint_secret(
        &self,
        app: AppId,
        id: EndpointId,
        secret: &str,
        keep_until: Option<Timestamp>,
    ) -> StoreResult<bool> {
        // The right-hand sides read the row as it was: the old secret.
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET \
               previous_secret = CASE WHEN ?1 IS NULL THEN NULL ELSE secret END, \
               previous_until = ?1, secret = ?2 \
             WHERE app_id = ?3 AND id = ?4 AND revoked_at IS NULL",
        )
        .bind(keep_until.map(|t| t.0))
        .bind(secret)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn live_endpoints(&self) -> StoreResult<Vec<Endpoint>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT} FROM webhook_endpoints WHERE revoked_at IS NULL"
        ))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(endpoint_from)
        .collect()
    }

    async fn revoke_endpoint(
        &self,
        app: AppId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET revoked_at = ? \
             WHERE app_id = ? AND id = ? AND revoked_at IS NULL",
        )
        .bind(now.0)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND state = 'pending'")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    async fn outbox_cursor(&self, app: AppId) -> StoreResult<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM webhook_cursors WHERE app_id = ?")
                .bind(app.to_string())
                .fetch_optional(self.pool())
                .await?;
        Ok(seq.unwrap_or(0).cast_unsigned())
    }

    async fn enqueue_deliveries(
        &self,
        app: AppId,
        cursor: u64,
        deliveries: &[Delivery],
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        for d in deliveries {
            sqlx::query(&format!(
                "INSERT INTO webhook_deliveries ({DELIVERY}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?) \
                 ON CONFLICT (endpoint_id, event_seq) DO NOTHING"
            ))
            .bind(d.id.to_string())
            .bind(d.endpoint_id.to_string())
            .bind(d.app_id.to_string())
            .bind(d.event_seq.cast_signed())
            .bind(&d.event_type)
            .bind(&d.payload)
            .bind(d.state.as_str())
            .bind(i64::from(d.attempts))
            .bind(d.next_attempt_at.0)
            .bind(d.created_at.0)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO webhook_cursors (app_id, seq) VALUES (?, ?) \
             ON CONFLICT (app_id) DO UPDATE SET seq = max(seq, excluded.seq)",
        )
        .bind(app.to_string())
        .bind(cursor.cast_signed())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
        per_endpoint: u32,
        in_flight: &[(EndpointId, u32)],
    ) -> StoreResult<Vec<Delivery>> {
        // A read first: an UPDATE would take the write lock from the
        // message writer on every poll, due or not.
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries \
             WHERE state = 'pending' AND next_attempt_at <= ?)",
        )
        .bind(now.0)
        .fetch_one(self.pool())
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        // {"<endpoint id>": attempts in flight, …}
        let in_flight = serde_json::Value::Object(
            in_flight
                .iter()
                .map(|(id, n)| (id.to_string(), serde_json::Value::from(*n)))
                .collect(),
        )
        .to_string();
        sqlx::query(&format!(
            "UPDATE webhook_deliveries SET next_attempt_at = ?1 \
             WHERE state = 'pending' AND next_attempt_at <= ?2 \
               AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE revoked_at IS NULL) \
               AND id IN ( \
                 SELECT id FROM ( \
                     SELECT id, endpoint_id, next_attempt_at, ROW_NUMBER() OVER ( \
                         PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS n \
                     FROM webhook_deliveries \
                     WHERE state = 'pending' AND next_attempt_at <= ?2) AS due \
                 WHERE n + coalesce((SELECT value FROM json_each(?4) \
                                     WHERE key = due.endpoint_id), 0) <= ?3 \
                 ORDER BY next_attempt_at, id LIMIT ?5) \
             RETURNING {DELIVERY}"
        ))
        .bind(lease_until.0)
        .bind(now.0)
        .bind(i64::from(per_endpoint))
        .bind(in_flight)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(delivery_from)
        .collect()
    }

    async fn record_attempt(&self, id: DeliveryId, a: &Attempt) -> StoreResult<()> {
        let state = match (a.delivered, a.retry_at) {
            (true, _) => DeliveryState::Delivered,
            (false, Some(_)) => DeliveryState::Pending,
            (false, None) => DeliveryState::Dead,
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, \
                 next_attempt_at = coalesce(?, next_attempt_at), last_status = ?, \
                 last_error = ?, last_attempt_at = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(a.retry_at.map(|t| t.0))
        .bind(a.status.map(i64::from))
        .bind(&a.error)
        .bind(a.at.0)
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn deliveries(
        &self,
        endpoint: EndpointId,
        state: Option<DeliveryState>,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        sqlx::query(&format!(
            "SELECT {DELIVERY} FROM webhook_deliveries \
             WHERE endpoint_id = ?1 AND (?2 IS NULL OR state = ?2) \
               AND (?3 IS NULL OR (created_at, id) < \
                   (SELECT created_at, id FROM webhook_deliveries WHERE id = ?3)) \
             ORDER BY created_at DESC, id DESC LIMIT ?4"
        ))
        .bind(endpoint.to_string())
        .bind(state.map(DeliveryState::as_str))
        .bind(before.map(|b| b.to_string()))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(delivery_from)
        .collect()
    }

    async fn retry_delivery(
        &self,
        app: AppId,
        endpoint: EndpointId,
        id: DeliveryId,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ? \
             WHERE id = ? AND endpoint_id = ? AND app_id = ? AND state = 'dead' \
               AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE revoked_at IS NULL)",
        )
        .bind(now.0)
        .bind(id.to_string())
        .bind(endpoint.to_string())
        .bind(app.to_string())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM webhook_deliveries \
             WHERE state IN ('delivered', 'dead') AND last_attempt_at < ?",
        )
        .bind(before.0)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn prune_app_deliveries(&self, app: AppId, before: Timestamp) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM webhook_deliveries WHERE app_id = ? AND created_at < ?")
                .bind(app.to_string())
                .bind(before.0)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
