//! Upkeep: forgotten files' objects deleted, abandoned uploads and (with
//! a retention period) old files forgotten, by one sweeper task.

use super::*;

/// An upload pending this long after its URL expired is abandoned.
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);

/// How often the sweeper runs when nothing wakes it.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl Files {
    /// An application was unregistered (its files were forgotten in the
    /// same transaction): delete their objects now.
    pub fn app_unregistered(&self) {
        self.garbage.notify_one();
    }

    /// A file's record, in whatever state.
    ///
    /// # Errors
    /// On store failure.
    pub async fn record(
        &self,
        id: FileId,
    ) -> Result<Option<crate::store::files::FileRecord>, Error> {
        Ok(self.store.file(id).await?)
    }

    /// Files were discarded (retention, a released hold): delete their
    /// objects now.
    pub fn files_discarded(&self) {
        self.garbage.notify_one();
    }

    /// One round of upkeep: forgets abandoned uploads and (with a
    /// retention period) old files, then deletes the objects of forgotten
    /// files. Returns how many files' objects were deleted.
    ///
    /// # Errors
    /// If the store fails; a storage failure leaves the entry for the next
    /// round.
    pub async fn sweep(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let abandoned = Timestamp(now.0.saturating_sub(ms(ABANDONED_AFTER)));
        let old = (self.config.retention_days > 0).then(|| {
            let keep = Duration::from_secs(self.config.retention_days * 24 * 60 * 60);
            Timestamp(now.0.saturating_sub(ms(keep)))
        });
        if let Some(local) = &self.local {
            let removed = local.remove_stale_partials(ABANDONED_AFTER);
            if removed > 0 {
                tracing::info!(
                    files = removed,
                    "removed partial uploads cut off by a crash"
                );
            }
        }
        let forgotten = self.store.discard_stale(abandoned, old, now).await?;
        if forgotten > 0 {
            tracing::info!(files = forgotten, "forgot abandoned or expired files");
        }
        let mut deleted = 0;
        loop {
            let batch = self.store.garbage(now, 100).await?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            for (file, app) in &batch {
                let mut failed = None;
                for part in [Part::Incoming, Part::Bytes, Part::Preview] {
                    if let Err(e) = self.storage.delete(Object::new(*app, *file, part)).await {
                        failed = Some(e);
                    }
                }
                match failed {
                    None => {
                        self.store.swept(*file, now).await?;
                        deleted += 1;
                    }
                    // This one waits; the others go on.
                    Some(e) => {
                        tracing::warn!(error = %e, %file, "deleting a file's objects failed; trying again later");
                        let later = Timestamp(now.0.saturating_add(ms(SWEEP_INTERVAL)));
                        self.store.postpone_garbage(*file, later).await?;
                    }
                }
            }
            metrics::counter!("files_deleted_total").increment(batch.len() as u64);
        }
    }

    /// Runs [`Self::sweep`] every minute and whenever files are forgotten.
    pub async fn run_sweeper(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "file upkeep failed");
            }
            let _ = tokio::time::timeout(SWEEP_INTERVAL, self.garbage.notified()).await;
        }
    }
}
