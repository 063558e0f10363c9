//! The OAuth service: client lifecycle, client authentication and token issuance.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::client::{
    self, ClientRecord, DEFAULT_TOKEN_LIFETIME_SECONDS, generate_client_id, is_client_id,
};
use super::sealing::{SealError, SealingKey, is_sealed, open};
use super::signing::{SigningAlgorithm, SigningError, SigningKeyRecord};
use crate::key::{KeyEnv, base62};
use crate::model::{self, InvalidField, KeyName, Metadata, Owner, Scopes};
use crate::service::{CreatedKey, KeyService, NewKey, ServiceError, VerifyCode};
use crate::store::{Cursor, StoreError};

/// Random characters in a token id (`jti`): 22 base62 characters, about 131 bits.
const JTI_LEN: usize = 22;
/// How many times a client update starts again after losing to a concurrent update.
const UPDATE_ATTEMPTS: usize = 8;

/// Error of an OAuth operation, named by its RFC 6749 section 5.2 or RFC 8707 code.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Unknown client, wrong secret or deleted client: one response for all three, so client
    /// ids cannot be enumerated.
    #[error("client authentication failed")]
    InvalidClient,
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("the grant type is not supported: use client_credentials")]
    UnsupportedGrantType,
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("could not sign the access token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error(transparent)]
    Sealing(#[from] SealError),
}

impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> Self {
        Self::Service(err.into())
    }
}

/// Validated input for a new client.
#[derive(Clone, Debug)]
pub struct NewClient {
    pub name: KeyName,
    pub owner: Option<Owner>,
    pub scopes: Scopes,
    pub audiences: Vec<String>,
    pub default_audience: Option<String>,
    pub token_lifetime_seconds: Option<i64>,
    /// Public JWK set for `private_key_jwt`, already checked with [`check_jwks`].
    pub jwks: Option<serde_json::Value>,
}

/// Fields to change on a client; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ClientUpdate {
    pub name: Option<KeyName>,
    pub owner: Option<Option<Owner>>,
    pub scopes: Option<Scopes>,
    pub audiences: Option<Vec<String>>,
    pub default_audience: Option<Option<String>>,
    pub token_lifetime_seconds: Option<i64>,
    /// `Some(None)` removes the JWK set.
    pub jwks: Option<Option<serde_json::Value>>,
}

impl ClientUpdate {
    /// Returns whether the update names no field, so applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.owner.is_none()
            && self.scopes.is_none()
            && self.audiences.is_none()
            && self.default_audience.is_none()
            && self.token_lifetime_seconds.is_none()
            && self.jwks.is_none()
    }

    /// Writes the fields this update names into `client`, and checks that the default
    /// audience is still one of the audiences.
    fn apply(&self, client: &mut ClientRecord) -> Result<(), OAuthError> {
        if let Some(name) = &self.name {
            client.name = name.as_str().to_owned();
        }
        if let Some(owner) = &self.owner {
            client.owner = owner.as_ref().map(|o| o.as_str().to_owned());
        }
        if let Some(scopes) = &self.scopes {
            client.scopes = scopes.to_strings();
        }
        if let Some(audiences) = &self.audiences {
            client.audiences = audiences.clone();
        }
        if let Some(default_audience) = &self.default_audience {
            client.default_audience = default_audience.clone();
        }
        if let Some(jwks) = &self.jwks {
            client.jwks = jwks.clone();
        }
        if let Some(lifetime) = self.token_lifetime_seconds {
            client.token_lifetime_seconds =
                client::check_lifetime(lifetime).map_err(ServiceError::from)?;
        }
        check_default_audience(&client.audiences, client.default_audience.as_deref())
    }
}

/// A client just created, with its first secret.
#[derive(Debug)]
pub struct CreatedClient {
    pub client: ClientRecord,
    pub secret: CreatedKey,
}

/// An issued access token.
#[derive(Debug)]
pub struct IssuedToken {
    pub access_token: crate::secret::AccessToken,
    pub expires_in: i64,
    pub scope: String,
}

/// The claims of an access token this server signed, once verified.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct VerifiedToken {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
}

/// Caller of the introspection or revocation endpoint.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A key with scope `admin`, which may act on any token.
    Admin,
    /// An authenticated client, which may revoke only what was issued to it.
    Client(Arc<ClientRecord>),
}

/// Result of introspecting a token (RFC 7662 section 2.2).
#[derive(Debug)]
pub enum Introspection {
    Inactive,
    /// An active access token, with the client it was issued to.
    AccessToken {
        claims: VerifiedToken,
        client: Arc<ClientRecord>,
    },
    ApiKey(crate::model::KeyRecord),
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
    client_id: &'a str,
    scope: &'a str,
}

/// Clients, their secrets, and the access tokens they obtain.
pub struct OAuthService {
    keys: Arc<KeyService>,
    issuer: String,
    signing_keys: RwLock<Vec<SigningKeyRecord>>,
    /// Encrypts signing keys before they are stored, when the operator set a key.
    sealing_key: Option<SealingKey>,
}

impl OAuthService {
    /// Creates the service for `issuer`, the `iss` of every token.
    pub fn new(keys: Arc<KeyService>, issuer: String) -> Self {
        super::provider::install();
        Self {
            keys,
            issuer,
            signing_keys: RwLock::new(Vec::new()),
            sealing_key: None,
        }
    }

    /// Encrypts new signing keys with `key` before they are stored, and decrypts stored
    /// ones with it.
    pub fn with_sealing_key(mut self, key: Option<SealingKey>) -> Self {
        self.sealing_key = key;
        self
    }

    /// Returns the copy of `key` that goes to the store: sealed when a sealing key is set.
    fn for_store(&self, key: &SigningKeyRecord) -> Result<SigningKeyRecord, OAuthError> {
        let mut stored = key.clone();
        if let Some(sealing) = &self.sealing_key {
            stored.private_key = Zeroizing::new(sealing.seal(&key.kid, &key.private_key)?);
        }
        Ok(stored)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Loads the signing keys, and creates a key of `algorithm` when none can sign yet.
    pub async fn ensure_signing_key(&self, algorithm: SigningAlgorithm) -> Result<(), OAuthError> {
        self.reload_signing_keys().await?;
        if self.current_signing_key().is_some() {
            return Ok(());
        }
        let now = model::now();
        let key = SigningKeyRecord::generate(algorithm, now, now)?;
        let stored = self.for_store(&key)?;
        if self.keys.store().insert_first_signing_key(&stored).await? {
            tracing::info!(kid = %key.kid, algorithm = key.algorithm.as_str(), "created signing key");
        } else {
            tracing::info!("another process created a signing key; using it");
        }
        self.reload_signing_keys().await
    }

    /// Publishes a new signing key now, signs with it from `delay` on, and retires every
    /// older key once the last token it can have signed has expired.
    ///
    /// Resource servers that fetch the JWK set during `delay` know the new key before any
    /// token carries it. An older key signs until the new one takes over, and its tokens
    /// live at most [`client::MAX_TOKEN_LIFETIME_SECONDS`] longer, so it stays published
    /// until then.
    pub async fn rotate_signing_key(
        &self,
        algorithm: SigningAlgorithm,
        delay: time::Duration,
    ) -> Result<SigningKeyRecord, OAuthError> {
        let now = model::now();
        let signs_from = now + delay;
        let key = SigningKeyRecord::generate(algorithm, now, signs_from)?;
        let retire_at = signs_from + time::Duration::seconds(client::MAX_TOKEN_LIFETIME_SECONDS);
        self.keys
            .store()
            .rotate_signing_key(&self.for_store(&key)?, retire_at)
            .await?;
        tracing::info!(
            kid = %key.kid,
            algorithm = key.algorithm.as_str(),
            signs_from = %signs_from,
            "rotated signing key"
        );
        self.reload_signing_keys().await?;
        Ok(key)
    }

    /// Reads the published signing keys from the store.
    pub async fn reload_signing_keys(&self) -> Result<(), OAuthError> {
        let mut keys = self.keys.store().signing_keys().await?;
        for key in &mut keys {
            if self.sealing_key.is_some() && !is_sealed(&key.private_key) {
                tracing::warn!(
                    kid = %key.kid,
                    "signing key is stored unencrypted; rotate it to store an encrypted one"
                );
            }
            key.private_key = open(self.sealing_key.as_ref(), &key.kid, &key.private_key)?;
        }
        *self.signing_keys.write().expect("signing key lock") = keys;
        Ok(())
    }

    /// Returns the key that signs now: the one with the latest `signs_from` in the past.
    fn current_signing_key(&self) -> Option<SigningKeyRecord> {
        let now = OffsetDateTime::now_utc();
        self.signing_keys
            .read()
            .expect("signing key lock")
            .iter()
            .filter(|key| key.signs_from <= now && key.retired_at.is_none_or(|at| at > now))
            .max_by_key(|key| key.signs_from)
            .cloned()
    }

    /// Returns the JWK set of every published key.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .signing_keys
            .read()
            .expect("signing key lock")
            .iter()
            .map(|key| key.public_jwk.clone())
            .collect();
        json!({ "keys": keys })
    }

    /// Registers a client and gives it its first secret.
    pub async fn create_client(&self, new: NewClient) -> Result<CreatedClient, OAuthError> {
        let lifetime = client::check_lifetime(
            new.token_lifetime_seconds
                .unwrap_or(DEFAULT_TOKEN_LIFETIME_SECONDS),
        )
        .map_err(ServiceError::from)?;
        check_default_audience(&new.audiences, new.default_audience.as_deref())?;
        let client = ClientRecord {
            id: generate_client_id().map_err(ServiceError::Random)?,
            name: new.name.as_str().to_owned(),
            owner: new.owner.as_ref().map(|o| o.as_str().to_owned()),
            scopes: new.scopes.to_strings(),
            audiences: new.audiences,
            default_audience: new.default_audience,
            token_lifetime_seconds: lifetime,
            created_at: model::now(),
            jwks: new.jwks,
            version: 0,
        };
        self.keys.store().insert_client(&client).await?;
        let secret = self.add_secret(&client.id, None).await?;
        tracing::info!(client_id = %client.id, secret_key_id = %secret.record.id, "created client");
        Ok(CreatedClient { client, secret })
    }

    /// Loads one client.
    pub async fn get_client(&self, id: &str) -> Result<ClientRecord, OAuthError> {
        if !is_client_id(id) {
            return Err(client_not_found(id));
        }
        self.keys
            .store()
            .find_client(id)
            .await?
            .ok_or_else(|| client_not_found(id))
    }

    /// Lists clients, newest first.
    pub async fn list_clients(
        &self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<ClientRecord>, Option<Cursor>), OAuthError> {
        Ok(self.keys.store().list_clients(limit, after).await?)
    }

    /// Changes a client's fields.
    ///
    /// The client is read, changed and written back only over the version that was read,
    /// so a concurrent update of other fields is never overwritten. When another update
    /// came first, this one starts again from the new version.
    pub async fn update_client(
        &self,
        id: &str,
        update: ClientUpdate,
    ) -> Result<ClientRecord, OAuthError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let mut client = self.get_client(id).await?;
            update.apply(&mut client)?;
            if self.keys.store().replace_client(&client).await? {
                client.version += 1;
                self.keys.client_cache().invalidate(id);
                tracing::info!(client_id = %id, "updated client");
                return Ok(client);
            }
            tracing::debug!(client_id = %id, "client changed during the update; retrying");
        }
        Err(ServiceError::Contended(format!("client {id}")).into())
    }

    /// Deletes a client and revokes every one of its secrets.
    pub async fn delete_client(&self, id: &str) -> Result<(), OAuthError> {
        if !is_client_id(id) || !self.keys.store().delete_client(id, model::now()).await? {
            return Err(client_not_found(id));
        }
        self.keys.client_cache().invalidate(id);
        // The revoked secrets may be cached; the change feed drops them on every node.
        tracing::info!(client_id = %id, "deleted client and revoked its secrets");
        Ok(())
    }

    /// Issues another secret for a client, an API key bound to it.
    pub async fn add_secret(
        &self,
        client_id: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<CreatedKey, OAuthError> {
        let client = self.get_client(client_id).await?;
        let new = NewKey {
            name: KeyName::parse(&format!("client secret for {}", client.id))
                .map_err(ServiceError::from)?,
            owner: client
                .owner
                .as_deref()
                .map(Owner::parse)
                .transpose()
                .ok()
                .flatten(),
            scopes: Scopes::default(),
            env: KeyEnv::Live,
            metadata: Metadata::default(),
            expires_at,
            client_id: Some(client.id.clone()),
        };
        Ok(self.keys.create(new).await?)
    }

    /// Authenticates a client by id and secret. Every failure is the same
    /// [`OAuthError::InvalidClient`].
    pub async fn authenticate(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Arc<ClientRecord>, OAuthError> {
        if !is_client_id(client_id) {
            return Err(OAuthError::InvalidClient);
        }
        let verification = self.keys.verify(secret, &Scopes::default()).await?;
        let bound = verification
            .key
            .as_ref()
            .and_then(|key| key.client_id.as_deref());
        if verification.code != VerifyCode::Valid || bound != Some(client_id) {
            return Err(OAuthError::InvalidClient);
        }
        self.find_client(client_id)
            .await?
            .ok_or(OAuthError::InvalidClient)
    }

    /// Loads a client from the client cache while the change feed is connected, else from
    /// the store.
    async fn find_client(&self, id: &str) -> Result<Option<Arc<ClientRecord>>, OAuthError> {
        let trusted = self.keys.cache().is_trusted();
        let cache = self.keys.client_cache();
        let epoch = match cache.get(id) {
            Ok(client) if trusted => return Ok(Some(client)),
            Ok(_) => None,
            Err(epoch) => Some(epoch),
        };
        let Some(client) = self.keys.store().find_client(id).await? else {
            return Ok(None);
        };
        let client = Arc::new(client);
        if let (Some(epoch), true) = (epoch, trusted) {
            cache.insert(client.clone(), epoch);
        }
        Ok(Some(client))
    }

    /// Issues an access token to an authenticated client.
    ///
    /// `requested_scope` is the space-delimited `scope` parameter; none means every scope
    /// of the client. `audience` comes from `resource` or `audience`.
    pub fn issue_token(
        &self,
        client: &ClientRecord,
        requested_scope: Option<&str>,
        audience: Option<&str>,
    ) -> Result<IssuedToken, OAuthError> {
        let scope = granted_scope(client, requested_scope)?;
        let audience = match audience {
            Some(audience) if client.audiences.iter().any(|a| a == audience) => audience,
            Some(_) => {
                return Err(OAuthError::InvalidTarget(
                    "the requested resource or audience is not one this client may use".into(),
                ));
            }
            None => client.default_audience.as_deref().ok_or_else(|| {
                OAuthError::InvalidTarget(
                    "name the resource with `resource` or `audience`; this client has no default audience"
                        .into(),
                )
            })?,
        };

        let key = self
            .current_signing_key()
            .ok_or_else(|| SigningError::Unusable {
                kid: "-".into(),
                reason: "no signing key can sign now".into(),
            })?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = AccessTokenClaims {
            iss: &self.issuer,
            sub: &client.id,
            aud: audience,
            exp: now + client.token_lifetime_seconds,
            iat: now,
            jti: base62::random(JTI_LEN).map_err(ServiceError::Random)?,
            client_id: &client.id,
            scope: &scope,
        };
        let mut header = jsonwebtoken::Header::new(key.jwt_algorithm());
        // RFC 9068 section 2.1: access tokens carry the media type at+jwt.
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        let access_token = crate::secret::AccessToken::new(jsonwebtoken::encode(
            &header,
            &claims,
            &key.encoding_key(),
        )?);
        tracing::debug!(client_id = %client.id, kid = %key.kid, "issued access token");
        Ok(IssuedToken {
            access_token,
            expires_in: client.token_lifetime_seconds,
            scope,
        })
    }
}

impl OAuthService {
    /// Verifies an access token this server signed: signature against a published key,
    /// `typ` `at+jwt`, issuer and expiry. Returns `None` for anything else.
    pub fn decode_access_token(&self, token: &str) -> Option<VerifiedToken> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        let kid = header.kid?;
        let key = self
            .signing_keys
            .read()
            .expect("signing key lock")
            .iter()
            .find(|key| key.kid == kid)
            .cloned()?;
        if key.jwt_algorithm() != header.alg {
            return None;
        }
        let decoding = key.decoding_key()?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        jsonwebtoken::decode::<VerifiedToken>(token, &decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// Returns whether the token id `jti` was revoked: from memory while the change feed is
    /// connected, else from the store.
    async fn is_revoked(&self, jti: &str) -> Result<bool, OAuthError> {
        if self.keys.cache().is_trusted() {
            return Ok(self.keys.denied_tokens().contains(jti));
        }
        Ok(self.keys.store().is_token_revoked(jti).await?)
    }

    /// Introspects an access token or a Valet API key (RFC 7662). A token is inactive once
    /// revoked, and once its client is deleted.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, OAuthError> {
        if let Some(claims) = self.decode_access_token(token) {
            if self.is_revoked(&claims.jti).await? {
                return Ok(Introspection::Inactive);
            }
            let Some(client) = self.find_client(&claims.client_id).await? else {
                return Ok(Introspection::Inactive);
            };
            return Ok(Introspection::AccessToken { claims, client });
        }
        let verification = self.keys.verify(token, &Scopes::default()).await?;
        match (verification.code, verification.key) {
            (VerifyCode::Valid, Some(key)) => Ok(Introspection::ApiKey(key.to_record())),
            _ => Ok(Introspection::Inactive),
        }
    }

    /// Revokes an access token or an API key (RFC 7009). Unknown, expired and malformed
    /// tokens are accepted and change nothing.
    pub async fn revoke(&self, caller: &Caller, token: &str) -> Result<(), OAuthError> {
        if let Some(claims) = self.decode_access_token(token) {
            if let Caller::Client(client) = caller
                && client.id != claims.client_id
            {
                return Err(OAuthError::UnauthorizedClient(
                    "this token was not issued to the client that asks to revoke it".into(),
                ));
            }
            let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| {
                OAuthError::InvalidRequest("the token's exp is out of range".into())
            })?;
            self.keys
                .store()
                .revoke_token(&claims.jti, &claims.client_id, expires_at)
                .await?;
            self.keys.denied_tokens().insert(claims.jti.clone());
            tracing::info!(client_id = %claims.client_id, jti = %claims.jti, "revoked access token");
            return Ok(());
        }

        let Ok(parsed) = self.keys.format().parse(token) else {
            return Ok(());
        };
        let Some(stored) = self.keys.store().find_key(&parsed.id()).await? else {
            return Ok(());
        };
        if !stored.hash.matches(&parsed.hash()) {
            return Ok(());
        }
        if let Caller::Client(client) = caller
            && stored.record.client_id.as_deref() != Some(client.id.as_str())
        {
            return Err(OAuthError::UnauthorizedClient(
                "this key was not issued to the client that asks to revoke it".into(),
            ));
        }
        self.keys.revoke(&stored.record.id).await?;
        Ok(())
    }
}

/// The `client_assertion_type` of RFC 7523 section 2.2.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far in the future an assertion's `iat` or `nbf` may be, for clock skew.
const ASSERTION_SKEW_SECONDS: i64 = 5;
/// Maximum lifetime an assertion may claim, which bounds how long its `jti` is kept.
const MAX_ASSERTION_LIFETIME_SECONDS: i64 = 3_600;

#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: String,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

impl OAuthService {
    /// Authenticates a client by a `private_key_jwt` assertion (RFC 7523 section 3).
    ///
    /// The assertion must be signed by a key in the client's JWK set, with `iss` and `sub`
    /// the client id and `aud` this issuer or one of its endpoints. It must be unexpired,
    /// at most a few seconds early, and carry a `jti` never seen before. Every failure is
    /// [`OAuthError::InvalidClient`].
    pub async fn authenticate_assertion(
        &self,
        client_id: Option<&str>,
        assertion: &str,
    ) -> Result<Arc<ClientRecord>, OAuthError> {
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| OAuthError::InvalidClient)?;
        if !matches!(
            header.alg,
            jsonwebtoken::Algorithm::ES256 | jsonwebtoken::Algorithm::EdDSA
        ) {
            return Err(OAuthError::InvalidClient);
        }
        // The issuer is read before the signature check only to find the client's keys.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
            .map_err(|_| OAuthError::InvalidClient)?
            .claims;
        if client_id.is_some_and(|id| id != unverified.iss) || !is_client_id(&unverified.iss) {
            return Err(OAuthError::InvalidClient);
        }
        let client = self
            .find_client(&unverified.iss)
            .await?
            .ok_or(OAuthError::InvalidClient)?;
        let Some(jwks) = &client.jwks else {
            return Err(OAuthError::InvalidClient);
        };

        let audiences = [
            self.issuer.clone(),
            format!("{}/oauth/token", self.issuer),
            format!("{}/oauth/introspect", self.issuer),
            format!("{}/oauth/revoke", self.issuer),
        ];
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&audiences);
        validation.set_issuer(&[&client.id]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 0;
        validation.validate_nbf = false;

        let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
        let claims = keys
            .iter()
            .filter(|key| header.kid.is_none() || key["kid"].as_str() == header.kid.as_deref())
            .filter_map(|key| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(key.clone()).ok())
            .filter_map(|jwk| jsonwebtoken::DecodingKey::from_jwk(&jwk).ok())
            .find_map(|key| {
                jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).ok()
            })
            .ok_or(OAuthError::InvalidClient)?
            .claims;

        let now = OffsetDateTime::now_utc().unix_timestamp();
        let early = [claims.iat, claims.nbf]
            .into_iter()
            .flatten()
            .any(|at| at > now + ASSERTION_SKEW_SECONDS);
        let too_long = claims.exp > now + MAX_ASSERTION_LIFETIME_SECONDS;
        if claims.sub != client.id || early || too_long || claims.jti.is_empty() {
            return Err(OAuthError::InvalidClient);
        }
        // The assertion is accepted until the end of the second named by `exp`. The store
        // prunes by the exact instant, so the `jti` is kept one second past `exp`.
        let keep_until = OffsetDateTime::from_unix_timestamp(claims.exp.saturating_add(1))
            .map_err(|_| OAuthError::InvalidClient)?;
        if !self
            .keys
            .store()
            .record_assertion(&client.id, &claims.jti, keep_until)
            .await?
        {
            tracing::debug!(client_id = %client.id, "rejected a replayed client assertion");
            return Err(OAuthError::InvalidClient);
        }
        Ok(client)
    }
}

/// Computes the granted scope string: the requested scopes, all of which the client must
/// have, or every scope of the client when none are requested.
fn granted_scope(client: &ClientRecord, requested: Option<&str>) -> Result<String, OAuthError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !client.scopes.iter().any(|held| held == scope) {
            return Err(OAuthError::InvalidScope(
                "a requested scope is not one this client may be granted".into(),
            ));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

fn check_default_audience(audiences: &[String], default: Option<&str>) -> Result<(), OAuthError> {
    match default {
        Some(default) if !audiences.iter().any(|a| a == default) => Err(OAuthError::Service(
            InvalidField::new("default_audience", "must be one of `audiences`").into(),
        )),
        _ => Ok(()),
    }
}

fn client_not_found(id: &str) -> OAuthError {
    let shown = if is_client_id(id) {
        id
    } else {
        "(malformed id)"
    };
    OAuthError::Service(ServiceError::ClientNotFound(shown.to_owned()))
}
