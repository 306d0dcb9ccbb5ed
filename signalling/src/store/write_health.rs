//! Whether the store can write, as its last writes found it (see
//! [`WriteHealth`]).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::{StoreError, StoreResult, Unavailable};

/// Whether the store can write, as its writes last found it. The first
/// write the disk refuses records a fault (logged once, the
/// `store_unavailable` gauge set to 1); the first that succeeds after it
/// clears the fault. The message writer and the health check's probe
/// report here, so the fault clears by itself once space returns, with or
/// without traffic.
#[derive(Debug, Default)]
pub(super) struct WriteHealth {
    fault: Mutex<Option<Fault>>,
}

#[derive(Debug, Clone)]
struct Fault {
    why: Unavailable,
    since: SystemTime,
}

impl WriteHealth {
    /// Records the outcome of a write: a success clears a fault, a refusal
    /// records one, other failures say nothing of the disk.
    pub(super) fn note<T>(&self, result: &StoreResult<T>) {
        match result {
            Ok(_) => self.succeeded(),
            Err(StoreError::Unavailable(why)) => self.refused(why),
            Err(_) => {}
        }
    }

    /// A write went through.
    pub(super) fn succeeded(&self) {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Fault { why, since }) = fault.take() {
            let refused_for = since.elapsed().unwrap_or_default();
            tracing::warn!(
                reason = %why,
                refused_for = %humantime::format_duration(Duration::from_secs(refused_for.as_secs())),
                "the store writes again"
            );
            metrics::gauge!("store_unavailable").set(0.0);
        }
    }

    /// A write was refused for `why`.
    pub(super) fn refused(&self, why: &Unavailable) {
        let reason = match why {
            Unavailable::DiskFull(_) => "disk_full",
            _ => "io_error",
        };
        metrics::counter!("store_writes_refused_total", "reason" => reason).increment(1);
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if fault.is_none() {
            tracing::error!(
                reason = %why,
                "the store cannot write: requests that write are answered `unavailable` \
                 until it can again"
            );
            metrics::gauge!("store_unavailable").set(1.0);
            *fault = Some(Fault {
                why: why.clone(),
                since: SystemTime::now(),
            });
        }
    }

    /// The fault, as health reports it: `disk full (SQLITE_FULL) since
    /// 2026-12-02T00:40:12Z`.
    pub(super) fn problem(&self) -> Option<String> {
        let fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        fault.as_ref().map(|f| {
            format!(
                "{} since {}",
                f.why,
                humantime::format_rfc3339_seconds(f.since)
            )
        })
    }
}
