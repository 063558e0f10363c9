//! Handlers for `/v1/keys`: create, list, show, update, roll, revoke and verify.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use super::AppState;
use super::auth::{Admin, Verifier};
use super::extract::{ApiJson, KeyIdPath, OptionalJson};
use super::problem::ApiError;
use crate::api::{CreatedKeyObject, KeyListObject, KeyObject, RolledKeyObject, VerifyObject};
use crate::key::KeyEnv;
use crate::model::{InvalidField, KeyName, KeyUpdate, Metadata, Owner, Scopes};
use crate::redact::redact_keys;
use crate::service::{DEFAULT_GRACE, NewKey};
use crate::store::{Cursor, ListQuery};

/// Page size when the request names none.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page a request may ask for.
const MAX_LIMIT: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    env: KeyEnv,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

impl CreateKeyRequest {
    /// Validates every field into the service's input for a new key.
    pub fn into_new_key(self) -> Result<NewKey, ApiError> {
        Ok(NewKey {
            name: KeyName::parse(&self.name).map_err(invalid)?,
            owner: self
                .owner
                .as_deref()
                .map(Owner::parse)
                .transpose()
                .map_err(invalid)?,
            scopes: Scopes::parse("scopes", &self.scopes).map_err(invalid)?,
            env: self.env,
            metadata: Metadata::parse(
                self.metadata
                    .unwrap_or_else(|| Value::Object(Default::default())),
            )
            .map_err(invalid)?,
            expires_at: self.expires_at,
            client_id: None,
        })
    }
}

pub async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<
    (
        StatusCode,
        [(axum::http::HeaderName, String); 1],
        Json<CreatedKeyObject>,
    ),
    ApiError,
> {
    let new = body.into_new_key()?;
    let created = state.service.create(new).await?;
    let location = format!("/v1/keys/{}", created.record.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(created.into()),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    owner: Option<String>,
}

pub async fn list(
    _admin: Admin,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KeyListObject>, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        let prefix = state.service.format().prefix().as_str();
        ApiError::bad_request(
            "invalid_query",
            format!(
                "the query string is not valid ({}); accepted parameters are limit, cursor and owner, each at most once",
                redact_keys(&rejection.body_text(), prefix)
            ),
        )
    })?;

    let limit = parse_limit(params.limit.as_deref())?;
    let after = parse_cursor(params.cursor.as_deref())?;

    if let Some(owner) = &params.owner {
        Owner::parse(owner)
            .map_err(|err| ApiError::bad_request("invalid_owner", err.to_string()))?;
    }
    let query = ListQuery {
        owner: params.owner,
        limit,
        after,
    };
    let page = state.service.list(&query).await?;
    Ok(Json(page.into()))
}

pub async fn show(
    _admin: Admin,
    State(state): State<AppState>,
    KeyIdPath(id): KeyIdPath,
) -> Result<Json<KeyObject>, ApiError> {
    Ok(Json(state.service.get(&id).await?.into()))
}

/// Parses the `limit` query parameter: 1 to 100, default 50.
pub(super) fn parse_limit(text: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_LIMIT);
    };
    Some(text)
        .filter(|text| text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse::<u32>().ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_limit",
                format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
            )
        })
}

/// Parses the `cursor` query parameter from a previous page's `next_cursor`.
pub(super) fn parse_cursor(text: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    text.map(|text| {
        Cursor::decode(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` is not one this server issued: pass `next_cursor` from the previous page unchanged",
            )
        })
    })
    .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Value>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Rejects `null` for a field that cannot be cleared, saying what to send instead.
fn not_null<T>(
    field: &'static str,
    value: Option<Option<T>>,
    instead: &str,
) -> Result<Option<T>, ApiError> {
    match value {
        Some(None) => Err(invalid(InvalidField::new(
            field,
            format!("cannot be null; {instead}"),
        ))),
        Some(Some(value)) => Ok(Some(value)),
        None => Ok(None),
    }
}

impl UpdateKeyRequest {
    /// Validates the fields sent into a key update; a body that changes nothing is an error.
    pub fn into_update(self) -> Result<KeyUpdate, ApiError> {
        let name = not_null("name", self.name, "send a new name or leave the field out")?;
        let scopes = not_null("scopes", self.scopes, "send [] to remove every scope")?;
        let metadata = not_null("metadata", self.metadata, "send {} to clear the metadata")?;
        let owner = self
            .owner
            .map(|owner| owner.as_deref().map(Owner::parse).transpose())
            .transpose();

        let update = KeyUpdate {
            name: name
                .as_deref()
                .map(KeyName::parse)
                .transpose()
                .map_err(invalid)?,
            owner: owner.map_err(invalid)?,
            scopes: scopes
                .map(|scopes| Scopes::parse("scopes", &scopes))
                .transpose()
                .map_err(invalid)?,
            metadata: metadata.map(Metadata::parse).transpose().map_err(invalid)?,
        };
        if update.is_empty() {
            return Err(ApiError::unprocessable(
                "empty_update",
                "the body changes nothing: send one or more of name, owner, scopes and metadata",
            ));
        }
        Ok(update)
    }
}

pub async fn update(
    _admin: Admin,
    State(state): State<AppState>,
    KeyIdPath(id): KeyIdPath,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyObject>, ApiError> {
    let update = body.into_update()?;
    Ok(Json(state.service.update(&id, update).await?.into()))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    #[serde(default)]
    grace_period_seconds: Option<i64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

impl RollRequest {
    /// Returns how long the old key stays valid: the requested grace period, or the default
    /// of 24 hours.
    pub fn grace(&self) -> Duration {
        self.grace_period_seconds
            .map_or(DEFAULT_GRACE, Duration::seconds)
    }

    /// Returns the requested expiry of the new key, if any.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }
}

pub async fn roll(
    _admin: Admin,
    State(state): State<AppState>,
    KeyIdPath(id): KeyIdPath,
    OptionalJson(body): OptionalJson<RollRequest>,
) -> Result<(StatusCode, Json<RolledKeyObject>), ApiError> {
    let rolled = state
        .service
        .roll(&id, body.grace(), body.expires_at())
        .await?;
    Ok((StatusCode::CREATED, Json(rolled.into())))
}

pub async fn revoke(
    _admin: Admin,
    State(state): State<AppState>,
    KeyIdPath(id): KeyIdPath,
) -> Result<Json<KeyObject>, ApiError> {
    Ok(Json(state.service.revoke(&id).await?.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    key: crate::key::RawKey,
    #[serde(default)]
    scopes: Vec<String>,
}

impl VerifyRequest {
    /// Returns the presented key, exactly as sent.
    pub fn key(&self) -> &str {
        self.key.expose()
    }

    /// Validates the scopes that the key must hold.
    pub fn required_scopes(&self) -> Result<Scopes, ApiError> {
        Scopes::parse("scopes", &self.scopes).map_err(invalid)
    }
}

pub async fn verify(
    _verifier: Verifier,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyObject>, ApiError> {
    let required = body.required_scopes()?;
    let verification = state.service.verify(body.key.expose(), &required).await?;
    Ok(Json(verification.into()))
}

fn invalid(err: InvalidField) -> ApiError {
    ApiError::unprocessable("invalid_field", err.to_string())
}
