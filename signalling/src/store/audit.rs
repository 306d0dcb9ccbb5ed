//! The audit log: who did what administrative action, when, from where,
//! to what. Rows are only ever appended, and removed by the audit log's
//! own retention. Every [`super::Store`] is one.

use async_trait::async_trait;

use super::StoreResult;
use crate::ids::{AppId, SubscriberId, Timestamp};

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its number, increasing (0 for an entry not stored yet).
    pub id: u64,
    /// When.
    pub at: Timestamp,
    /// Whose log it is in: the subscriber that owns what was acted on.
    pub subscriber_id: SubscriberId,
    /// The application acted on or through, if any.
    pub app_id: Option<AppId>,
    /// Who acted: `subscriber:<id>`, `application:<id>` or `system`.
    pub actor: String,
    /// What was done, e.g. `application.secret_rotated`.
    pub action: String,
    /// What it was done to, e.g. `user:<id>`.
    pub target: Option<String>,
    /// The client's address, when the action came over the network.
    pub source_ip: Option<String>,
    /// More about it, as JSON.
    pub details: Option<serde_json::Value>,
}

/// Which entries of one subscriber's log to read, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only those of this application.
    pub app_id: Option<AppId>,
    /// Only this action.
    pub action: Option<String>,
    /// Only at or after this time.
    pub from: Option<Timestamp>,
    /// Only before this time.
    pub to: Option<Timestamp>,
    /// Only entries numbered below this (the next page).
    pub before_id: Option<u64>,
}

/// Persistence of the audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an entry; returns its number.
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<u64>;

    /// A subscriber's entries matching `query`, newest first, at most
    /// `limit`.
    async fn audit_entries(
        &self,
        subscriber: SubscriberId,
        query: &AuditQuery,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>>;

    /// Deletes the entries made before `before`; returns how many.
    async fn prune_audit(&self, before: Timestamp) -> StoreResult<u64>;
}
