//! The JSON objects of the public interface, shared by the HTTP API and `--json` CLI output.
//!
//! Domain types convert into these in one place, so a field cannot leak into a response by
//! accident. Only [`CreatedKeyObject`] carries a raw key.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::key::{KeyEnv, RawKey};
use crate::model::KeyRecord;
use crate::service::{CreatedKey, RolledKey, Verification, VerifyCode};
use crate::store::KeyPage;

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
            key: verification.key.map(KeyObject::from),
            message: verification.message,
        }
    }
}
