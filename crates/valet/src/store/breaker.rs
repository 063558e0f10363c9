//! Fails store calls at once while the store is unreachable, instead of letting each one
//! wait for the connection pool's acquire timeout.
//!
//! When a call finds the store unreachable, the breaker opens: for [`OPEN_FOR`] every call
//! fails with [`StoreError::Unavailable`] without touching the pool. Then one call goes
//! through as a probe while the others keep failing. The first call that reaches the store
//! closes the breaker again, and so does the change feed when it reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;

/// How long calls fail without reaching the store after it was found unreachable. It matches the
/// `Retry-After: 1` of the 503 that such a failure becomes.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// How long one probe may take before another call may probe. It is longer than the pool's
/// acquire timeout of 3 seconds, so a probe normally ends before the next one starts.
const PROBE_FOR: Duration = Duration::from_secs(5);

/// The open or closed state of one store's breaker.
#[derive(Debug)]
pub struct Breaker {
    started: Instant,
    /// Milliseconds after `started` until which calls fail at once, or 0 while closed.
    open_until: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            open_until: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    /// Returns whether a call may go to the store now, or the error it fails with.
    pub fn admit(&self) -> Result<(), StoreError> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = self.now_millis();
        if now < until {
            return Err(unreachable());
        }
        // The wait is over. One caller wins the exchange and probes the store, and the
        // others keep failing until the probe has ended or timed out.
        let probe_until = now + millis(PROBE_FOR);
        match self.open_until.compare_exchange(
            until,
            probe_until,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(_) => Err(unreachable()),
        }
    }

    /// Opens the breaker when `result` shows the store unreachable, and closes it when the
    /// call reached the store, whatever the call's own outcome.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Err(err) if err.is_unreachable() => {
                let until = self.now_millis() + millis(OPEN_FOR);
                if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                    tracing::warn!(
                        error = %err,
                        open_for_ms = millis(OPEN_FOR),
                        "store unreachable; store calls fail at once between probes"
                    );
                }
            }
            _ => self.close(),
        }
    }

    /// Closes the breaker, for a call or a change feed that has just reached the store.
    pub fn close(&self) {
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("store reachable again; store calls resume");
        }
    }

    /// Returns the milliseconds since the breaker was made, at least 1 so that an open
    /// breaker never reads as closed.
    fn now_millis(&self) -> u64 {
        millis(self.started.elapsed()).max(1)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unreachable() -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the store was unreachable less than a second ago; calls fail at once until a probe \
         reaches it",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_open(breaker: &Breaker) -> bool {
        breaker.open_until.load(Ordering::Acquire) > breaker.now_millis()
    }

    fn connection_refused() -> Result<(), StoreError> {
        Err(StoreError::Unavailable(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )))
    }

    #[test]
    fn breaker_admits_while_closed() {
        let breaker = Breaker::default();
        assert!(breaker.admit().is_ok());
        breaker.record(&Ok::<(), StoreError>(()));
        assert!(breaker.admit().is_ok());
        assert!(!is_open(&breaker));
    }

    #[test]
    fn breaker_opens_on_unreachable_store() {
        let breaker = Breaker::default();
        breaker.record(&connection_refused());
        assert!(is_open(&breaker));
        let rejected = breaker.admit().unwrap_err();
        assert!(rejected.is_unreachable(), "{rejected}");
    }

    #[test]
    fn breaker_ignores_query_errors() {
        let breaker = Breaker::default();
        breaker.record(&Err::<(), _>(StoreError::IdTaken));
        breaker.record(&Err::<(), _>(StoreError::Query(sqlx::Error::RowNotFound)));
        assert!(!is_open(&breaker));
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn breaker_lets_one_probe_through() {
        let breaker = Breaker::default();
        breaker.record(&connection_refused());
        // Moves the end of the open interval into the past.
        breaker.open_until.store(1, Ordering::Release);
        assert!(breaker.admit().is_ok(), "the first caller probes");
        assert!(breaker.admit().is_err(), "others fail while the probe runs");
        breaker.record(&Ok::<(), StoreError>(()));
        assert!(
            breaker.admit().is_ok(),
            "a successful probe closes the breaker"
        );
    }

    #[test]
    fn breaker_reopens_after_failed_probe() {
        let breaker = Breaker::default();
        breaker.record(&connection_refused());
        breaker.open_until.store(1, Ordering::Release);
        assert!(breaker.admit().is_ok());
        breaker.record(&connection_refused());
        assert!(is_open(&breaker));
        assert!(breaker.admit().is_err());
    }
}
