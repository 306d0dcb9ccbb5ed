//! [`OutboxStore`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::outbox::{Attempt, Delivery, DeliveryState, Endpoint, OutboxStore};
use super::pg::{PgStore, parse_id as parse};
use super::pg_error::PgResult as _;
use super::{StoreError, StoreResult};
use crate::ids::{AppId, DeliveryId, EndpointId, Timestamp};

const ENDPOINT: &str = "id, app_id, url, kinds, secret, previous_secret, previous_until, start_seq, created_at, revoked_at";

const DELIVERY: &str = "id, endpoint_id, app_id, event_seq, event_type, payload, state, attempts, \
     next_attempt_at, last_status, last_error, last_attempt_at, created_at";

fn endpoint_from(row: &PgRow) -> StoreResult<Endpoint> {
    let kinds: String = row.try_get("kinds").pg()?;
    let revoked: Option<i64> = row.try_get("revoked_at").pg()?;
    let previous: Option<String> = row.try_get("previous_secret").pg()?;
    let until: Option<i64> = row.try_get("previous_until").pg()?;
    Ok(Endpoint {
        id: parse(row, "id")?,
        app_id: parse(row, "app_id")?,
        url: row.try_get("url").pg()?,
        kinds: kinds.split(',').map(str::to_owned).collect(),
        secret: row.try_get("secret").pg()?,
        previous_secret: previous.zip(until.map(Timestamp)),
        start_seq: row.try_get::<i64, _>("start_seq").pg()?.cast_unsigned(),
        created_at: Timestamp(row.try_get("created_at").pg()?),
        revoked_at: revoked.map(Timestamp),
    })
}

fn delivery_from(row: &PgRow) -> StoreResult<Delivery> {
    let state: String = row.try_get("state").pg()?;
    let status: Option<i64> = row.try_get("last_status").pg()?;
    let last: Option<i64> = row.try_get("last_attempt_at").pg()?;
    Ok(Delivery {
        id: parse(row, "id")?,
        endpoint_id: parse(row, "endpoint_id")?,
        app_id: parse(row, "app_id")?,
        event_seq: row.try_get::<i64, _>("event_seq").pg()?.cast_unsigned(),
        event_type: row.try_get("event_type").pg()?,
        payload: row.try_get("payload").pg()?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state {state}")))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts").pg()?).unwrap_or(u32::MAX),
        next_attempt_at: Timestamp(row.try_get("next_attempt_at").pg()?),
        last_status: status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error").pg()?,
        last_attempt_at: last.map(Timestamp),
        created_at: Timestamp(row.try_get("created_at").pg()?),
    })
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn create_endpoint(&self, e: &Endpoint) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT}) VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7, NULL)"
        ))
        .bind(e.id.to_string())
        .bind(e.app_id.to_string())
        .bind(&e.url)
        .bind(e.kinds.join(","))
        .bind(&e.secret)
        .bind(e.start_seq.cast_signed())
        .bind(e.created_at.0)
        .execute(self.pool())
        .await
        .pg()?;
        Ok(())
    }

    async fn endpoints_of(&self, app: AppId) -> StoreResult<Vec<Endpoint>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT} FROM webhook_endpoints WHERE app_id = $1 ORDER BY created_at, id"
        ))
        .bind(app.to_string())
        .fetch_all(self.pool())
        .await
        .pg()?
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
               previous_secret = CASE WHEN $1::bigint IS NULL THEN NULL ELSE secret END, \
               previous_until = $1, secret = $2 \
             WHERE app_id = $3 AND id = $4 AND revoked_at IS NULL",
        )
        .bind(keep_until.map(|t| t.0))
        .bind(secret)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected();
        Ok(done == 1)
    }

    async fn live_endpoints(&self) -> StoreResult<Vec<Endpoint>> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT} FROM webhook_endpoints WHERE revoked_at IS NULL"
        ))
        .fetch_all(self.pool())
        .await
        .pg()?
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
        let mut tx = self.pool().begin().await.pg()?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET revoked_at = $1 \
             WHERE app_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now.0)
        .bind(app.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .pg()?
        .rows_affected();
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending'")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .pg()?;
        tx.commit().await.pg()?;
        Ok(done == 1)
    }

    async fn outbox_cursor(&self, app: AppId) -> StoreResult<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM webhook_cursors WHERE app_id = $1")
                .bind(app.to_string())
                .fetch_optional(self.pool())
                .await
                .pg()?;
        Ok(seq.unwrap_or(0).cast_unsigned())
    }

    async fn enqueue_deliveries(
        &self,
        app: AppId,
        cursor: u64,
        deliveries: &[Delivery],
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await.pg()?;
        for d in deliveries {
            sqlx::query(&format!(
                "INSERT INTO webhook_deliveries ({DELIVERY}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL, $10) \
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
            .await
            .pg()?;
        }
        sqlx::query(
            "INSERT INTO webhook_cursors (app_id, seq) VALUES ($1, $2) \
             ON CONFLICT (app_id) DO UPDATE SET seq = GREATEST(webhook_cursors.seq, excluded.seq)",
        )
        .bind(app.to_string())
        .bind(cursor.cast_signed())
        .execute(&mut *tx)
        .await
        .pg()?;
        tx.commit().await.pg()?;
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
        let (ids, counts): (Vec<String>, Vec<i64>) = in_flight
            .iter()
            .map(|(id, n)| (id.to_string(), i64::from(*n)))
            .unzip();
        sqlx::query(&format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1 \
             WHERE state = 'pending' AND next_attempt_at <= $2 \
               AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE revoked_at IS NULL) \
               AND id IN ( \
                 SELECT id FROM ( \
                     SELECT id, endpoint_id, next_attempt_at, ROW_NUMBER() OVER ( \
                         PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS n \
                     FROM webhook_deliveries \
                     WHERE state = 'pending' AND next_attempt_at <= $2) AS due \
                 WHERE n + coalesce((SELECT f.n FROM unnest($4::text[], $6::bigint[]) \
                                     AS f(id, n) WHERE f.id = due.endpoint_id), 0) <= $3 \
                 ORDER BY next_attempt_at, id LIMIT $5) \
             RETURNING {DELIVERY}"
        ))
        .bind(lease_until.0)
        .bind(now.0)
        .bind(i64::from(per_endpoint))
        .bind(ids)
        .bind(i64::from(limit))
        .bind(counts)
        .fetch_all(self.pool())
        .await
        .pg()?
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
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                 next_attempt_at = coalesce($2, next_attempt_at), last_status = $3, \
                 last_error = $4, last_attempt_at = $5 \
             WHERE id = $6 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(a.retry_at.map(|t| t.0))
        .bind(a.status.map(i64::from))
        .bind(&a.error)
        .bind(a.at.0)
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .pg()?;
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
             WHERE endpoint_id = $1 AND ($2::text IS NULL OR state = $2) \
               AND ($3::text IS NULL OR (created_at, id) < \
                   (SELECT created_at, id FROM webhook_deliveries WHERE id = $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(endpoint.to_string())
        .bind(state.map(DeliveryState::as_str))
        .bind(before.map(|b| b.to_string()))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .pg()?
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
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $1 \
             WHERE id = $2 AND endpoint_id = $3 AND app_id = $4 AND state = 'dead' \
               AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE revoked_at IS NULL)",
        )
        .bind(now.0)
        .bind(id.to_string())
        .bind(endpoint.to_string())
        .bind(app.to_string())
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected();
        Ok(done == 1)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM webhook_deliveries \
             WHERE state IN ('delivered', 'dead') AND last_attempt_at < $1",
        )
        .bind(before.0)
        .execute(self.pool())
        .await
        .pg()?
        .rows_affected())
    }

    async fn prune_app_deliveries(&self, app: AppId, before: Timestamp) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM webhook_deliveries WHERE app_id = $1 AND created_at < $2")
                .bind(app.to_string())
                .bind(before.0)
                .execute(self.pool())
                .await
                .pg()?
                .rows_affected(),
        )
    }
}
