//! Handlers for `/v1/clients`: OAuth client registration and secrets, for admin keys.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Admin;
use super::extract::{ApiJson, OptionalJson};
use super::problem::ApiError;
use crate::model::{InvalidField, KeyName, Owner, Scopes};
use crate::oauth::client::{ClientRecord, check_audience, check_audiences};
use crate::oauth::service::{ClientUpdate, NewClient, OAuthError};
use crate::service::CreatedKey;

/// A client as the API shows it, with the field names of RFC 7591 where one exists.
#[derive(Debug, Serialize)]
pub struct ClientObject {
    client_id: String,
    name: String,
    owner: Option<String>,
    scopes: Vec<String>,
    audiences: Vec<String>,
    default_audience: Option<String>,
    token_lifetime_seconds: i64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// Unix seconds, as RFC 7591 section 3.2.1 writes it.
    client_id_issued_at: i64,
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
        }
    }
}

/// A client secret in the one response that shows it.
#[derive(Debug, Serialize)]
pub struct SecretObject {
    #[serde(serialize_with = "crate::api::serialize_raw_key")]
    client_secret: crate::key::RawKey,
    /// The API key id of the secret, for rolling or revoking it under `/v1/keys`.
    client_secret_key_id: String,
    /// 0 when the secret does not expire, as RFC 7591 section 3.2.1 writes it.
    client_secret_expires_at: i64,
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

#[derive(Debug, Serialize)]
pub struct CreatedClientObject {
    #[serde(flatten)]
    client: ClientObject,
    #[serde(flatten)]
    secret: SecretObject,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClientRequest {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    default_audience: Option<String>,
    #[serde(default)]
    token_lifetime_seconds: Option<i64>,
}

pub async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateClientRequest>,
) -> Result<(StatusCode, Json<CreatedClientObject>), ApiError> {
    if let Some(default) = &body.default_audience {
        check_audience("default_audience", default).map_err(invalid)?;
    }
    let new = NewClient {
        name: KeyName::parse(&body.name).map_err(invalid)?,
        owner: body
            .owner
            .as_deref()
            .map(Owner::parse)
            .transpose()
            .map_err(invalid)?,
        scopes: Scopes::parse("scopes", &body.scopes).map_err(invalid)?,
        audiences: check_audiences(&body.audiences).map_err(invalid)?,
        default_audience: body.default_audience,
        token_lifetime_seconds: body.token_lifetime_seconds,
    };
    let created = state.oauth.create_client(new).await.map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClientObject {
            client: created.client.into(),
            secret: created.secret.into(),
        }),
    ))
}

#[derive(Serialize)]
pub struct ClientListObject {
    clients: Vec<ClientObject>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    _admin: Admin,
    State(state): State<AppState>,
    params: Result<axum::extract::Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClientListObject>, ApiError> {
    let axum::extract::Query(params) = params.map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            "the query string is not valid; accepted parameters are limit and cursor, each at most once",
        )
    })?;
    let limit = super::keys::parse_limit(params.limit.as_deref())?;
    let after = super::keys::parse_cursor(params.cursor.as_deref())?;
    let (clients, next) = state
        .oauth
        .list_clients(limit, after)
        .await
        .map_err(api_error)?;
    Ok(Json(ClientListObject {
        clients: clients.into_iter().map(ClientObject::from).collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

pub async fn show(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientObject>, ApiError> {
    let client = state.oauth.get_client(&id).await.map_err(api_error)?;
    Ok(Json(client.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateClientRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    owner: Option<Option<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    default_audience: Option<Option<String>>,
    #[serde(default)]
    token_lifetime_seconds: Option<i64>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

pub async fn update(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateClientRequest>,
) -> Result<Json<ClientObject>, ApiError> {
    if let Some(Some(default)) = &body.default_audience {
        check_audience("default_audience", default).map_err(invalid)?;
    }
    let update = ClientUpdate {
        name: body
            .name
            .as_deref()
            .map(KeyName::parse)
            .transpose()
            .map_err(invalid)?,
        owner: body
            .owner
            .map(|owner| owner.as_deref().map(Owner::parse).transpose())
            .transpose()
            .map_err(invalid)?,
        scopes: body
            .scopes
            .map(|scopes| Scopes::parse("scopes", &scopes))
            .transpose()
            .map_err(invalid)?,
        audiences: body
            .audiences
            .map(|audiences| check_audiences(&audiences))
            .transpose()
            .map_err(invalid)?,
        default_audience: body.default_audience,
        token_lifetime_seconds: body.token_lifetime_seconds,
    };
    let client = state
        .oauth
        .update_client(&id, update)
        .await
        .map_err(api_error)?;
    Ok(Json(client.into()))
}

pub async fn delete(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.oauth.delete_client(&id).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSecretRequest {
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

pub async fn add_secret(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<AddSecretRequest>,
) -> Result<(StatusCode, Json<SecretObject>), ApiError> {
    let created = state
        .oauth
        .add_secret(&id, body.expires_at)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

fn invalid(err: InvalidField) -> ApiError {
    ApiError::unprocessable("invalid_field", err.to_string())
}

/// Maps an OAuth service error on the management API to problem details.
fn api_error(err: OAuthError) -> ApiError {
    match err {
        OAuthError::Service(err) => err.into(),
        other => ApiError::internal(&other),
    }
}
