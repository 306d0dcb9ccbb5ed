//! Outgoing webhooks: the endpoints an application registers and the
//! durable outbox of deliveries to them. Every [`super::Store`] is one.
//!
//! Events reach the outbox through the per-user event log: the messaging
//! service writes each event an endpoint may want to the log of the
//! application's *webhook sink* (a participant no one connects as) in
//! the event's own transaction, and [`OutboxStore::enqueue_deliveries`]
//! turns that log, past the application's cursor, into one delivery per
//! interested endpoint. A delivery is claimed for a lease, attempted,
//! and then delivered, retried later or dead.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, DeliveryId, EndpointId, Timestamp};

/// An outgoing webhook endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Id.
    pub id: EndpointId,
    /// Its application.
    pub app_id: AppId,
    /// Where deliveries are posted (`http` or `https`).
    pub url: String,
    /// The kinds of events it wants (`message`, `action`, `call`, `user`).
    pub kinds: Vec<String>,
    /// The signing secret (`whsec_` and base64 of 32 random bytes).
    pub secret: String,
    /// The secret its last rotation replaced, and until when that one
    /// still signs deliveries beside `secret`.
    pub previous_secret: Option<(String, Timestamp)>,
    /// Only events after this number of the application's sink log go to
    /// it (the log's head when it was made).
    pub start_seq: u64,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked: nothing more is delivered to it.
    pub revoked_at: Option<Timestamp>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed: no more are made unless it is retried by hand.
    Dead,
}

impl DeliveryState {
    /// Stored form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// The state a stored form stands for.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Id.
    pub id: DeliveryId,
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its application.
    pub app_id: AppId,
    /// The event's number in the application's sink log; with the
    /// application, the idempotency id every endpoint sees.
    pub event_seq: u64,
    /// The event type (`message.created`, `action.clicked`, …).
    pub event_type: String,
    /// The body posted, exactly (the signature covers it).
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (while pending).
    pub next_attempt_at: Timestamp,
    /// The last attempt's HTTP status, if it got an answer.
    pub last_status: Option<u16>,
    /// The last attempt's failure, if it failed.
    pub last_error: Option<String>,
    /// When the last attempt ended.
    pub last_attempt_at: Option<Timestamp>,
    /// When the event was enqueued.
    pub created_at: Timestamp,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The endpoint answered 2xx.
    pub delivered: bool,
    /// Its HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if it did.
    pub error: Option<String>,
    /// When it ended.
    pub at: Timestamp,
    /// When to try again if it failed; `None`: it is dead.
    pub retry_at: Option<Timestamp>,
}

/// Persistence of outgoing webhooks.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores a new endpoint.
    async fn create_endpoint(&self, endpoint: &Endpoint) -> StoreResult<()>;

    /// An application's endpoints, revoked ones too, oldest first.
    async fn endpoints_of(&self, app: AppId) -> StoreResult<Vec<Endpoint>>;

    /// Gives a live endpoint of the application the signing secret
    /// `secret`; the one it had keeps signing beside it until `keep_until`
    /// (`None`: it stops at once; a secret kept from an earlier rotation
    /// is dropped either way). False when the application has no such
    /// live endpoint.
    async fn rotate_endpoint_secret(
        &self,
        app: AppId,
        id: EndpointId,
        secret: &str,
        keep_until: Option<Timestamp>,
    ) -> StoreResult<bool>;

    /// Every endpoint not revoked, of every application.
    async fn live_endpoints(&self) -> StoreResult<Vec<Endpoint>>;

    /// Revokes an application's endpoint; false when it has none so (or
    /// it was revoked already). Its pending deliveries are dropped.
    async fn revoke_endpoint(
        &self,
        app: AppId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// The number of the application's last sink event already turned
    /// into deliveries (0 if none).
    async fn outbox_cursor(&self, app: AppId) -> StoreResult<u64>;

    /// In one transaction: stores `deliveries` (one already stored for the
    /// same endpoint and event is kept as it is) and moves the
    /// application's cursor up to `cursor` (never back).
    async fn enqueue_deliveries(
        &self,
        app: AppId,
        cursor: u64,
        deliveries: &[Delivery],
    ) -> StoreResult<()>;

    /// Claims up to `limit` pending deliveries due by `now`, at most
    /// `per_endpoint` of each endpoint less the attempts `in_flight` to it
    /// already: their next attempt moves to `lease_until`, so that no
    /// other claim takes them meanwhile (a process that dies holding them
    /// lets them go when the lease ends). Oldest due first.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
        per_endpoint: u32,
        in_flight: &[(EndpointId, u32)],
    ) -> StoreResult<Vec<Delivery>>;

    /// Records an attempt of a pending delivery: delivered, due again at
    /// `retry_at`, or dead.
    async fn record_attempt(&self, id: DeliveryId, attempt: &Attempt) -> StoreResult<()>;

    /// An endpoint's deliveries, newest first, in `state` if given: those
    /// after the delivery `before` in that order (none when it is not one
    /// of the endpoint's).
    async fn deliveries(
        &self,
        endpoint: EndpointId,
        state: Option<DeliveryState>,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;

    /// Makes a dead delivery of the application's pending again, due at
    /// `now` with its attempts reset; false when there is no such dead
    /// delivery.
    async fn retry_delivery(
        &self,
        app: AppId,
        endpoint: EndpointId,
        id: DeliveryId,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// Deletes delivered and dead deliveries that ended before `before`;
    /// returns how many.
    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64>;

    /// Deletes every delivery of an application enqueued before `before`,
    /// whatever its state (their payloads hold messages retention
    /// deletes); returns how many.
    async fn prune_app_deliveries(&self, app: AppId, before: Timestamp) -> StoreResult<u64>;
}
