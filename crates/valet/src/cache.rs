//! The verification cache and the filter of issued ids, kept true by the store's change
//! feed.
//!
//! The cache may serve verifications only while the feed is connected ("trusted"). When the feed is
//! lost, every lookup goes to the store until the feed has reconnected and resynchronised,
//! because changes made meanwhile on other nodes were missed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::key::{IdHashBuilder, KeyId, base62};
use crate::metrics::Metrics;
use crate::model::StoredKey;
use crate::oauth::client::ClientRecord;
use crate::store::{ChangeKind, ChangeSink, FeedEvent};

/// Source of the key for one verification.
#[derive(Debug)]
pub enum Lookup {
    /// The key, from memory.
    Hit(Arc<StoredKey>),
    /// No key with this id was ever issued: return `NOT_FOUND` without a query.
    NeverIssued,
    /// Load the key from the store, then offer it back with [`KeyCache::insert`] and this
    /// epoch.
    Miss(u64),
}

/// Keys verified recently, and every issued id.
#[derive(Debug)]
pub struct KeyCache {
    entries: RwLock<HashMap<KeyId, Arc<StoredKey>, IdHashBuilder>>,
    /// Every issued id as its base62 value; 8 digits fit in a `u64`.
    issued: RwLock<HashSet<u64, IdHashBuilder>>,
    trusted: AtomicBool,
    /// Bumped by every invalidation, so that a load which raced with a change is dropped.
    epoch: AtomicU64,
    untrusted_since: Mutex<Option<Instant>>,
    capacity: usize,
}

fn id_value(id: &KeyId) -> u64 {
    base62::decode(id.as_str()).expect("a key id is 8 base62 digits")
}

impl KeyCache {
    /// Creates an empty, untrusted cache with room for at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::default()),
            issued: RwLock::new(HashSet::default()),
            trusted: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            untrusted_since: Mutex::new(Some(Instant::now())),
            capacity,
        }
    }

    /// Returns whether the cache may serve verifications.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Decides how to find the key with `id`.
    pub fn lookup(&self, id: &KeyId) -> Lookup {
        let epoch = self.epoch.load(Ordering::Acquire);
        if !self.is_trusted() {
            return Lookup::Miss(epoch);
        }
        // Every cached key was issued: `resync` empties the cache when it replaces the id
        // filter, and `insert` drops a key loaded before that. So a hit needs no look at
        // the filter.
        if let Some(stored) = self.entries.read().expect("cache lock").get(id) {
            return Lookup::Hit(stored.clone());
        }
        let issued = self
            .issued
            .read()
            .expect("cache lock")
            .contains(&id_value(id));
        if issued {
            Lookup::Miss(epoch)
        } else {
            Lookup::NeverIssued
        }
    }

    /// Offers a key loaded from the store. It is kept only when the cache is trusted and
    /// nothing was invalidated since the lookup that returned `epoch`.
    pub fn insert(&self, stored: Arc<StoredKey>, epoch: u64) {
        if !self.is_trusted() {
            return;
        }
        let mut entries = self.entries.write().expect("cache lock");
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if entries.len() >= self.capacity
            && let Some(victim) = entries.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        entries.insert(stored.record.id.clone(), stored);
    }

    /// Returns a cached key while the cache has been untrusted for at most `window`, for
    /// serving stale results when the store is unreachable.
    pub fn stale(&self, id: &KeyId, window: Duration) -> Option<Arc<StoredKey>> {
        if window.is_zero() {
            return None;
        }
        let since = *self.untrusted_since.lock().expect("cache lock");
        if since.is_some_and(|since| since.elapsed() > window) {
            return None;
        }
        self.entries.read().expect("cache lock").get(id).cloned()
    }

    /// Drops the cached copy of `id` after a change.
    pub fn invalidate(&self, id: &KeyId) {
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(id);
    }

    /// Records a newly issued id.
    pub fn add_issued(&self, id: &KeyId) {
        self.issued
            .write()
            .expect("cache lock")
            .insert(id_value(id));
    }

    /// Replaces the id filter with `ids`, empties the cache and trusts it again.
    pub fn resync(&self, ids: &[KeyId]) {
        let issued: HashSet<u64, IdHashBuilder> = ids.iter().map(id_value).collect();
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        *self.issued.write().expect("cache lock") = issued;
        *self.untrusted_since.lock().expect("cache lock") = None;
        self.trusted.store(true, Ordering::Release);
    }

    /// Stops serving from memory until the next [`KeyCache::resync`]. Entries stay for
    /// [`KeyCache::stale`].
    pub fn distrust(&self) {
        let mut since = self.untrusted_since.lock().expect("cache lock");
        if since.is_none() {
            *since = Some(Instant::now());
        }
        self.trusted.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Returns the number of cached keys.
    pub fn len(&self) -> usize {
        self.entries.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ids (`jti`) of access tokens revoked before they expired, as this node has seen them.
///
/// Like the key cache, the list is complete only while the change feed is connected;
/// callers check [`KeyCache::is_trusted`] and ask the store otherwise.
#[derive(Debug, Default)]
pub struct DenyList {
    revoked: RwLock<HashSet<String>>,
}

impl DenyList {
    /// Returns whether `jti` is known to be revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.revoked.read().expect("deny list lock").contains(jti)
    }

    /// Adds a revoked token id.
    pub fn insert(&self, jti: String) {
        self.revoked.write().expect("deny list lock").insert(jti);
    }

    fn replace(&self, jtis: Vec<String>) {
        *self.revoked.write().expect("deny list lock") = jtis.into_iter().collect();
    }
}

/// OAuth clients read recently, so that a token request needs no store query. Kept true
/// by the change feed like the key cache, and used only while that is trusted.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: RwLock<HashMap<String, Arc<ClientRecord>>>,
    /// Bumped by every invalidation, so that a read which raced with a change is dropped.
    epoch: AtomicU64,
}

impl ClientCache {
    /// Returns the cached client with `id`, or the epoch to pass to
    /// [`ClientCache::insert`] after reading it from the store.
    pub fn get(&self, id: &str) -> Result<Arc<ClientRecord>, u64> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let clients = self.clients.read().expect("client cache lock");
        clients.get(id).cloned().ok_or(epoch)
    }

    /// Caches a client read from the store, unless something was invalidated since the
    /// lookup that returned `epoch`.
    pub fn insert(&self, client: Arc<ClientRecord>, epoch: u64) {
        let mut clients = self.clients.write().expect("client cache lock");
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(client.id.clone(), client);
    }

    /// Drops a changed or deleted client.
    pub fn invalidate(&self, id: &str) {
        let mut clients = self.clients.write().expect("client cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        clients.remove(id);
    }

    fn clear(&self) {
        let mut clients = self.clients.write().expect("client cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        clients.clear();
    }
}

/// Maximum number of cached clients; the cache starts over when it is full.
const MAX_CACHED_CLIENTS: usize = 10_000;

/// Applies the store's change feed to a [`KeyCache`], a [`DenyList`] and a
/// [`ClientCache`], and records feed metrics.
pub struct CacheSync {
    pub cache: Arc<KeyCache>,
    pub denied: Arc<DenyList>,
    pub clients: Arc<ClientCache>,
    pub metrics: Arc<Metrics>,
}

impl ChangeSink for CacheSync {
    fn resync(&self, ids: Vec<KeyId>, revoked_jtis: Vec<String>) {
        self.denied.replace(revoked_jtis);
        self.clients.clear();
        self.cache.resync(&ids);
        self.metrics.set_cache_trusted(true);
        tracing::info!(keys = ids.len(), "change feed connected; cache trusted");
    }

    fn apply(&self, event: FeedEvent) {
        let changed_at = match event {
            FeedEvent::Key(change) => {
                match change.kind {
                    ChangeKind::Inserted => self.cache.add_issued(&change.id),
                    ChangeKind::Updated | ChangeKind::Deleted => self.cache.invalidate(&change.id),
                }
                change.changed_at
            }
            FeedEvent::TokenRevoked { jti, changed_at } => {
                self.denied.insert(jti);
                changed_at
            }
            FeedEvent::ClientChanged {
                client_id,
                changed_at,
            } => {
                self.clients.invalidate(&client_id);
                changed_at
            }
        };
        if let Some(at) = changed_at {
            let lag = time::OffsetDateTime::now_utc() - at;
            self.metrics.notification_lag(lag.as_seconds_f64());
        }
    }

    fn lost(&self, reason: &str) {
        if self.cache.is_trusted() {
            tracing::warn!(
                reason,
                "change feed lost; verifying against the store until it reconnects"
            );
        }
        self.cache.distrust();
        self.metrics.set_cache_trusted(false);
    }

    fn query_sent(&self, operation: &'static str) {
        self.metrics.store_query(operation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyEnv, KeyHash};
    use crate::model::KeyRecord;

    fn stored(id: &str) -> Arc<StoredKey> {
        Arc::new(StoredKey {
            record: KeyRecord {
                id: KeyId::parse(id).unwrap(),
                name: "n".into(),
                owner: None,
                scopes: vec![],
                env: KeyEnv::Live,
                metadata: Default::default(),
                created_at: crate::model::now(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                successor_id: None,
                client_id: None,
            },
            hash: KeyHash::of("x"),
        })
    }

    fn id(text: &str) -> KeyId {
        KeyId::parse(text).unwrap()
    }

    #[test]
    fn untrusted_cache_always_misses() {
        let cache = KeyCache::new(10);
        cache.add_issued(&id("AAAAAAAA"));
        assert!(matches!(cache.lookup(&id("AAAAAAAA")), Lookup::Miss(_)));
        assert!(matches!(cache.lookup(&id("BBBBBBBB")), Lookup::Miss(_)));
    }

    #[test]
    fn trusted_cache_filters_unissued_ids() {
        let cache = KeyCache::new(10);
        cache.resync(&[id("AAAAAAAA")]);
        assert!(matches!(cache.lookup(&id("BBBBBBBB")), Lookup::NeverIssued));
        let Lookup::Miss(epoch) = cache.lookup(&id("AAAAAAAA")) else {
            panic!("issued id must miss before its first load");
        };
        cache.insert(stored("AAAAAAAA"), epoch);
        assert!(matches!(cache.lookup(&id("AAAAAAAA")), Lookup::Hit(_)));
    }

    #[test]
    fn insert_after_invalidation_is_dropped() {
        let cache = KeyCache::new(10);
        cache.resync(&[id("AAAAAAAA")]);
        let Lookup::Miss(epoch) = cache.lookup(&id("AAAAAAAA")) else {
            panic!("expected a miss");
        };
        cache.invalidate(&id("AAAAAAAA"));
        cache.insert(stored("AAAAAAAA"), epoch);
        assert!(
            cache.is_empty(),
            "a load that raced with a change must not be cached"
        );
    }

    #[test]
    fn distrust_stops_hits_until_resync() {
        let cache = KeyCache::new(10);
        cache.resync(&[id("AAAAAAAA")]);
        let Lookup::Miss(epoch) = cache.lookup(&id("AAAAAAAA")) else {
            panic!("expected a miss");
        };
        cache.insert(stored("AAAAAAAA"), epoch);
        cache.distrust();
        assert!(matches!(cache.lookup(&id("AAAAAAAA")), Lookup::Miss(_)));
        assert!(
            cache
                .stale(&id("AAAAAAAA"), Duration::from_secs(60))
                .is_some()
        );
        assert!(cache.stale(&id("AAAAAAAA"), Duration::ZERO).is_none());
        cache.resync(&[id("AAAAAAAA")]);
        assert!(
            matches!(cache.lookup(&id("AAAAAAAA")), Lookup::Miss(_)),
            "resync empties"
        );
    }

    #[test]
    fn capacity_bounds_entries() {
        let cache = KeyCache::new(2);
        let ids = ["AAAAAAAA", "BBBBBBBB", "CCCCCCCC"];
        cache.resync(&ids.map(id));
        for text in ids {
            let Lookup::Miss(epoch) = cache.lookup(&id(text)) else {
                panic!("expected a miss");
            };
            cache.insert(stored(text), epoch);
        }
        assert_eq!(cache.len(), 2);
    }
}
