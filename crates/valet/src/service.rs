//! The key lifecycle: create, verify, roll, revoke and update, on top of any [`KeyStore`].
//!
//! Both the HTTP API and the CLI call this module, so every rule about keys (which checks
//! come first, what a roll changes, what counts as use) lives here once.

use std::sync::Arc;

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::cache::{CacheSync, ClientCache, DenyList, KeyCache, Lookup};
use crate::key::{KeyEnv, KeyFormat, KeyHash, KeyId, RawKey};
use crate::metrics::Metrics;
use crate::model::{
    self, InvalidField, KeyName, KeyRecord, KeyUpdate, Metadata, NewKeyRecord, Owner, Scopes,
    StoredKey, Successor,
};
use crate::redact::redact_keys;
use crate::store::{GuardedStore, KeyPage, KeyStore, ListQuery, RollOutcome, StoreError};
use crate::throttle::{FailureCounter, ThrottleConfig, Throttled};
use crate::usage::UsageTracker;

/// Grace period a rolled key keeps when the caller names none.
pub const DEFAULT_GRACE: Duration = Duration::hours(24);
/// Maximum grace period of a roll.
pub const MAX_GRACE: Duration = Duration::days(7);
/// How many fresh ids a create tries before giving up on collisions.
const ID_ATTEMPTS: usize = 4;

/// Outcome of verifying a presented key.
///
/// A word wide, so that moving a [`Verification`] through the async calls of a
/// verification copies whole words. With one byte, the 7 bytes after it in a
/// `Result<Verification, ServiceError>` were copied as two overlapping 4-byte halves. Each
/// such copy stalled store forwarding, several times per verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u64)]
pub enum VerifyCode {
    Valid,
    Malformed,
    NotFound,
    Expired,
    Revoked,
    InsufficientScope,
}

impl VerifyCode {
    /// Every code, in a fixed order for counters and reports.
    pub const ALL: [VerifyCode; 6] = [
        Self::Valid,
        Self::Malformed,
        Self::NotFound,
        Self::Expired,
        Self::Revoked,
        Self::InsufficientScope,
    ];

    /// Returns the code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Malformed => "MALFORMED",
            Self::NotFound => "NOT_FOUND",
            Self::Expired => "EXPIRED",
            Self::Revoked => "REVOKED",
            Self::InsufficientScope => "INSUFFICIENT_SCOPE",
        }
    }

    pub(crate) fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|c| *c == self)
            .expect("code is listed")
    }
}

/// Result of a verification. `key` is set whenever the id was found and the secret matched.
#[derive(Clone, Debug)]
pub struct Verification {
    pub code: VerifyCode,
    pub key: Option<VerifiedKey>,
    /// Reason the key is not valid, in words safe to show its holder.
    pub message: Option<String>,
}

/// The key that a presented string matched, shared with the cache rather than copied, so
/// that a verification allocates nothing for it.
///
/// It dereferences to the stored [`KeyRecord`], whose `last_used_at` is the stored value.
/// [`VerifiedKey::last_used_at`] adds the uses not yet written, this one included when the
/// key is valid.
#[derive(Clone, Debug)]
pub struct VerifiedKey {
    stored: Arc<StoredKey>,
    /// In microseconds since the Unix epoch, so that a valid key's verification builds no
    /// calendar date unless a caller asks for one.
    last_used_at: Option<i64>,
}

impl VerifiedKey {
    /// Returns when the key was last used, counting uses not yet written to the store.
    pub fn last_used_at(&self) -> Option<OffsetDateTime> {
        self.last_used_at.and_then(model::from_micros)
    }

    /// Copies the record with [`VerifiedKey::last_used_at`] in place of the stored value.
    pub fn to_record(&self) -> KeyRecord {
        KeyRecord {
            last_used_at: self.last_used_at(),
            ..self.stored.record.clone()
        }
    }
}

impl std::ops::Deref for VerifiedKey {
    type Target = KeyRecord;

    fn deref(&self) -> &KeyRecord {
        &self.stored.record
    }
}

impl Verification {
    fn fail(code: VerifyCode, key: Option<VerifiedKey>, message: impl Into<String>) -> Self {
        Self {
            code,
            key,
            message: Some(message.into()),
        }
    }
}

/// Validated input for a new key.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: KeyName,
    pub owner: Option<Owner>,
    pub scopes: Scopes,
    pub env: KeyEnv,
    pub metadata: Metadata,
    pub expires_at: Option<OffsetDateTime>,
    /// The OAuth client whose secret this key is, if any.
    pub client_id: Option<String>,
}

/// A key just created, the only value that ever contains its raw form.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: KeyRecord,
    pub raw: RawKey,
}

/// A roll's new key and the old key with its shortened expiry.
#[derive(Debug)]
pub struct RolledKey {
    pub successor: CreatedKey,
    pub previous: KeyRecord,
}

/// Failure of a lifecycle operation.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("key {0} not found")]
    NotFound(KeyId),
    #[error("client {0} not found")]
    ClientNotFound(String),
    #[error(
        "key {id} was already rolled; its successor is {successor}: roll the successor instead"
    )]
    AlreadyRolled { id: KeyId, successor: KeyId },
    #[error("key {0} is revoked and cannot be rolled: create a new key instead")]
    RollRevoked(KeyId),
    #[error("key {0} has expired and cannot be rolled: create a new key instead")]
    RollExpired(KeyId),
    #[error(transparent)]
    InvalidField(#[from] InvalidField),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not draw random bytes from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("could not find a free key id after {ID_ATTEMPTS} attempts")]
    IdExhausted,
    #[error("{0} kept changing during the update; send the update again")]
    Contended(String),
    #[error(
        "too many failed attempts named key {id}; retry after {} seconds",
        throttled.retry_after_seconds()
    )]
    Throttled { id: KeyId, throttled: Throttled },
}

/// Tuning of the verification cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Maximum number of keys held in memory.
    pub capacity: usize,
    /// How long cached keys may still be served while the store is unreachable; zero
    /// fails closed at once.
    pub stale_if_error: std::time::Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            stale_if_error: std::time::Duration::ZERO,
        }
    }
}

/// The key lifecycle over one store.
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    format: KeyFormat,
    usage: Arc<UsageTracker>,
    cache: Arc<KeyCache>,
    denied: Arc<DenyList>,
    clients: Arc<ClientCache>,
    cache_config: CacheConfig,
    metrics: Arc<Metrics>,
    /// Failed verifications per key id: a known id presented with a wrong secret.
    key_failures: FailureCounter<KeyId>,
}

impl KeyService {
    /// Creates a service with the default cache settings.
    pub fn new(store: Arc<dyn KeyStore>, format: KeyFormat) -> Self {
        Self::with_cache(store, format, CacheConfig::default())
    }

    /// Creates a service whose store calls are counted in its metrics.
    ///
    /// The cache stays untrusted, so every verification reads the store, until
    /// [`KeyService::spawn_change_feed`] has connected the store's change feed.
    pub fn with_cache(
        store: Arc<dyn KeyStore>,
        format: KeyFormat,
        cache_config: CacheConfig,
    ) -> Self {
        let metrics = Metrics::new();
        let store: Arc<dyn KeyStore> = Arc::new(GuardedStore::new(store, metrics.clone()));
        Self {
            store,
            format,
            usage: Arc::new(UsageTracker::default()),
            cache: Arc::new(KeyCache::new(cache_config.capacity)),
            denied: Arc::new(DenyList::default()),
            clients: Arc::new(ClientCache::default()),
            cache_config,
            metrics,
            key_failures: FailureCounter::new(
                ThrottleConfig::default().max_failures_per_key,
                ThrottleConfig::default().window,
            ),
        }
    }

    /// Sets the failed-attempt limit per key id from `config`.
    pub fn with_key_throttle(mut self, config: &ThrottleConfig) -> Self {
        self.key_failures = FailureCounter::new(config.max_failures_per_key, config.window);
        self
    }

    /// Follows the store's change feed in a background task until `stop` changes, so the
    /// cache can serve verifications.
    pub fn spawn_change_feed(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let sink = Arc::new(CacheSync {
            cache: self.cache.clone(),
            denied: self.denied.clone(),
            clients: self.clients.clone(),
            metrics: self.metrics.clone(),
        });
        let store = self.store.clone();
        tokio::spawn(async move { store.follow_changes(sink, stop).await })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn cache(&self) -> &Arc<KeyCache> {
        &self.cache
    }

    /// Returns the cache of OAuth clients.
    pub fn client_cache(&self) -> &Arc<ClientCache> {
        &self.clients
    }

    /// Returns the ids of access tokens revoked before they expired, as the feed reports
    /// them.
    pub fn denied_tokens(&self) -> &Arc<DenyList> {
        &self.denied
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    pub fn usage(&self) -> &Arc<UsageTracker> {
        &self.usage
    }

    /// Creates a key and returns it with its raw form, which is never available again.
    pub async fn create(&self, mut new: NewKey) -> Result<CreatedKey, ServiceError> {
        self.reject_key_like_scopes(&new.scopes)?;
        let now = model::now();
        new.expires_at = new
            .expires_at
            .map(|at| model::parse_expiry(at, now))
            .transpose()?;
        let created = self.insert_fresh(new, now).await?;
        self.cache.add_issued(&created.record.id);
        tracing::info!(key_id = %created.record.id, env = %created.record.env, "created key");
        Ok(created)
    }

    /// Inserts `new` under a fresh random id, drawing again on the rare collision.
    async fn insert_fresh(
        &self,
        new: NewKey,
        now: OffsetDateTime,
    ) -> Result<CreatedKey, ServiceError> {
        for _ in 0..ID_ATTEMPTS {
            let (record, raw) = self.new_record(&new, now)?;
            match self.store.insert_key(&record).await {
                Ok(record) => return Ok(CreatedKey { record, raw }),
                Err(StoreError::IdTaken) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ServiceError::IdExhausted)
    }

    fn new_record(
        &self,
        new: &NewKey,
        now: OffsetDateTime,
    ) -> Result<(NewKeyRecord, RawKey), ServiceError> {
        let id = KeyId::generate().map_err(ServiceError::Random)?;
        let raw = self
            .format
            .generate(new.env, &id)
            .map_err(ServiceError::Random)?;
        let hash = KeyHash::of(raw.expose());
        let record = NewKeyRecord {
            id,
            hash,
            name: new.name.clone(),
            owner: new.owner.clone(),
            scopes: new.scopes.clone(),
            env: new.env,
            metadata: new.metadata.clone(),
            created_at: now,
            expires_at: new.expires_at,
            client_id: new.client_id.clone(),
        };
        Ok((record, raw))
    }

    /// Verifies a presented key and checks that it has every scope in `required`.
    ///
    /// Checks run from cheapest to dearest: format and checksum without I/O, then the id
    /// lookup, and only for a known id the SHA-256 and constant-time comparison.
    pub async fn verify(
        &self,
        presented: &str,
        required: &Scopes,
    ) -> Result<Verification, ServiceError> {
        let verification = self.check(presented, required).await?;
        self.metrics.verification(verification.code);
        if verification.code != VerifyCode::Valid {
            tracing::debug!(code = verification.code.as_str(), "verification failed");
        }
        Ok(verification)
    }

    async fn check(
        &self,
        presented: &str,
        required: &Scopes,
    ) -> Result<Verification, ServiceError> {
        let parsed = match self.format.parse(presented) {
            Ok(parsed) => parsed,
            Err(err) => {
                return Ok(Verification::fail(
                    VerifyCode::Malformed,
                    None,
                    err.to_string(),
                ));
            }
        };
        let id = parsed.id();
        // Checked before the store and the hash, so a throttled id costs nothing more.
        if let Err(throttled) = self.key_failures.check(&id) {
            return Err(ServiceError::Throttled { id, throttled });
        }
        let Some(stored) = self.load_for_verify(&id).await? else {
            return Ok(not_found());
        };
        if !stored.hash.matches(&parsed.hash()) {
            if self.key_failures.record(&id) {
                tracing::warn!(
                    key_id = %id,
                    "key id reached the failed-attempt limit; verifications naming it get 429 \
                     until the window closes"
                );
            }
            return Ok(not_found());
        }

        let now = model::now_micros();
        let record = &stored.record;
        let failure = if let Some(at) = record.revoked_at {
            Some((
                VerifyCode::Revoked,
                format!("key was revoked at {}", rfc3339(at)),
            ))
        } else if let Some(at) = record.expires_at.filter(|_| record.is_expired(now)) {
            Some((
                VerifyCode::Expired,
                format!("key expired at {}", rfc3339(at)),
            ))
        } else {
            record.missing_scope(required).map(|missing| {
                let scope = redact_keys(missing.as_str(), self.format.prefix().as_str());
                let message = format!("key lacks the required scope `{scope}`");
                (VerifyCode::InsufficientScope, message)
            })
        };
        if let Some((code, message)) = failure {
            let last_used_at = self.last_used_at(record).map(model::to_micros);
            let key = VerifiedKey {
                stored,
                last_used_at,
            };
            return Ok(Verification::fail(code, Some(key), message));
        }

        self.usage.record(&record.id, now);
        Ok(Verification {
            code: VerifyCode::Valid,
            key: Some(VerifiedKey {
                stored,
                last_used_at: Some(now),
            }),
            message: None,
        })
    }

    /// Finds the key with `id` in the cache, or in the store after a miss.
    ///
    /// Never-issued ids stop at the id filter. When the store is unreachable, a cached copy
    /// is served only within the stale-if-error window; otherwise the error fails closed.
    async fn load_for_verify(&self, id: &KeyId) -> Result<Option<Arc<StoredKey>>, ServiceError> {
        let epoch = match self.cache.lookup(id) {
            Lookup::NeverIssued => {
                self.metrics.id_filter_rejection();
                return Ok(None);
            }
            Lookup::Hit(stored) => {
                self.metrics.cache_hit();
                return Ok(Some(stored));
            }
            Lookup::Miss(epoch) => epoch,
        };

        self.metrics.cache_miss();
        match self.store.find_key(id).await {
            Ok(Some(stored)) => {
                let stored = Arc::new(stored);
                self.cache.insert(stored.clone(), epoch);
                Ok(Some(stored))
            }
            Ok(None) => Ok(None),
            Err(StoreError::Unavailable(cause)) => {
                match self.cache.stale(id, self.cache_config.stale_if_error) {
                    Some(stored) => {
                        tracing::debug!(key_id = %id, "store unavailable; serving a stale cached key");
                        Ok(Some(stored))
                    }
                    None => Err(StoreError::Unavailable(cause).into()),
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Loads one key.
    pub async fn get(&self, id: &KeyId) -> Result<KeyRecord, ServiceError> {
        let stored = self
            .store
            .find_key(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        let mut record = stored.record;
        self.overlay_usage(&mut record);
        Ok(record)
    }

    /// Lists keys newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<KeyPage, ServiceError> {
        let mut page = self.store.list_keys(query).await?;
        for record in &mut page.keys {
            self.overlay_usage(record);
        }
        Ok(page)
    }

    /// Changes name, owner, scopes or metadata.
    pub async fn update(&self, id: &KeyId, update: KeyUpdate) -> Result<KeyRecord, ServiceError> {
        if let Some(scopes) = &update.scopes {
            self.reject_key_like_scopes(scopes)?;
        }
        let mut record = self
            .store
            .update_key(id, &update)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        self.cache.invalidate(id);
        self.overlay_usage(&mut record);
        tracing::info!(key_id = %id, "updated key");
        Ok(record)
    }

    /// Revokes a key at once. Revoking a revoked key changes nothing and succeeds.
    pub async fn revoke(&self, id: &KeyId) -> Result<KeyRecord, ServiceError> {
        let mut record = self
            .store
            .revoke_key(id, model::now())
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.clone()))?;
        self.cache.invalidate(id);
        self.overlay_usage(&mut record);
        tracing::info!(key_id = %id, "revoked key");
        Ok(record)
    }

    /// Issues a successor with the same name, owner, scopes, env and metadata, and lets the
    /// old key live until the earlier of its own expiry and now plus `grace`.
    pub async fn roll(
        &self,
        id: &KeyId,
        grace: Duration,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<RolledKey, ServiceError> {
        let now = model::now();
        let expires_at = check_roll(grace, expires_at, now)?;
        // Only the env is read ahead, to generate the raw key; it never changes after
        // creation. Everything else is copied inside the store's transaction.
        let env = self.get(id).await?.env;

        for _ in 0..ID_ATTEMPTS {
            let successor_id = KeyId::generate().map_err(ServiceError::Random)?;
            let raw = self
                .format
                .generate(env, &successor_id)
                .map_err(ServiceError::Random)?;
            let successor = Successor {
                hash: KeyHash::of(raw.expose()),
                id: successor_id,
                env,
                created_at: now,
                expires_at,
            };
            let outcome = match self.store.roll_key(id, &successor, now + grace).await {
                Err(StoreError::IdTaken) => continue,
                other => other?,
            };
            return match outcome {
                RollOutcome::Rolled {
                    previous,
                    successor,
                } => {
                    self.cache.invalidate(id);
                    self.cache.add_issued(&successor.id);
                    tracing::info!(key_id = %id, successor_id = %successor.id, "rolled key");
                    Ok(RolledKey {
                        successor: CreatedKey {
                            record: successor,
                            raw,
                        },
                        previous,
                    })
                }
                RollOutcome::NotFound => Err(ServiceError::NotFound(id.clone())),
                RollOutcome::AlreadyRolled(record) => Err(ServiceError::AlreadyRolled {
                    id: id.clone(),
                    successor: record.successor_id.expect("a rolled key has a successor"),
                }),
                RollOutcome::Revoked(_) => Err(ServiceError::RollRevoked(id.clone())),
                RollOutcome::Expired(_) => Err(ServiceError::RollExpired(id.clone())),
            };
        }
        Err(ServiceError::IdExhausted)
    }

    /// Creates a key with scope `admin` when the store contains no key at all, so that a new
    /// installation can be managed over HTTP. Of several processes that start at once on
    /// one empty store, exactly one creates it.
    pub async fn bootstrap_admin(&self) -> Result<Option<CreatedKey>, ServiceError> {
        if self.store.count_keys().await? > 0 {
            return Ok(None);
        }
        let new = NewKey {
            name: KeyName::parse("bootstrap admin")?,
            owner: None,
            scopes: Scopes::parse("scopes", &["admin"])?,
            env: KeyEnv::Live,
            metadata: Metadata::default(),
            expires_at: None,
            client_id: None,
        };
        // An empty store cannot have the fresh id, so there is no collision to retry.
        let (record, raw) = self.new_record(&new, model::now())?;
        let Some(record) = self.store.insert_first_key(&record).await? else {
            tracing::info!("another process created the first key; no bootstrap key created");
            return Ok(None);
        };
        self.cache.add_issued(&record.id);
        tracing::info!(key_id = %record.id, "created bootstrap admin key on empty store");
        Ok(Some(CreatedKey { record, raw }))
    }

    /// Rejects scopes that could be key material, so that a key pasted into the wrong
    /// field is never stored and shown back in lists.
    fn reject_key_like_scopes(&self, scopes: &Scopes) -> Result<(), InvalidField> {
        let prefix = self.format.prefix().as_str();
        for (index, scope) in scopes.iter().enumerate() {
            if redact_keys(scope.as_str(), prefix) != scope.as_str() {
                return Err(InvalidField::new(
                    "scopes",
                    format!(
                        "item {index} looks like an API key; a scope is a name such as orders:read"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn overlay_usage(&self, record: &mut KeyRecord) {
        record.last_used_at = self.last_used_at(record);
    }

    /// Returns the later of the stored `last_used_at` and a use not yet written.
    fn last_used_at(&self, record: &KeyRecord) -> Option<OffsetDateTime> {
        match self.usage.pending(&record.id) {
            Some(at) => Some(record.last_used_at.map_or(at, |stored| stored.max(at))),
            None => record.last_used_at,
        }
    }
}

/// Checks a roll's grace period, 0 to 7 days, and the successor's requested expiry, which
/// it returns in UTC as [`model::parse_expiry`] does.
pub fn check_roll(
    grace: Duration,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, InvalidField> {
    if grace.is_negative() || grace > MAX_GRACE {
        return Err(InvalidField::new(
            "grace_period_seconds",
            format!(
                "must be between 0 and {} seconds (7 days)",
                MAX_GRACE.whole_seconds()
            ),
        ));
    }
    expires_at
        .map(|at| model::parse_expiry(at, now))
        .transpose()
}

fn not_found() -> Verification {
    Verification::fail(
        VerifyCode::NotFound,
        None,
        "no key matches: the id is unknown or the secret is wrong",
    )
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}
