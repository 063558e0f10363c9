//! Handlers for `/v1/clients`: OAuth client registration and secrets, for admin keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use time::OffsetDateTime;

use super::AppState;
use super::auth::Admin;
use super::extract::{ApiJson, ClientIdPath, OptionalJson};
use super::problem::ApiError;
use crate::api::{ClientListObject, ClientObject, CreatedClientObject, SecretObject};
use crate::model::{InvalidField, KeyName, Owner, Scopes};
use crate::oauth::client::{check_audience, check_audiences, check_jwks};
use crate::oauth::service::{ClientUpdate, NewClient, OAuthError};

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
    /// Public JWK set for `private_key_jwt`.
    #[serde(default)]
    jwks: Option<serde_json::Value>,
}

impl CreateClientRequest {
    /// Validates every field into the service's input for a new client.
    pub fn into_new_client(self) -> Result<NewClient, ApiError> {
        if let Some(default) = &self.default_audience {
            check_audience("default_audience", default).map_err(invalid)?;
        }
        Ok(NewClient {
            name: KeyName::parse(&self.name).map_err(invalid)?,
            owner: self
                .owner
                .as_deref()
                .map(Owner::parse)
                .transpose()
                .map_err(invalid)?,
            scopes: Scopes::parse("scopes", &self.scopes).map_err(invalid)?,
            audiences: check_audiences(&self.audiences).map_err(invalid)?,
            default_audience: self.default_audience,
            token_lifetime_seconds: self.token_lifetime_seconds,
            jwks: self
                .jwks
                .as_ref()
                .map(check_jwks)
                .transpose()
                .map_err(invalid)?,
        })
    }
}

pub async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateClientRequest>,
) -> Result<(StatusCode, Json<CreatedClientObject>), ApiError> {
    let new = body.into_new_client()?;
    let created = state.oauth.create_client(new).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(created.into())))
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
    Ok(Json(ClientListObject::from_page(clients, next)))
}

pub async fn show(
    _admin: Admin,
    State(state): State<AppState>,
    ClientIdPath(id): ClientIdPath,
) -> Result<Json<ClientObject>, ApiError> {
    let client = state.oauth.get_client(&id).await.map_err(api_error)?;
    Ok(Json(client.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateClientRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "super::keys::present")]
    owner: Option<Option<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::keys::present")]
    default_audience: Option<Option<String>>,
    #[serde(default)]
    token_lifetime_seconds: Option<i64>,
    /// `null` removes the JWK set.
    #[serde(default, deserialize_with = "super::keys::present")]
    jwks: Option<Option<serde_json::Value>>,
}

impl UpdateClientRequest {
    /// Validates the fields sent into a client update.
    pub fn into_update(self) -> Result<ClientUpdate, ApiError> {
        if let Some(Some(default)) = &self.default_audience {
            check_audience("default_audience", default).map_err(invalid)?;
        }
        let update = ClientUpdate {
            name: self
                .name
                .as_deref()
                .map(KeyName::parse)
                .transpose()
                .map_err(invalid)?,
            owner: self
                .owner
                .map(|owner| owner.as_deref().map(Owner::parse).transpose())
                .transpose()
                .map_err(invalid)?,
            scopes: self
                .scopes
                .map(|scopes| Scopes::parse("scopes", &scopes))
                .transpose()
                .map_err(invalid)?,
            audiences: self
                .audiences
                .map(|audiences| check_audiences(&audiences))
                .transpose()
                .map_err(invalid)?,
            default_audience: self.default_audience,
            jwks: self
                .jwks
                .map(|jwks| jwks.as_ref().map(check_jwks).transpose())
                .transpose()
                .map_err(invalid)?,
            token_lifetime_seconds: self.token_lifetime_seconds,
        };
        if update.is_empty() {
            return Err(ApiError::unprocessable(
                "empty_update",
                "the body changes nothing: send one or more of name, owner, scopes, audiences, \
                 default_audience, token_lifetime_seconds and jwks",
            ));
        }
        Ok(update)
    }
}

pub async fn update(
    _admin: Admin,
    State(state): State<AppState>,
    ClientIdPath(id): ClientIdPath,
    ApiJson(body): ApiJson<UpdateClientRequest>,
) -> Result<Json<ClientObject>, ApiError> {
    let update = body.into_update()?;
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
    ClientIdPath(id): ClientIdPath,
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
    ClientIdPath(id): ClientIdPath,
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
