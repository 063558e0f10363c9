//! The JSON objects of the public interface, shared by the HTTP API and `--json` CLI output.
//!
//! Domain types convert into these in one place, so a field cannot leak into a response by
//! accident. Only [`CreatedKeyObject`] and [`SecretObject`] contain a raw key, and with them
//! the objects that embed them, [`RolledKeyObject`] and [`CreatedClientObject`].

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::key::{KeyEnv, RawKey};
use crate::model::KeyRecord;
use crate::oauth::client::ClientRecord;
use crate::oauth::service::CreatedClient;
use crate::service::{CreatedKey, RolledKey, Verification, VerifyCode};
use crate::store::{Cursor, KeyPage};

/// A key as clients see it: never the raw key, never its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyObject {
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub env: KeyEnv,
    pub metadata: Map<String, Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    pub successor_id: Option<String>,
    /// The OAuth client this key is a secret of, if any.
    pub client_id: Option<String>,
}

impl From<KeyRecord> for KeyObject {
    fn from(record: KeyRecord) -> Self {
        Self {
            id: record.id.to_string(),
            name: record.name,
            owner: record.owner,
            scopes: record.scopes,
            env: record.env,
            metadata: record.metadata,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            successor_id: record.successor_id.map(|id| id.to_string()),
            client_id: record.client_id,
        }
    }
}

/// A key object plus its raw key, in the one response that creates it.
#[derive(Debug, Serialize)]
pub struct CreatedKeyObject {
    #[serde(flatten)]
    pub object: KeyObject,
    #[serde(serialize_with = "serialize_raw_key")]
    pub key: RawKey,
}

impl From<CreatedKey> for CreatedKeyObject {
    fn from(created: CreatedKey) -> Self {
        Self {
            object: created.record.into(),
            key: created.raw,
        }
    }
}

/// Serializes a raw key as its text, for the one response that shows it.
pub fn serialize_raw_key<S: Serializer>(key: &RawKey, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(key.expose())
}

/// The response to a roll: the new key with its raw form, and the old key as `previous`.
#[derive(Debug, Serialize)]
pub struct RolledKeyObject {
    #[serde(flatten)]
    pub successor: CreatedKeyObject,
    pub previous: KeyObject,
}

impl From<RolledKey> for RolledKeyObject {
    fn from(rolled: RolledKey) -> Self {
        Self {
            successor: rolled.successor.into(),
            previous: rolled.previous.into(),
        }
    }
}

/// One page of the key list.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyListObject {
    pub keys: Vec<KeyObject>,
    pub next_cursor: Option<String>,
}

impl From<KeyPage> for KeyListObject {
    fn from(page: KeyPage) -> Self {
        Self {
            keys: page.keys.into_iter().map(KeyObject::from).collect(),
            next_cursor: page.next_cursor.map(|c| c.encode()),
        }
    }
}

/// The response to a verification.
#[derive(Debug, Serialize)]
pub struct VerifyObject {
    pub valid: bool,
    pub code: VerifyCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl From<Verification> for VerifyObject {
    fn from(verification: Verification) -> Self {
        Self {
            valid: verification.code == VerifyCode::Valid,
            code: verification.code,
            key: verification.key.map(|key| key.to_record().into()),
            message: verification.message,
        }
    }
}

/// A client as the API shows it, with the field names of RFC 7591 where one exists.
#[derive(Debug, Serialize)]
pub struct ClientObject {
    pub client_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub default_audience: Option<String>,
    pub token_lifetime_seconds: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Unix seconds, as RFC 7591 section 3.2.1 writes it.
    pub client_id_issued_at: i64,
    /// Public JWK set for `private_key_jwt`, if registered.
    pub jwks: Option<serde_json::Value>,
}

impl From<ClientRecord> for ClientObject {
    fn from(client: ClientRecord) -> Self {
        Self {
            client_id_issued_at: client.created_at.unix_timestamp(),
            client_id: client.id,
            name: client.name,
            owner: client.owner,
            scopes: client.scopes,
            audiences: client.audiences,
            default_audience: client.default_audience,
            token_lifetime_seconds: client.token_lifetime_seconds,
            created_at: client.created_at,
            jwks: client.jwks,
        }
    }
}

/// A client secret in the one response that shows it.
#[derive(Debug, Serialize)]
pub struct SecretObject {
    #[serde(serialize_with = "serialize_raw_key")]
    pub client_secret: RawKey,
    /// The API key id of the secret, for rolling or revoking it under `/v1/keys`.
    pub client_secret_key_id: String,
    /// 0 when the secret does not expire, as RFC 7591 section 3.2.1 writes it.
    pub client_secret_expires_at: i64,
}

impl From<CreatedKey> for SecretObject {
    fn from(created: CreatedKey) -> Self {
        Self {
            client_secret_key_id: created.record.id.to_string(),
            client_secret_expires_at: created
                .record
                .expires_at
                .map_or(0, |at| at.unix_timestamp()),
            client_secret: created.raw,
        }
    }
}

/// A new client and its first secret, in the one response that creates them.
#[derive(Debug, Serialize)]
pub struct CreatedClientObject {
    #[serde(flatten)]
    pub client: ClientObject,
    #[serde(flatten)]
    pub secret: SecretObject,
}

impl From<CreatedClient> for CreatedClientObject {
    fn from(created: CreatedClient) -> Self {
        Self {
            client: created.client.into(),
            secret: created.secret.into(),
        }
    }
}

/// One page of the client list.
#[derive(Debug, Serialize)]
pub struct ClientListObject {
    pub clients: Vec<ClientObject>,
    pub next_cursor: Option<String>,
}

impl ClientListObject {
    /// Builds a page from the clients the store returned and the cursor after them.
    pub fn from_page(clients: Vec<ClientRecord>, next: Option<Cursor>) -> Self {
        Self {
            clients: clients.into_iter().map(ClientObject::from).collect(),
            next_cursor: next.map(|cursor| cursor.encode()),
        }
    }
}
