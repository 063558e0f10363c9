//! Access tokens: RFC 9068 JWTs verified locally against the Valet server's JWK set.
//!
//! The set is fetched on first use, again when it is older than its maximum age, and again
//! when a token names a `kid` the set lacks (a signing-key rotation). Fetches are at least
//! the minimum refresh interval apart, so tokens with made-up `kid`s cannot flood the
//! server. A revoked token stays valid here until it expires: local verification cannot
//! see revocations, which is why access tokens are short-lived.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::identity::{Identity, Inner, Principal};
use crate::rejection::Rejection;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 5;

/// A public key from the set, with the one algorithm it verifies.
#[derive(Clone)]
struct VerifyingKey {
    key: Arc<DecodingKey>,
    algorithm: Algorithm,
}

/// The claims of RFC 9068 section 2.2 that make an identity.
#[derive(Deserialize)]
struct Claims {
    client_id: String,
    #[serde(default)]
    scope: String,
    exp: i64,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    fetched: Option<Instant>,
}

/// Verifies access tokens for one audience.
pub struct TokenChecker {
    http: reqwest::Client,
    jwks_url: String,
    issuer: String,
    audience: String,
    max_age: Duration,
    min_refresh_interval: Duration,
    set: RwLock<KeySet>,
    /// Held while fetching; remembers when the last fetch started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl TokenChecker {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        issuer: String,
        audience: String,
        max_age: Duration,
        min_refresh_interval: Duration,
    ) -> Self {
        Self {
            http,
            jwks_url: format!("{base_url}/.well-known/jwks.json"),
            issuer,
            audience,
            max_age,
            min_refresh_interval,
            set: RwLock::new(KeySet::default()),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// Verifies `token`'s type, signature, issuer, audience and lifetime.
    pub async fn check(&self, token: &str) -> Result<Identity, Rejection> {
        let invalid = || Rejection::InvalidToken("the access token is not valid");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        // RFC 9068 section 4: the type tells access tokens from other JWTs, such as ID
        // tokens or client assertions, signed by the same keys.
        let typ = header.typ.as_deref().unwrap_or_default();
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(Rejection::InvalidToken("the JWT is not an access token"));
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let key = self.key(&kid).await?.ok_or(Rejection::InvalidToken(
            "the access token was not signed by a current Valet signing key",
        ))?;
        if header.alg != key.algorithm {
            return Err(invalid());
        }

        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => {
                    Rejection::InvalidToken("the access token has expired; request a new one")
                }
                ErrorKind::InvalidAudience => Rejection::InvalidToken(
                    "the access token is for another audience; request one for this service",
                ),
                ErrorKind::InvalidIssuer => {
                    // The signature checked out, so Valet issued the token: the layer's
                    // issuer setting differs from the server's --issuer.
                    tracing::warn!(
                        expected = %self.issuer,
                        "access token signed by Valet names another issuer; set the \
                         layer's issuer to the server's --issuer"
                    );
                    Rejection::InvalidToken(
                        "the access token names another issuer than this service expects",
                    )
                }
                _ => invalid(),
            }
        })?;

        let claims = data.claims;
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| invalid())?;
        Ok(Identity::new(Inner {
            principal: Principal::Client {
                id: claims.client_id,
            },
            scopes: claims
                .scope
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            owner: None,
            env: None,
            expires_at: Some(expires_at),
            sunset: None,
        }))
    }

    /// Returns the key named `kid`, refreshing the set when it is missing or old and the
    /// minimum interval allows.
    async fn key(&self, kid: &str) -> Result<Option<VerifyingKey>, Rejection> {
        if let Some(key) = self.fresh_key(kid) {
            return Ok(Some(key));
        }

        let mut last_fetch = self.refresh.lock().await;
        // Another request may have refreshed while this one waited.
        if let Some(key) = self.fresh_key(kid) {
            return Ok(Some(key));
        }
        let (known, ever_fetched) = {
            let set = self.set.read().unwrap_or_else(|e| e.into_inner());
            (set.keys.get(kid).cloned(), set.fetched.is_some())
        };
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return if ever_fetched {
                Ok(known)
            } else {
                Err(Rejection::Unavailable)
            };
        }

        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let key = keys.get(kid).cloned();
                *self.set.write().unwrap_or_else(|e| e.into_inner()) = KeySet {
                    keys,
                    fetched: Some(Instant::now()),
                };
                Ok(key)
            }
            // An old set still verifies the keys it holds until the server is back.
            Err(()) if ever_fetched => Ok(known),
            Err(()) => Err(Rejection::Unavailable),
        }
    }

    /// The key from a set younger than the maximum age.
    fn fresh_key(&self, kid: &str) -> Option<VerifyingKey> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let fetched = set.fetched?;
        if fetched.elapsed() >= self.max_age {
            return None;
        }
        set.keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, ()> {
        let response = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|err| {
                tracing::warn!(error = %err, "could not fetch the Valet JWK set");
            })?;
        let set: JwkSet = response.json().await.map_err(|err| {
            tracing::error!(error = %err, url = %self.jwks_url, "the JWK set was not understood");
        })?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(algorithm)) = (&jwk.common.key_id, algorithm_of(&jwk.algorithm))
            else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(
                        kid.clone(),
                        VerifyingKey {
                            key: Arc::new(key),
                            algorithm,
                        },
                    );
                }
                Err(err) => tracing::warn!(kid = %kid, error = %err, "skipping an unusable JWK"),
            }
        }
        tracing::debug!(keys = keys.len(), "fetched the Valet JWK set");
        Ok(keys)
    }
}

/// The algorithm a public key verifies, from the key's own type, never from a token: only
/// P-256 for ES256 and Ed25519 for EdDSA, which are what Valet signs with.
fn algorithm_of(parameters: &AlgorithmParameters) -> Option<Algorithm> {
    match parameters {
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}
