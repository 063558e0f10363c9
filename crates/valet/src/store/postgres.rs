//! The PostgreSQL backend, for several nodes sharing one database.
//!
//! Triggers on `api_keys` send every change on the channel `valet_key_changes`, and each
//! node follows that channel with `LISTEN` to keep its cache true.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    CLIENT_COLUMNS, COLUMNS, ChangeKind, ChangeSink, Cursor, FIRST_FEED_BACKOFF, FeedEvent,
    KeyChange, KeyPage, KeyStore, ListQuery, RollOutcome, StoreError, client_page, list_query,
    page_from_rows, redact_url, stored_key_from_row, wait_to_reconnect,
};
use crate::key::{KeyEnv, KeyId};
use crate::model::{KeyRecord, KeyUpdate, NewKeyRecord, StoredKey, Successor, from_micros};
use crate::oauth::client::ClientRecord;
use crate::oauth::signing::{SigningAlgorithm, SigningKeyRecord};

/// Channel on which the triggers announce key changes.
const CHANNEL: &str = "valet_key_changes";

/// A key store in a PostgreSQL database, shared by any number of nodes.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`) and applies migrations.
    ///
    /// sqlx takes a PostgreSQL advisory lock around migrations, so several nodes may start
    /// at once.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|err| {
            StoreError::UnsupportedUrl(format!("invalid PostgreSQL URL {}: {err}", redact_url(url)))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn fetch_record(
        executor: impl sqlx::PgExecutor<'_>,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(executor)
            .await?;
        row.map(|row| read_record(&row)).transpose()
    }

    /// Listens on the change channel, then reads every key id, so that no change made
    /// after the snapshot can be missed. Returns when the connection fails or `stop`
    /// changes (`Ok(true)`).
    async fn follow_once(
        &self,
        sink: &dyn ChangeSink,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // A lost connection must surface here, so that the cache stops serving verifications, rather
        // than be reconnected quietly inside sqlx with notifications missed.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        sink.query_sent("snapshot_ids");
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM api_keys")
            .fetch_all(&self.pool)
            .await?;
        let ids = ids
            .iter()
            .map(|id| KeyId::parse(id).map_err(|_| corrupt(id, "id is not 8 base62 digits")))
            .collect::<Result<_, _>>()?;
        let revoked: Vec<String> =
            sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE expires_at > now()")
                .fetch_all(&self.pool)
                .await?;
        sink.resync(ids, revoked);

        loop {
            let notification = tokio::select! {
                received = listener.try_recv() => received?,
                _ = stop.changed() => return Ok(true),
            };
            let Some(notification) = notification else {
                return Err(StoreError::Unavailable(sqlx::Error::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "notification connection closed",
                    ),
                )));
            };
            match parse_notification(notification.payload(), &schema) {
                Some(change) => sink.apply(change),
                None => tracing::trace!("ignored a key change notification for another schema"),
            }
        }
    }
}

/// Parses `"<op> <schema> <id> <unix microseconds>"`, where op `T` names a revoked token
/// id; returns `None` for another schema or an unreadable payload.
fn parse_notification(payload: &str, schema: &str) -> Option<FeedEvent> {
    let mut parts = payload.split(' ');
    let op = parts.next()?;
    if parts.next()? != schema {
        return None;
    }
    let id = parts.next()?;
    let changed_at = parts
        .next()
        .and_then(|m| m.parse().ok())
        .and_then(from_micros);
    if op == "C" {
        return Some(FeedEvent::ClientChanged {
            client_id: id.to_owned(),
            changed_at,
        });
    }
    if op == "T" {
        return Some(FeedEvent::TokenRevoked {
            jti: id.to_owned(),
            changed_at,
        });
    }
    Some(FeedEvent::Key(KeyChange {
        id: KeyId::parse(id).ok()?,
        kind: ChangeKind::from_code(op)?,
        changed_at,
    }))
}

#[async_trait]
impl KeyStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
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
        let sql = format!("{INSERT} RETURNING {COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind_all(key)
            .fetch_one(&self.pool)
            .await?;
        read_record(&row)
    }

    async fn insert_first_key(&self, key: &NewKeyRecord) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Held until the transaction ends, so a second node waits here and its check then
        // finds the first node's committed key.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FIRST_KEY_LOCK)
            .execute(&mut *tx)
            .await?;
        let has_keys: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
            .fetch_one(&mut *tx)
            .await?;
        if has_keys {
            return Ok(None);
        }
        let sql = format!("{INSERT} RETURNING {COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind_all(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        read_record(&row).map(Some)
    }

    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| stored_key_from_row(&row, read_record))
            .transpose()
    }

    async fn list_keys(&self, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let rows = list_query::<Postgres>(query)
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
        // COALESCE keeps a column when its parameter is NULL; the owner needs a separate
        // flag because NULL is also a value it can be set to.
        let sql = format!(
            "UPDATE api_keys SET
                 name = COALESCE($2, name),
                 owner = CASE WHEN $3 THEN $4 ELSE owner END,
                 scopes = COALESCE($5, scopes),
                 metadata = COALESCE($6, metadata)
             WHERE id = $1
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .bind(update.name.as_ref().map(|n| n.as_str()))
            .bind(update.owner.is_some())
            .bind(
                update
                    .owner
                    .as_ref()
                    .and_then(|o| o.as_ref().map(|o| o.as_str())),
            )
            .bind(update.scopes.as_ref().map(|s| s.to_strings()))
            .bind(update.metadata.as_ref().map(|m| Json(m.as_map().clone())))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| read_record(&row)).transpose()
    }

    async fn revoke_key(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // Only an unrevoked key is updated, so an idempotent revoke sends no notification.
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.as_str())
            .bind(at)
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
        let mut tx = self.pool.begin().await?;
        // The row lock makes concurrent rolls of one key wait here, so exactly one wins.
        let current = sqlx::query("SELECT id FROM api_keys WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if current.is_none() {
            tx.rollback().await?;
            return Ok(RollOutcome::NotFound);
        }

        // The successor row goes in first, because the old row's successor_id references
        // it. It copies the old row, and inserts nothing unless the old key can be rolled.
        let inserted = sqlx::query(
            "INSERT INTO api_keys
                 (id, key_hash, name, owner, scopes, env, metadata, created_at, expires_at,
                  client_id)
             SELECT $1, $2, name, owner, scopes, env, metadata, $3, $4, client_id
             FROM api_keys
             WHERE id = $5 AND env = $6 AND successor_id IS NULL AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(successor.id.as_str())
        .bind(successor.hash.as_bytes().as_slice())
        .bind(successor.created_at)
        .bind(successor.expires_at)
        .bind(id.as_str())
        .bind(successor.env.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let updated = if inserted == 1 {
            sqlx::query(
                "UPDATE api_keys
                 SET successor_id = $2, expires_at = LEAST(COALESCE(expires_at, $3), $3)
                 WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(successor.id.as_str())
            .bind(grace_until)
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
        let ids: Vec<&str> = usage.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<OffsetDateTime> = usage.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "UPDATE api_keys AS k
             SET last_used_at = GREATEST(COALESCE(k.last_used_at, u.at), u.at)
             FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, at)
             WHERE k.id = u.id",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, owner, scopes, audiences, default_audience,
                 token_lifetime_seconds, created_at, jwks)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(client.owner.as_deref())
        .bind(&client.scopes)
        .bind(&client.audiences)
        .bind(client.default_audience.as_deref())
        .bind(client.token_lifetime_seconds as i32)
        .bind(client.created_at)
        .bind(client.jwks.as_ref().map(Json))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1"
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
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(after.map_or(i64::MAX, Cursor::seq))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        client_page(&rows, limit, read_client)
    }

    async fn replace_client(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE oauth_clients SET name = $2, owner = $3, scopes = $4, audiences = $5,
                 default_audience = $6, token_lifetime_seconds = $7, jwks = $8,
                 version = version + 1
             WHERE id = $1 AND version = $9",
        )
        .bind(&client.id)
        .bind(&client.name)
        .bind(client.owner.as_deref())
        .bind(&client.scopes)
        .bind(&client.audiences)
        .bind(client.default_audience.as_deref())
        .bind(client.token_lifetime_seconds as i32)
        .bind(client.jwks.as_ref().map(Json))
        .bind(client.version)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn delete_client(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE client_id = $1",
        )
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
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
             FROM signing_keys WHERE retired_at IS NULL OR retired_at > now()
             ORDER BY signs_from, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kid: String = row.try_get("kid")?;
                let algorithm: String = row.try_get("algorithm")?;
                let private_key: Vec<u8> = row.try_get("private_key")?;
                let Json(public_jwk) = row.try_get("public_jwk")?;
                Ok(SigningKeyRecord {
                    algorithm: SigningAlgorithm::parse(&algorithm)
                        .ok_or_else(|| corrupt(&kid, "signing key algorithm is invalid"))?,
                    private_key: zeroize::Zeroizing::new(private_key),
                    public_jwk,
                    created_at: row.try_get("created_at")?,
                    signs_from: row.try_get("signs_from")?,
                    retired_at: row.try_get("retired_at")?,
                    kid,
                })
            })
            .collect()
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // As in `insert_first_key`, a second node waits here and then finds the first key.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FIRST_SIGNING_KEY_LOCK)
            .execute(&mut *tx)
            .await?;
        let now = crate::model::now();
        let can_sign: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM signing_keys
                 WHERE signs_from <= $1 AND (retired_at IS NULL OR retired_at > $2))",
        )
        .bind(now + super::SIGNING_CLOCK_SLACK)
        .bind(now)
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
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(retire_at)
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
             VALUES ($1, $2, $3, now()) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        // Expired tokens are rejected anyway, so their rows can go.
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < now()")
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
            "INSERT INTO used_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (client_id, jti) DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM used_assertions WHERE expires_at < now()")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }

    async fn is_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn follow_changes(&self, sink: Arc<dyn ChangeSink>, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_FEED_BACKOFF;
        loop {
            match self.follow_once(sink.as_ref(), &mut stop).await {
                Ok(_) => return,
                Err(err) => {
                    sink.lost(&err.to_string());
                    tracing::warn!(error = %err, "PostgreSQL notification connection failed; reconnecting");
                    if !wait_to_reconnect(&mut backoff, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Key of the advisory lock that serialises [`KeyStore::insert_first_key`] across nodes:
/// "valet:1k" in ASCII, so that it is unlikely to meet another application's lock.
const FIRST_KEY_LOCK: i64 = 0x7661_6c65_743a_316b;

/// Key of the advisory lock that serialises [`KeyStore::insert_first_signing_key`]:
/// "valet:1s" in ASCII.
const FIRST_SIGNING_KEY_LOCK: i64 = 0x7661_6c65_743a_3173;

const INSERT: &str = "INSERT INTO api_keys
    (id, key_hash, name, owner, scopes, env, metadata, created_at, expires_at, client_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Binds the ten columns of [`INSERT`] from a new key.
trait BindInsert<'q> {
    fn bind_all(self, key: &'q NewKeyRecord) -> Self;
}

impl<'q> BindInsert<'q> for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn bind_all(self, key: &'q NewKeyRecord) -> Self {
        self.bind(key.id.as_str())
            .bind(key.hash.as_bytes().as_slice())
            .bind(key.name.as_str())
            .bind(key.owner.as_ref().map(|o| o.as_str()))
            .bind(key.scopes.to_strings())
            .bind(key.env.as_str())
            .bind(Json(key.metadata.as_map().clone()))
            .bind(key.created_at)
            .bind(key.expires_at)
            .bind(key.client_id.as_deref())
    }
}

async fn insert_signing_key(
    executor: impl sqlx::PgExecutor<'_>,
    key: &SigningKeyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signing_keys
             (kid, algorithm, private_key, public_jwk, created_at, signs_from, retired_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.kid)
    .bind(key.algorithm.as_str())
    .bind(key.private_key.as_slice())
    .bind(Json(&key.public_jwk))
    .bind(key.created_at)
    .bind(key.signs_from)
    .bind(key.retired_at)
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

fn read_record(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let id_text: String = row.try_get("id")?;
    let bad = |column: &str| {
        corrupt(
            &id_text,
            format!("column `{column}` holds an invalid value"),
        )
    };
    let env_text: String = row.try_get("env")?;
    let successor: Option<String> = row.try_get("successor_id")?;
    let Json(metadata) = row.try_get("metadata")?;

    Ok(KeyRecord {
        id: KeyId::parse(&id_text).map_err(|_| bad("id"))?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: row.try_get("scopes")?,
        env: env_text.parse::<KeyEnv>().map_err(|_| bad("env"))?,
        metadata,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        successor_id: successor
            .map(|s| KeyId::parse(&s).map_err(|_| bad("successor_id")))
            .transpose()?,
        client_id: row.try_get("client_id")?,
    })
}

fn read_client(row: &PgRow) -> Result<ClientRecord, StoreError> {
    let lifetime: i32 = row.try_get("token_lifetime_seconds")?;
    Ok(ClientRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: row.try_get("scopes")?,
        audiences: row.try_get("audiences")?,
        default_audience: row.try_get("default_audience")?,
        token_lifetime_seconds: i64::from(lifetime),
        created_at: row.try_get("created_at")?,
        jwks: row
            .try_get::<Option<Json<serde_json::Value>>, _>("jwks")?
            .map(|Json(jwks)| jwks),
        version: row.try_get("version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_parses_own_schema_only() {
        let Some(FeedEvent::Key(change)) =
            parse_notification("U public AAAAAAAA 1700000000000000", "public")
        else {
            panic!("expected a key change");
        };
        assert_eq!(change.kind, ChangeKind::Updated);
        assert_eq!(change.id.as_str(), "AAAAAAAA");
        assert!(change.changed_at.is_some());
        let revoked = parse_notification("T public abc123 1700000000000000", "public");
        assert!(
            matches!(revoked, Some(FeedEvent::TokenRevoked { ref jti, .. }) if jti == "abc123")
        );
        assert!(parse_notification("U other AAAAAAAA 1", "public").is_none());
        assert!(parse_notification("X public AAAAAAAA 1", "public").is_none());
        assert!(parse_notification("garbage", "public").is_none());
    }
}
