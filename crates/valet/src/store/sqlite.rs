//! The embedded SQLite backend, the default store.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite};
use time::OffsetDateTime;

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    CLIENT_COLUMNS, COLUMNS, ChangeKind, ChangeSink, Cursor, FIRST_FEED_BACKOFF, FeedEvent,
    KeyChange, KeyPage, KeyStore, ListQuery, RollOutcome, StoreError, client_page, list_query,
    page_from_rows, stored_key_from_row, wait_to_reconnect,
};
use crate::key::{KeyEnv, KeyId};
use crate::model::{
    KeyRecord, KeyUpdate, NewKeyRecord, StoredKey, Successor, from_micros, to_micros,
};
use crate::oauth::client::ClientRecord;
use crate::oauth::signing::{SigningAlgorithm, SigningKeyRecord};

/// How often a server polls `key_changes` for changes made by other processes.
const POLL_INTERVAL: Duration = std::time::Duration::from_millis(50);
/// How long rows stay in `key_changes`; a poller further behind than this resyncs.
const CHANGE_RETENTION: time::Duration = time::Duration::hours(1);
/// How often old rows are pruned from `key_changes`.
const PRUNE_INTERVAL: Duration = std::time::Duration::from_secs(60);

/// A key store in one SQLite file, in WAL mode.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `url` (`sqlite://PATH`) and applies migrations. A missing file is created
    /// only when `create` is set.
    pub async fn connect(url: &str, create: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::UnsupportedUrl(format!("invalid SQLite URL: {err}")))?;
        let path = options.get_filename().to_path_buf();
        // Each pooled connection to an in-memory database would see a database of its own.
        if path.as_os_str().is_empty()
            || path.as_os_str() == ":memory:"
            || url.contains("mode=memory")
        {
            return Err(StoreError::UnsupportedUrl(
                "in-memory SQLite is not supported: name a file, such as sqlite://valet.db".into(),
            ));
        }
        if !path.exists() {
            if !create {
                return Err(StoreError::Missing(path.display().to_string()));
            }
            tracing::warn!(path = %path.display(), "no store at this path; creating a new, empty one");
        }
        let options = options
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL syncs the WAL on every commit, so an acknowledged change survives a
            // power cut as well as a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // SQLite has no advisory lock. Processes that open a new file at the same moment
        // (a server and a CLI command, say) take turns through a lock file beside it while
        // they create the file, switch it to WAL and migrate it.
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".migrate-lock");
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|err| StoreError::MigrationLock(err.to_string()))?
        .map_err(|err| StoreError::MigrationLock(format!("{}: {err}", path.display())))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
        drop(lock);
        migrated?;
        Ok(Self { pool })
    }

    /// Inserts every key from `keys` in one transaction and returns how many it inserted.
    ///
    /// This fills a store quickly, for imports and the scale benchmark: one commit instead
    /// of one per key. Nothing is inserted when any key fails, such as on a duplicate id.
    /// A running server learns of the new keys through the change feed, like any insert.
    pub async fn insert_keys(
        &self,
        keys: impl IntoIterator<Item = NewKeyRecord>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut count = 0;
        for key in keys {
            insert(&mut *tx, &key).await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Reads the newest change number, every key id and every unexpired revoked token id
    /// in one snapshot.
    async fn snapshot_ids(&self) -> Result<(i64, Vec<KeyId>, Vec<String>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            .fetch_one(&mut *tx)
            .await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM api_keys")
            .fetch_all(&mut *tx)
            .await?;
        let revoked: Vec<String> =
            sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE expires_at > ?")
                .bind(to_micros(crate::model::now()))
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let ids = ids
            .iter()
            .map(|id| KeyId::parse(id).map_err(|_| corrupt(id, "id is not 8 base62 digits")))
            .collect::<Result<_, _>>()?;
        Ok((last, ids, revoked))
    }

    /// Reads changes numbered after `after`, oldest first.
    async fn changes_after(&self, after: i64) -> Result<Vec<(i64, FeedEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, key_id, op, changed_at FROM key_changes WHERE seq > ? ORDER BY seq LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            let id: String = row.try_get("key_id")?;
            let op: String = row.try_get("op")?;
            let changed_at: i64 = row.try_get("changed_at")?;
            let changed_at = from_micros(changed_at);
            if let Some(client_id) = id.strip_prefix("c:") {
                let event = FeedEvent::ClientChanged {
                    client_id: client_id.to_owned(),
                    changed_at,
                };
                changes.push((seq, event));
                continue;
            }
            if let Some(jti) = id.strip_prefix("t:") {
                let event = FeedEvent::TokenRevoked {
                    jti: jti.to_owned(),
                    changed_at,
                };
                changes.push((seq, event));
                continue;
            }
            let (Ok(id), Some(kind)) = (KeyId::parse(&id), ChangeKind::from_code(&op)) else {
                return Err(corrupt(&id, "key_changes row is unreadable"));
            };
            let change = KeyChange {
                id,
                kind,
                changed_at,
            };
            changes.push((seq, FeedEvent::Key(change)));
        }
        Ok(changes)
    }

    /// Follows changes from one snapshot until a poll fails, `stop` changes or a gap shows
    /// that pruned changes were missed. Returns `true` when `stop` changed.
    async fn follow_from_snapshot(
        &self,
        sink: &dyn ChangeSink,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, StoreError> {
        sink.query_sent("snapshot_ids");
        let (mut last, ids, revoked) = self.snapshot_ids().await?;
        sink.resync(ids, revoked);
        let mut last_prune = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => return Ok(true),
            }
            sink.query_sent("poll_changes");
            let changes = self.changes_after(last).await?;
            if let Some((first, _)) = changes.first()
                && *first != last + 1
            {
                tracing::warn!(
                    expected = last + 1,
                    found = first,
                    "key_changes has a gap; resynchronising"
                );
                return Ok(false);
            }
            for (seq, change) in changes {
                last = seq;
                sink.apply(change);
            }
            if last_prune.elapsed() >= PRUNE_INTERVAL {
                last_prune = std::time::Instant::now();
                sink.query_sent("prune_changes");
                sqlx::query("DELETE FROM key_changes WHERE changed_at < ?")
                    .bind(to_micros(crate::model::now() - CHANGE_RETENTION))
                    .execute(&self.pool)
                    .await?;
            }
        }
    }

    async fn fetch_record(
        executor: impl sqlx::SqliteExecutor<'_>,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(executor)
            .await?;
        row.map(|row| read_record(&row)).transpose()
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        // Closing the last connection checkpoints the WAL into the main file, so a copy of
        // valet.db alone is complete after a clean stop.
        self.pool.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn count_keys(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    async fn insert_key(&self, key: &NewKeyRecord) -> Result<KeyRecord, StoreError> {
        insert(&self.pool, key).await?;
        Self::fetch_record(&self.pool, &key.id)
            .await?
            .ok_or_else(|| corrupt(key.id.as_str(), "row missing right after insert"))
    }

    async fn insert_first_key(&self, key: &NewKeyRecord) -> Result<Option<KeyRecord>, StoreError> {
        // IMMEDIATE takes the write lock before the check, so no other connection or
        // process can insert between the check and the insert.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if store_has_keys(&mut *tx).await? {
            return Ok(None);
        }
        insert(&mut *tx, key).await?;
        let record = Self::fetch_record(&mut *tx, &key.id)
            .await?
            .ok_or_else(|| corrupt(key.id.as_str(), "row missing right after insert"))?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| stored_key_from_row(&row, read_record))
            .transpose()
    }

    async fn list_keys(&self, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let rows = list_query::<Sqlite>(query)
            .build()
            .fetch_all(&self.pool)
            .await?;
        page_from_rows(&rows, query.limit, read_record)
    }

    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(name) = &update.name {
            sqlx::query("UPDATE api_keys SET name = ? WHERE id = ?")
                .bind(name.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(owner) = &update.owner {
            sqlx::query("UPDATE api_keys SET owner = ? WHERE id = ?")
                .bind(owner.as_ref().map(|o| o.as_str()))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(scopes) = &update.scopes {
            sqlx::query("UPDATE api_keys SET scopes = ? WHERE id = ?")
                .bind(json_text(&scopes.to_strings()))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(metadata) = &update.metadata {
            sqlx::query("UPDATE api_keys SET metadata = ? WHERE id = ?")
                .bind(json_text(metadata.as_map()))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let record = Self::fetch_record(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn revoke_key(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
            .bind(to_micros(at))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Self::fetch_record(&self.pool, id).await
    }

    async fn roll_key(
        &self,
        id: &KeyId,
        successor: &Successor,
        grace_until: OffsetDateTime,
    ) -> Result<RollOutcome, StoreError> {
        let now = to_micros(successor.created_at);
        let grace_until = to_micros(grace_until);

        // The insert comes first so that the transaction takes SQLite's write lock at its
        // first statement and never has to upgrade a read snapshot. It copies the old row,
        // and inserts nothing unless the old key can be rolled.
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO api_keys
                 (id, key_hash, name, owner, scopes, env, metadata, created_at, expires_at,
                  client_id)
             SELECT ?, ?, name, owner, scopes, env, metadata, ?, ?, client_id
             FROM api_keys
             WHERE id = ? AND env = ? AND successor_id IS NULL AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(successor.id.as_str())
        .bind(successor.hash.as_bytes().as_slice())
        .bind(now)
        .bind(successor.expires_at.map(to_micros))
        .bind(id.as_str())
        .bind(successor.env.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let updated = if inserted == 1 {
            sqlx::query(
                "UPDATE api_keys
                 SET successor_id = ?,
                     expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at < ?
                                       THEN expires_at ELSE ? END
                 WHERE id = ?",
            )
            .bind(successor.id.as_str())
            .bind(grace_until)
            .bind(grace_until)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };

        if updated == 1 {
            let previous = Self::fetch_record(&mut *tx, id).await?;
            let next = Self::fetch_record(&mut *tx, &successor.id).await?;
            tx.commit().await?;
            let (Some(previous), Some(successor)) = (previous, next) else {
                return Err(corrupt(
                    id.as_str(),
                    "rolled rows missing inside transaction",
                ));
            };
            return Ok(RollOutcome::Rolled {
                previous,
                successor,
            });
        }

        tx.rollback().await?;
        let Some(current) = Self::fetch_record(&self.pool, id).await? else {
            return Ok(RollOutcome::NotFound);
        };
        Ok(RollOutcome::refused(current))
    }

    async fn record_usage(&self, usage: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in usage {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            )
            .bind(to_micros(*at))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, owner, scopes, audiences, default_audience,
                 token_lifetime_seconds, created_at, jwks)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(client.owner.as_deref())
        .bind(json_text(&client.scopes))
        .bind(json_text(&client.audiences))
        .bind(client.default_audience.as_deref())
        .bind(client.token_lifetime_seconds)
        .bind(to_micros(client.created_at))
        .bind(client.jwks.as_ref().map(|jwks| jwks.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| read_client(&row)).transpose()
    }

    async fn list_clients(
        &self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<ClientRecord>, Option<Cursor>), StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE seq < ? ORDER BY seq DESC LIMIT ?"
        )))
        .bind(after.map_or(i64::MAX, Cursor::seq))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        client_page(&rows, limit, read_client)
    }

    async fn replace_client(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE oauth_clients SET name = ?, owner = ?, scopes = ?, audiences = ?,
                 default_audience = ?, token_lifetime_seconds = ?, jwks = ?,
                 version = version + 1
             WHERE id = ? AND version = ?",
        )
        .bind(&client.name)
        .bind(client.owner.as_deref())
        .bind(json_text(&client.scopes))
        .bind(json_text(&client.audiences))
        .bind(client.default_audience.as_deref())
        .bind(client.token_lifetime_seconds)
        .bind(client.jwks.as_ref().map(|jwks| jwks.to_string()))
        .bind(&client.id)
        .bind(client.version)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn delete_client(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE client_id = ?")
            .bind(to_micros(at))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM oauth_clients WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_key, public_jwk, created_at, signs_from, retired_at
             FROM signing_keys WHERE retired_at IS NULL OR retired_at > ?
             ORDER BY signs_from, kid",
        )
        .bind(to_micros(crate::model::now()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kid: String = row.try_get("kid")?;
                let bad = |column: &str| {
                    corrupt(&kid, format!("signing key column `{column}` is invalid"))
                };
                let time = |column: &str| -> Result<Option<OffsetDateTime>, StoreError> {
                    let micros: Option<i64> = row.try_get(column)?;
                    micros
                        .map(|m| from_micros(m).ok_or_else(|| bad(column)))
                        .transpose()
                };
                let algorithm: String = row.try_get("algorithm")?;
                let jwk: String = row.try_get("public_jwk")?;
                let private_key: Vec<u8> = row.try_get("private_key")?;
                Ok(SigningKeyRecord {
                    algorithm: SigningAlgorithm::parse(&algorithm)
                        .ok_or_else(|| bad("algorithm"))?,
                    private_key: zeroize::Zeroizing::new(private_key),
                    public_jwk: serde_json::from_str(&jwk).map_err(|_| bad("public_jwk"))?,
                    created_at: time("created_at")?.ok_or_else(|| bad("created_at"))?,
                    signs_from: time("signs_from")?.ok_or_else(|| bad("signs_from"))?,
                    retired_at: time("retired_at")?,
                    kid,
                })
            })
            .collect()
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError> {
        // IMMEDIATE takes the write lock before the check, as in `insert_first_key`.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = crate::model::now();
        let can_sign: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM signing_keys
                 WHERE signs_from <= ? AND (retired_at IS NULL OR retired_at > ?))",
        )
        .bind(to_micros(now + super::SIGNING_CLOCK_SLACK))
        .bind(to_micros(now))
        .fetch_one(&mut *tx)
        .await?;
        if can_sign {
            return Ok(false);
        }
        insert_signing_key(&mut *tx, key).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
            .bind(to_micros(retire_at))
            .execute(&mut *tx)
            .await?;
        insert_signing_key(&mut *tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_token(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, client_id, expires_at, revoked_at)
             VALUES (?, ?, ?, ?) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client_id)
        .bind(to_micros(expires_at))
        .bind(to_micros(crate::model::now()))
        .execute(&self.pool)
        .await?;
        // Expired tokens are rejected anyway, so their rows can go.
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < ?")
            .bind(to_micros(crate::model::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_assertion(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO used_assertions (client_id, jti, expires_at) VALUES (?, ?, ?)
             ON CONFLICT (client_id, jti) DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(to_micros(expires_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM used_assertions WHERE expires_at < ?")
            .bind(to_micros(crate::model::now()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM revoked_tokens WHERE jti = ?")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn follow_changes(&self, sink: Arc<dyn ChangeSink>, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_FEED_BACKOFF;
        loop {
            match self.follow_from_snapshot(sink.as_ref(), &mut stop).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(err) => {
                    sink.lost(&err.to_string());
                    tracing::warn!(error = %err, "polling key_changes failed; retrying");
                    if !wait_to_reconnect(&mut backoff, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn insert(
    executor: impl sqlx::SqliteExecutor<'_>,
    key: &NewKeyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys
             (id, key_hash, name, owner, scopes, env, metadata, created_at, expires_at, client_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(key.id.as_str())
    .bind(key.hash.as_bytes().as_slice())
    .bind(key.name.as_str())
    .bind(key.owner.as_ref().map(|o| o.as_str()))
    .bind(json_text(&key.scopes.to_strings()))
    .bind(key.env.as_str())
    .bind(json_text(key.metadata.as_map()))
    .bind(to_micros(key.created_at))
    .bind(key.expires_at.map(to_micros))
    .bind(key.client_id.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

async fn store_has_keys(executor: impl sqlx::SqliteExecutor<'_>) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
        .fetch_one(executor)
        .await?)
}

fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("scopes and metadata serialize to JSON")
}

async fn insert_signing_key(
    executor: impl sqlx::SqliteExecutor<'_>,
    key: &SigningKeyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_keys
             (kid, algorithm, private_key, public_jwk, created_at, signs_from, retired_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.kid)
    .bind(key.algorithm.as_str())
    .bind(key.private_key.as_slice())
    .bind(key.public_jwk.to_string())
    .bind(to_micros(key.created_at))
    .bind(to_micros(key.signs_from))
    .bind(key.retired_at.map(to_micros))
    .execute(executor)
    .await?;
    Ok(())
}

fn corrupt(id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

fn read_record(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let id_text: String = row.try_get("id")?;
    let bad = |column: &str| {
        corrupt(
            &id_text,
            format!("column `{column}` holds an invalid value"),
        )
    };
    let time = |column: &str| -> Result<Option<OffsetDateTime>, StoreError> {
        let micros: Option<i64> = row.try_get(column)?;
        micros
            .map(|m| from_micros(m).ok_or_else(|| bad(column)))
            .transpose()
    };

    let id = KeyId::parse(&id_text).map_err(|_| bad("id"))?;
    let scopes_text: String = row.try_get("scopes")?;
    let metadata_text: String = row.try_get("metadata")?;
    let env_text: String = row.try_get("env")?;
    let successor: Option<String> = row.try_get("successor_id")?;

    Ok(KeyRecord {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: serde_json::from_str(&scopes_text).map_err(|_| bad("scopes"))?,
        env: env_text.parse::<KeyEnv>().map_err(|_| bad("env"))?,
        metadata: serde_json::from_str(&metadata_text).map_err(|_| bad("metadata"))?,
        created_at: time("created_at")?.ok_or_else(|| bad("created_at"))?,
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        last_used_at: time("last_used_at")?,
        successor_id: successor
            .map(|s| KeyId::parse(&s).map_err(|_| bad("successor_id")))
            .transpose()?,
        client_id: row.try_get("client_id")?,
        id,
    })
}

fn read_client(row: &SqliteRow) -> Result<ClientRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let bad = |column: &str| corrupt(&id, format!("client column `{column}` is invalid"));
    let scopes: String = row.try_get("scopes")?;
    let audiences: String = row.try_get("audiences")?;
    let created_at: i64 = row.try_get("created_at")?;
    Ok(ClientRecord {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| bad("scopes"))?,
        audiences: serde_json::from_str(&audiences).map_err(|_| bad("audiences"))?,
        default_audience: row.try_get("default_audience")?,
        token_lifetime_seconds: row.try_get("token_lifetime_seconds")?,
        created_at: from_micros(created_at).ok_or_else(|| bad("created_at"))?,
        jwks: row
            .try_get::<Option<String>, _>("jwks")?
            .map(|text| serde_json::from_str(&text).map_err(|_| bad("jwks")))
            .transpose()?,
        version: row.try_get("version")?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHash;
    use crate::model::{KeyName, Metadata, Scopes};

    fn new_key(id: &str) -> NewKeyRecord {
        NewKeyRecord {
            id: KeyId::parse(id).unwrap(),
            hash: KeyHash::of(id),
            name: KeyName::parse("bulk").unwrap(),
            owner: None,
            scopes: Scopes::parse("scopes", &["orders:read"]).unwrap(),
            env: KeyEnv::Live,
            metadata: Metadata::default(),
            created_at: crate::model::now(),
            expires_at: None,
            client_id: None,
        }
    }

    #[tokio::test]
    async fn insert_keys_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("valet.db").display());
        let store = SqliteStore::connect(&url, true).await.unwrap();

        let inserted = store
            .insert_keys(["AAAAAAAA", "BBBBBBBB"].map(new_key))
            .await
            .unwrap();
        assert_eq!(inserted, 2);
        let found = store.find_key(&KeyId::parse("BBBBBBBB").unwrap()).await;
        assert!(
            found
                .unwrap()
                .is_some_and(|stored| stored.hash.matches(&KeyHash::of("BBBBBBBB")))
        );

        let duplicate = store
            .insert_keys(["CCCCCCCC", "AAAAAAAA"].map(new_key))
            .await;
        assert!(matches!(duplicate, Err(StoreError::IdTaken)));
        assert_eq!(
            store.count_keys().await.unwrap(),
            2,
            "the failed batch left no row"
        );
    }
}
