//! The audit log: every administrative action — a registration, a
//! subscriber's sign-in and sign-out, an application renamed, its secret
//! rotated or the application unregistered, a user locked or unlocked, a
//! grant added or withdrawn, an incoming webhook made or revoked, a
//! conversation made or its members changed by the application's bot —
//! appended with who did it, when, from which
//! address and to what, in the log of the subscriber that owns it.
//!
//! An entry is written once the action has succeeded; the action is not
//! undone when its entry cannot be written (it is done already), but the
//! failure is logged and counted (`audit_write_failures_total`). Entries
//! are never changed; the audit retention (`[audit] retention_days`)
//! deletes old ones.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use crate::error::Error;
use crate::ids::{AppId, Clock, SubscriberId};
use crate::server::Services;
use crate::store::Store;
use crate::store::audit::{AuditEntry, AuditQuery};
use crate::tenancy::Actor;

/// Most entries one page of the log holds.
pub const MAX_AUDIT_PAGE: u32 = 200;

/// An administrative action to record.
#[derive(Debug, Clone)]
pub struct Audited {
    /// Whose log: the subscriber that owns what was acted on.
    pub subscriber_id: SubscriberId,
    /// The application acted on or through.
    pub app_id: Option<AppId>,
    /// Who acted (`subscriber:<id>`, `application:<id>`).
    pub actor: String,
    /// What was done.
    pub action: &'static str,
    /// What it was done to.
    pub target: Option<String>,
    /// More about it.
    pub details: Option<Value>,
}

impl Audited {
    /// An action of `actor` on application `app`.
    #[must_use]
    pub fn by(actor: &Actor, app: AppId, action: &'static str) -> Self {
        let (actor, subscriber_id) = match actor {
            Actor::Application(a) => (format!("application:{}", a.id), a.subscriber_id),
            Actor::Subscriber(s) => (format!("subscriber:{}", s.id), s.id),
        };
        Self {
            subscriber_id,
            app_id: Some(app),
            actor,
            action,
            target: Some(format!("application:{app}")),
            details: None,
        }
    }

    /// An action of application `app` on something of its own (`target`).
    #[must_use]
    pub fn by_app_on(
        app: &crate::store::Application,
        action: &'static str,
        target: String,
    ) -> Self {
        Self {
            subscriber_id: app.subscriber_id,
            app_id: Some(app.id),
            actor: format!("application:{}", app.id),
            action,
            target: Some(target),
            details: None,
        }
    }

    /// With details.
    #[must_use]
    pub fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// Where a WebSocket session records what the application's bot
/// changes (conversations it makes, members it adds or removes): the
/// store, the clock and the client's address.
#[derive(Clone)]
pub struct AuditSink {
    /// The store that keeps the log.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The client's address.
    pub ip: Option<IpAddr>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// Appends an action (see the module's docs for a failure).
    pub async fn record(&self, what: Audited) {
        append(&*self.store, &*self.clock, what, self.ip).await;
    }
}

async fn append(store: &dyn Store, clock: &dyn Clock, what: Audited, ip: Option<IpAddr>) {
    let entry = AuditEntry {
        id: 0,
        at: clock.now(),
        subscriber_id: what.subscriber_id,
        app_id: what.app_id,
        actor: what.actor,
        action: what.action.to_owned(),
        target: what.target,
        source_ip: ip.map(|ip| ip.to_string()),
        details: what.details,
    };
    if let Err(e) = store.append_audit(&entry).await {
        metrics::counter!("audit_write_failures_total").increment(1);
        tracing::error!(error = %e, action = entry.action, "recording an audit entry failed");
    }
}

impl Services {
    /// Appends an administrative action to its subscriber's audit log
    /// (see the module's docs for a failure).
    pub async fn audit(&self, what: Audited, ip: Option<IpAddr>) {
        append(&*self.store, &*self.clock, what, ip).await;
    }

    /// Where a session from `ip` records its bot's changes.
    #[must_use]
    pub fn audit_sink(&self, ip: Option<IpAddr>) -> AuditSink {
        AuditSink {
            store: self.store.clone(),
            clock: self.clock.clone(),
            ip,
        }
    }

    /// A page of a subscriber's audit log, newest first.
    ///
    /// # Errors
    /// `invalid_request` for a `limit` outside 1 to [`MAX_AUDIT_PAGE`].
    pub async fn audit_log(
        &self,
        subscriber: SubscriberId,
        query: &AuditQuery,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, Error> {
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(Error::InvalidRequest(format!(
                "limit: 1 to {MAX_AUDIT_PAGE}"
            )));
        }
        Ok(self.store.audit_entries(subscriber, query, limit).await?)
    }
}
