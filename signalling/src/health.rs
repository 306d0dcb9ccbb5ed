//! Component health, shared by `GET /healthz` and `signalling admin health`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::server::Services;

/// How long one component may take to answer before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/healthz` answers from the last check.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Health of the whole server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok` when every component is up, otherwise `degraded`.
    pub status: &'static str,
    /// Per component: `store`, `mail`, `bus`, `sfu`, `files`.
    pub components: BTreeMap<&'static str, ComponentHealth>,
}

/// Health of one component.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ComponentHealth {
    /// `up` or `down`.
    pub status: &'static str,
    /// Which implementation: `sqlite`, `outbox`, `smtp`, `local`, `s3` ….
    pub backend: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HealthReport {
    /// Whether every component is up.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

fn component<E: std::fmt::Display>(
    backend: &'static str,
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> ComponentHealth {
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    ComponentHealth {
        status: if error.is_none() { "up" } else { "down" },
        backend,
        error,
    }
}

/// Checks every component, concurrently, each within a timeout.
pub async fn check(services: &Services) -> HealthReport {
    let (store, mail, files) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, services.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, services.mailer.check()),
        tokio::time::timeout(CHECK_TIMEOUT, services.files.storage().check()),
    );
    // The workers' own liveness (a few atomic loads, no round trip).
    let sfu = match services.sfu.health().problem() {
        None => Ok(()),
        Some(problem) => Err(problem),
    };
    let mut components = BTreeMap::new();
    let engine = if services.config.store.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    components.insert("store", component(engine, store));
    components.insert("mail", component(services.mailer.kind(), mail));
    // Every worker must be alive and turning its loop (on SFU nodes: at
    // least one node must answer; each node's state is in /metrics).
    let kind = if services.config.sfu.nodes.is_empty() {
        "embedded"
    } else {
        "nodes"
    };
    components.insert("sfu", component(kind, Ok(sfu)));
    components.insert("files", component(services.files.storage().kind(), files));
    // The in-process bus has no failure mode of its own; NATS reports its
    // connection (no round trip).
    let bus = match services.bus.problem() {
        None => Ok(()),
        Some(problem) => Err(problem),
    };
    components.insert("bus", component(services.bus.kind(), Ok(bus)));
    let all_up = components.values().all(|c| c.status == "up");
    HealthReport {
        status: if all_up { "ok" } else { "degraded" },
        components,
    }
}

/// The last health report, so that `/healthz` costs no SMTP connection,
/// S3 request or SFU worker round trip per request: a report younger than
/// [`MAX_AGE`] is answered as it is; an older one is checked again by one
/// request while the others wait for its result.
#[derive(Debug, Default)]
pub struct HealthCache {
    last: tokio::sync::Mutex<Option<(Instant, Arc<HealthReport>)>>,
}

impl HealthCache {
    /// The report, at most [`MAX_AGE`] old.
    pub async fn report(&self, services: &Services) -> Arc<HealthReport> {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < MAX_AGE
        {
            return report.clone();
        }
        let report = Arc::new(check(services).await);
        *last = Some((Instant::now(), report.clone()));
        report
    }
}
