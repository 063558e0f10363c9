//! Batched `last_used_at` updates, so that a verification never waits on a store write.
//!
//! Successful verifications record the time in memory. A background task writes the
//! batch every [`FLUSH_INTERVAL`], and shutdown writes what is left, which keeps the
//! stored value within a minute of the truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::key::{IdHashBuilder, KeyId};
use crate::model::from_micros;
use crate::store::{KeyStore, StoreError};

/// How often pending usage is written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Pending `last_used_at` values, newest per key, in microseconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<KeyId, i64, IdHashBuilder>>,
}

impl UsageTracker {
    /// Notes that `id` verified successfully at `at`, in microseconds since the Unix epoch
    /// (see [`crate::model::now_micros`]).
    pub fn record(&self, id: &KeyId, at: i64) {
        let mut pending = self.pending.lock().expect("usage lock poisoned");
        match pending.get_mut(id) {
            Some(latest) if *latest >= at => {}
            Some(latest) => *latest = at,
            None => {
                pending.insert(id.clone(), at);
            }
        }
    }

    /// Returns the newest unwritten use of `id`, if any.
    pub fn pending(&self, id: &KeyId) -> Option<OffsetDateTime> {
        let at = *self.pending.lock().expect("usage lock poisoned").get(id)?;
        from_micros(at)
    }

    /// Writes every pending use to `store`. On failure the batch goes back in the queue,
    /// so the next flush retries it.
    pub async fn flush(&self, store: &dyn KeyStore) -> Result<usize, StoreError> {
        let pending: Vec<(KeyId, i64)> = {
            let mut pending = self.pending.lock().expect("usage lock poisoned");
            pending.drain().collect()
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let batch: Vec<(KeyId, OffsetDateTime)> = pending
            .iter()
            .filter_map(|(id, at)| Some((id.clone(), from_micros(*at)?)))
            .collect();
        if let Err(err) = store.record_usage(&batch).await {
            for (id, at) in &pending {
                self.record(id, *at);
            }
            return Err(err);
        }
        Ok(batch.len())
    }

    /// Flushes every [`FLUSH_INTERVAL`] until `stop` changes, then flushes once more.
    pub async fn run_flusher(
        self: Arc<Self>,
        store: Arc<dyn KeyStore>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if let Err(err) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %err, "failed to write last_used_at batch; will retry");
            }
        }
        match self.flush(store.as_ref()).await {
            Ok(count) => tracing::info!(keys = count, "wrote last_used_at batch at shutdown"),
            Err(err) => {
                tracing::error!(error = %err, "failed to write last_used_at batch at shutdown")
            }
        }
    }
}
