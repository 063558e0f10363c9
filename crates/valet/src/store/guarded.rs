//! A [`KeyStore`] decorator that counts every operation in `valet_store_queries_total`,
//! and fails operations at once while the store is unreachable (see [`Breaker`]).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::breaker::Breaker;
use super::{ChangeSink, Cursor, FeedEvent, KeyPage, KeyStore, ListQuery, RollOutcome, StoreError};
use crate::key::KeyId;
use crate::metrics::Metrics;
use crate::model::{KeyRecord, KeyUpdate, NewKeyRecord, StoredKey, Successor};
use crate::oauth::client::ClientRecord;
use crate::oauth::signing::SigningKeyRecord;

/// Wraps a store: counts each call by operation name, and passes it on unless the
/// breaker is open.
pub struct GuardedStore {
    inner: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
    breaker: Arc<Breaker>,
}

impl GuardedStore {
    pub fn new(inner: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            metrics,
            breaker: Arc::default(),
        }
    }

    /// Runs `call`, the operation named `operation`, when the breaker admits it, and
    /// records in the breaker whether it reached the store.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.breaker.admit()?;
        self.metrics.store_query(operation);
        let result = call.await;
        self.breaker.record(&result);
        result
    }
}

#[async_trait]
impl KeyStore for GuardedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn close(&self) {
        self.inner.close().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", self.inner.ping()).await
    }

    async fn insert_first_key(&self, key: &NewKeyRecord) -> Result<Option<KeyRecord>, StoreError> {
        self.call("insert_first_key", self.inner.insert_first_key(key))
            .await
    }

    async fn count_keys(&self) -> Result<u64, StoreError> {
        self.call("count_keys", self.inner.count_keys()).await
    }

    async fn insert_key(&self, key: &NewKeyRecord) -> Result<KeyRecord, StoreError> {
        self.call("insert_key", self.inner.insert_key(key)).await
    }

    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
        self.call("find_key", self.inner.find_key(id)).await
    }

    async fn list_keys(&self, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.call("list_keys", self.inner.list_keys(query)).await
    }

    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.call("update_key", self.inner.update_key(id, update))
            .await
    }

    async fn revoke_key(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.call("revoke_key", self.inner.revoke_key(id, at)).await
    }

    async fn roll_key(
        &self,
        id: &KeyId,
        successor: &Successor,
        grace_until: OffsetDateTime,
    ) -> Result<RollOutcome, StoreError> {
        self.call("roll_key", self.inner.roll_key(id, successor, grace_until))
            .await
    }

    async fn record_usage(&self, usage: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        self.call("record_usage", self.inner.record_usage(usage))
            .await
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        self.call("insert_client", self.inner.insert_client(client))
            .await
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.call("find_client", self.inner.find_client(id)).await
    }

    async fn list_clients(
        &self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<ClientRecord>, Option<Cursor>), StoreError> {
        self.call("list_clients", self.inner.list_clients(limit, after))
            .await
    }

    async fn replace_client(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        self.call("replace_client", self.inner.replace_client(client))
            .await
    }

    async fn delete_client(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        self.call("delete_client", self.inner.delete_client(id, at))
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.call("signing_keys", self.inner.signing_keys()).await
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError> {
        self.call(
            "insert_first_signing_key",
            self.inner.insert_first_signing_key(key),
        )
        .await
    }

    async fn rotate_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.call(
            "rotate_signing_key",
            self.inner.rotate_signing_key(key, retire_at),
        )
        .await
    }

    async fn revoke_token(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.call(
            "revoke_token",
            self.inner.revoke_token(jti, client_id, expires_at),
        )
        .await
    }

    async fn record_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.call(
            "record_assertion",
            self.inner.record_assertion(client_id, jti, expires_at),
        )
        .await
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.call("is_token_revoked", self.inner.is_token_revoked(jti))
            .await
    }

    async fn follow_changes(&self, sink: Arc<dyn ChangeSink>, stop: watch::Receiver<bool>) {
        let sink = Arc::new(ReachableSink {
            inner: sink,
            breaker: self.breaker.clone(),
        });
        self.inner.follow_changes(sink, stop).await
    }
}

/// Passes the change feed's events on, and closes the breaker when the feed
/// resynchronises, because it has just read every key id from the store.
struct ReachableSink {
    inner: Arc<dyn ChangeSink>,
    breaker: Arc<Breaker>,
}

impl ChangeSink for ReachableSink {
    fn resync(&self, ids: Vec<KeyId>, revoked_jtis: Vec<String>) {
        self.breaker.close();
        self.inner.resync(ids, revoked_jtis);
    }

    fn apply(&self, event: FeedEvent) {
        self.inner.apply(event);
    }

    fn lost(&self, reason: &str) {
        self.inner.lost(reason);
    }

    fn query_sent(&self, operation: &'static str) {
        self.inner.query_sent(operation);
    }
}
