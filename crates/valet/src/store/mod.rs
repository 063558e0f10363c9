//! The storage boundary: the [`KeyStore`] trait and the backends that implement it.
//!
//! The service layer talks only to this trait, so a backend can be added without touching
//! verification or HTTP code. Backends store hashes, never raw keys.

mod breaker;
mod guarded;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::key::{KeyHash, KeyId, base62};
use crate::model::{KeyRecord, KeyUpdate, NewKeyRecord, StoredKey, Successor};
use crate::oauth::client::ClientRecord;
use crate::oauth::signing::SigningKeyRecord;

pub use guarded::GuardedStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// First wait before reconnecting a lost change feed; it doubles up to
/// [`MAX_FEED_BACKOFF`].
const FIRST_FEED_BACKOFF: Duration = Duration::from_millis(100);
/// Maximum wait between attempts to reconnect a lost change feed.
const MAX_FEED_BACKOFF: Duration = Duration::from_secs(5);

/// Failure of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not respond in time, so a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A generated key id collided with an existing one.
    #[error("key id already exists")]
    IdTaken,
    /// A row could not be read back into a key; the message names the id and column.
    #[error("stored key {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    /// Any other database error.
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("could not take the migration lock beside the store file {0}")]
    MigrationLock(String),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("no store at {0}: run `valet serve` once to create it, or check --database-url")]
    Missing(String),
}

impl StoreError {
    /// Returns whether the store could not be reached at all: no connection, a lost
    /// connection, or a server that is shutting down or starting. A busy SQLite file or a
    /// failed query reached the store, so it is not unreachable.
    pub fn is_unreachable(&self) -> bool {
        let Self::Unavailable(cause) = self else {
            return false;
        };
        match cause {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            sqlx::Error::Database(ref db) if db.is_unique_violation() => Self::IdTaken,
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), in their primary or extended form:
            // another process held the write lock past the busy timeout.
            sqlx::Error::Database(ref db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6)) =>
            {
                Self::Unavailable(err)
            }
            // SQLSTATE class 08 is a connection exception; 57P01 to 57P05 mean the server
            // is shutting down, starting up or unreachable.
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")) =>
            {
                Self::Unavailable(err)
            }
            other => Self::Query(other),
        }
    }
}

/// Position in the list of keys, newest first. Clients treat it as an opaque string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(i64);

impl Cursor {
    /// Wraps a store sequence number.
    pub fn new(seq: i64) -> Self {
        Self(seq)
    }

    /// Returns the store sequence number this cursor continues after.
    pub fn seq(self) -> i64 {
        self.0
    }

    /// Parses a cursor from a previous page's `next_cursor`.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != 11 {
            return None;
        }
        let seq = base62::decode(text)?;
        i64::try_from(seq).ok().map(Self)
    }

    /// Writes the cursor as 11 base62 digits.
    pub fn encode(self) -> String {
        base62::encode_fixed(self.0 as u64, 11).expect("an i64 fits in 11 base62 digits")
    }
}

/// Filter and page position for listing keys.
#[derive(Clone, Debug)]
pub struct ListQuery {
    pub owner: Option<String>,
    pub limit: u32,
    pub after: Option<Cursor>,
}

/// One page of keys, newest first.
#[derive(Clone, Debug)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    pub next_cursor: Option<Cursor>,
}

/// The result of a roll, decided inside the store's transaction.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per roll and consumed at once; boxing buys nothing"
)]
pub enum RollOutcome {
    Rolled {
        previous: KeyRecord,
        successor: KeyRecord,
    },
    NotFound,
    AlreadyRolled(KeyRecord),
    Revoked(KeyRecord),
    Expired(KeyRecord),
}

/// Kind of change to a key row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Inserted,
    Updated,
    Deleted,
}

impl ChangeKind {
    /// Parses the one-letter code that the store's triggers write: `I`, `U` or `D`.
    fn from_code(code: &str) -> Option<Self> {
        match code {
            "I" => Some(Self::Inserted),
            "U" => Some(Self::Updated),
            "D" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One change to a key, as the change feed reports it.
#[derive(Clone, Debug)]
pub struct KeyChange {
    pub id: KeyId,
    pub kind: ChangeKind,
    /// When the store recorded the change, for measuring propagation lag.
    pub changed_at: Option<OffsetDateTime>,
}

/// One event of the change feed.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    Key(KeyChange),
    /// An access token was revoked before it expired.
    TokenRevoked {
        jti: String,
        changed_at: Option<OffsetDateTime>,
    },
    /// A client was updated or deleted.
    ClientChanged {
        client_id: String,
        changed_at: Option<OffsetDateTime>,
    },
}

/// Receiver of a store's change feed.
pub trait ChangeSink: Send + Sync {
    /// Starts a trusted period: the feed is connected, `ids` is every key id and
    /// `revoked_jtis` every unexpired revoked token id that existed when it connected.
    /// Changes after that arrive through [`ChangeSink::apply`].
    fn resync(&self, ids: Vec<KeyId>, revoked_jtis: Vec<String>);

    /// Applies one change made by any node or process.
    fn apply(&self, event: FeedEvent);

    /// Ends the trusted period: changes may have been missed from now on.
    fn lost(&self, reason: &str);

    /// Counts a query that the feed sent to the store.
    fn query_sent(&self, operation: &'static str);
}

impl RollOutcome {
    /// Classifies why `current`, read after a failed roll, could not be rolled.
    fn refused(current: KeyRecord) -> Self {
        if current.successor_id.is_some() {
            Self::AlreadyRolled(current)
        } else if current.revoked_at.is_some() {
            Self::Revoked(current)
        } else {
            Self::Expired(current)
        }
    }
}

/// Persistent storage for keys.
///
/// Every method is one atomic operation. Implementations must never store a raw key.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Returns a short backend name for logs, such as `sqlite`.
    fn backend(&self) -> &'static str;

    /// Closes every connection; pending writes are complete when this returns.
    async fn close(&self);

    /// Checks that the store responds to a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts all keys, in any state.
    async fn count_keys(&self) -> Result<u64, StoreError>;

    /// Inserts a key; fails with [`StoreError::IdTaken`] when its id exists.
    async fn insert_key(&self, key: &NewKeyRecord) -> Result<KeyRecord, StoreError>;

    /// Inserts a key only if the store contains no key at all, and returns `None` if it
    /// does. The check and the insert are one step for every process on the store, so of
    /// several nodes that start at once on an empty store, exactly one inserts.
    async fn insert_first_key(&self, key: &NewKeyRecord) -> Result<Option<KeyRecord>, StoreError>;

    /// Loads a key and its hash by id.
    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError>;

    /// Lists keys newest first.
    async fn list_keys(&self, query: &ListQuery) -> Result<KeyPage, StoreError>;

    /// Applies `update`; returns `None` when the id is unknown.
    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Sets `revoked_at` to `at` unless the key is revoked already; returns `None` when the
    /// id is unknown.
    async fn revoke_key(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// In one transaction, inserts `successor` with the old key's name, owner, scopes, env
    /// and metadata, and moves the old key's expiry to the earlier of its current expiry
    /// and `grace_until`, recording the successor's id.
    ///
    /// Only a key that is neither revoked, expired at `successor.created_at`, nor rolled
    /// already can be rolled. Otherwise nothing changes and the outcome names the reason.
    async fn roll_key(
        &self,
        id: &KeyId,
        successor: &Successor,
        grace_until: OffsetDateTime,
    ) -> Result<RollOutcome, StoreError>;

    /// Raises `last_used_at` of each key to the given time; never lowers it.
    async fn record_usage(&self, usage: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Inserts a client; fails with [`StoreError::IdTaken`] when its id exists.
    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError>;

    /// Loads a client by id.
    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Lists clients, newest first.
    async fn list_clients(
        &self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<ClientRecord>, Option<Cursor>), StoreError>;

    /// Overwrites every field of the client with `client.id` except its creation time, and
    /// counts up its version, when the stored version is still `client.version`. Returns
    /// `false` when the id is unknown or another update came first.
    async fn replace_client(&self, client: &ClientRecord) -> Result<bool, StoreError>;

    /// In one transaction, revokes every secret of the client at `at` and deletes it;
    /// returns `false` when the id is unknown.
    async fn delete_client(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Loads every signing key that is not retired.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Stores `key` only if no stored key can sign now, and returns whether it did. The
    /// check and the insert are one step for every process on the store, so of several
    /// nodes that start at once on a store without a signing key, exactly one creates it.
    /// "Now" is read after the lock, with [`SIGNING_CLOCK_SLACK`] for nodes whose clocks
    /// differ.
    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError>;

    /// In one transaction, stores `key` and sets `retired_at` of every other unretired
    /// key to `retire_at`.
    async fn rotate_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Records that the access token `jti`, issued to `client_id`, is revoked until it
    /// expires at `expires_at`. Revoking it again changes nothing.
    async fn revoke_token(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Records the client assertion `jti` of `client_id` until `expires_at`; returns
    /// `false` when it was recorded before, which makes the assertion a replay.
    async fn record_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Returns whether the access token `jti` is revoked.
    async fn is_token_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    /// Feeds every change to a key, made by any node or process, to `sink` until `stop`
    /// changes. Reconnects by itself after a failure and then calls
    /// [`ChangeSink::resync`] again.
    async fn follow_changes(&self, sink: Arc<dyn ChangeSink>, stop: watch::Receiver<bool>);
}

/// Sleeps for `backoff` and doubles it up to [`MAX_FEED_BACKOFF`]; returns `false` when
/// `stop` changed meanwhile.
async fn wait_to_reconnect(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_FEED_BACKOFF);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// Starts the list query that both backends share: the filters of `query`, newest first,
/// and one row more than a page, which shows whether another page follows.
fn list_query<DB>(query: &ListQuery) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    DB::Arguments: Default,
    for<'args> String: sqlx::Encode<'args, DB> + sqlx::Type<DB>,
    for<'args> i64: sqlx::Encode<'args, DB> + sqlx::Type<DB>,
{
    let mut builder =
        sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM api_keys WHERE 1 = 1"));
    if let Some(owner) = &query.owner {
        builder.push(" AND owner = ").push_bind(owner.clone());
    }
    if let Some(after) = query.after {
        builder.push(" AND seq < ").push_bind(after.seq());
    }
    builder
        .push(" ORDER BY seq DESC LIMIT ")
        .push_bind(i64::from(query.limit) + 1);
    builder
}

/// Turns the rows of [`list_query`] into a page, reading each with `read`.
fn page_from_rows<R>(
    rows: &[R],
    limit: u32,
    read: impl Fn(&R) -> Result<KeyRecord, StoreError>,
) -> Result<KeyPage, StoreError>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let more = rows.len() > limit as usize;
    let mut keys = Vec::with_capacity(rows.len());
    let mut last_seq = None;
    for row in rows.iter().take(limit as usize) {
        keys.push(read(row)?);
        last_seq = Some(row.try_get::<i64, _>("seq")?);
    }
    let next_cursor = if more {
        last_seq.map(Cursor::new)
    } else {
        None
    };
    Ok(KeyPage { keys, next_cursor })
}

/// Reads a key and its hash from a row of [`COLUMNS`], reading the key with `read`.
fn stored_key_from_row<R>(
    row: &R,
    read: impl Fn(&R) -> Result<KeyRecord, StoreError>,
) -> Result<StoredKey, StoreError>
where
    R: sqlx::Row,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let record = read(row)?;
    let hash_bytes: Vec<u8> = row.try_get("key_hash")?;
    let hash = KeyHash::from_slice(&hash_bytes).ok_or_else(|| StoreError::Corrupt {
        id: record.id.to_string(),
        reason: "key_hash is not 32 bytes".into(),
    })?;
    Ok(StoredKey { record, hash })
}

/// Columns of `oauth_clients` that every read selects, in both backends.
const CLIENT_COLUMNS: &str = "seq, id, name, owner, scopes, audiences, default_audience, \
                              token_lifetime_seconds, created_at, jwks, version";

/// Turns rows of clients, newest first with one extra row, into a page.
fn client_page<R>(
    rows: &[R],
    limit: u32,
    read: impl Fn(&R) -> Result<ClientRecord, StoreError>,
) -> Result<(Vec<ClientRecord>, Option<Cursor>), StoreError>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let more = rows.len() > limit as usize;
    let mut clients = Vec::with_capacity(rows.len());
    let mut last_seq = None;
    for row in rows.iter().take(limit as usize) {
        clients.push(read(row)?);
        last_seq = Some(row.try_get::<i64, _>("seq")?);
    }
    let next = if more {
        last_seq.map(Cursor::new)
    } else {
        None
    };
    Ok((clients, next))
}

/// How far ahead of this node's clock another node's new signing key may start to sign and
/// still count as a key that signs now, for [`KeyStore::insert_first_signing_key`].
pub const SIGNING_CLOCK_SLACK: time::Duration = time::Duration::minutes(1);

/// Columns of `api_keys` that every read selects, in both backends.
const COLUMNS: &str = "seq, id, key_hash, name, owner, scopes, env, metadata, created_at, \
                       expires_at, revoked_at, last_used_at, successor_id, client_id";

/// Opens the store that `url` names and applies its migrations. A missing SQLite file is
/// created only when `create` is set.
pub async fn connect(url: &str, create: bool) -> Result<Arc<dyn KeyStore>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::connect(url, create).await?));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::UnsupportedUrl(format!(
        "scheme `{scheme}` is not supported; use sqlite://PATH or postgres://USER@HOST/DATABASE"
    )))
}

/// Returns `url` with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        for seq in [0, 1, 99, i64::MAX] {
            let cursor = Cursor::new(seq);
            assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://valet:s3cret@db:5432/valet"),
            "postgres://valet:***@db:5432/valet"
        );
        assert_eq!(redact_url("postgres://db/valet"), "postgres://db/valet");
        assert_eq!(redact_url("sqlite://valet.db"), "sqlite://valet.db");
    }

    #[test]
    fn cursor_decode_rejects_garbage() {
        for bad in ["", "abc", "zzzzzzzzzzz", "0000000000-"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
