//! A [tower] layer that admits requests carrying a Valet API key or access token, for
//! services built on axum, hyper or anything else that speaks tower.
//!
//! - **API keys** (`Authorization: Bearer <key>` or `X-API-Key: <key>`) are checked by the
//!   Valet server's `POST /v1/keys/verify`, with a verifier key of scope `keys:verify`.
//!   Results are cached for at most the *revocation bound* you choose, so a revoked key is
//!   rejected within that bound.
//! - **Access tokens** from Valet's `/oauth/token` are verified locally against its JWK
//!   set: signature, `typ` `at+jwt`, issuer, audience and expiry (RFC 9068). They are
//!   accepted only when an audience is configured.
//!
//! A rejected request gets an RFC 6750 answer without reaching the inner service: 401
//! `invalid_token` with `WWW-Authenticate`, 403 `insufficient_scope` naming the required
//! scopes, or 400 `invalid_request`; 503 with `Retry-After` when the Valet server cannot
//! be asked. An admitted request carries its [`Identity`] in its extensions, and the
//! response gets a `Sunset` header (RFC 8594) when the key was rolled and is in its grace
//! period.
//!
//! ```no_run
//! use axum::{Extension, Router, routing::get};
//! use valet_tower::{Identity, Valet};
//!
//! async fn list_orders(Extension(caller): Extension<Identity>) -> String {
//!     format!("orders of {}", caller.owner().unwrap_or("nobody"))
//! }
//!
//! # fn main() -> Result<(), valet_tower::ConfigError> {
//! let valet = Valet::builder("http://127.0.0.1:8080")
//!     .verifier_key(std::env::var("VALET_VERIFIER_KEY").unwrap_or_default())
//!     .audience("https://orders.example")
//!     .build()?;
//! let app: Router = Router::new().route(
//!     "/orders",
//!     get(list_orders).route_layer(valet.require(["orders:read"])),
//! );
//! # Ok(())
//! # }
//! ```

mod credential;
mod identity;
mod keys;
mod layer;
mod rejection;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

pub use credential::API_KEY_HEADER;
pub use identity::{Identity, KeyEnv, Principal};
pub use layer::{ResponseFuture, ValetAuth, ValetAuthLayer};
pub use rejection::Rejection;

/// Default revocation bound: the maximum time a valid key's verification result is reused.
pub const DEFAULT_REVOCATION_BOUND: Duration = Duration::from_secs(5);
/// Default shortest time between two fetches of the JWK set.
pub const DEFAULT_MIN_JWKS_REFRESH: Duration = Duration::from_secs(10);
/// Default age after which the JWK set is fetched again; Valet serves it with
/// `max-age=300`.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Default limit on one request to the Valet server.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of verification results kept, for admitted and rejected keys each.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// A configuration that cannot work, found by [`ValetBuilder::build`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid Valet server URL `{0}`: expected http:// or https:// and a host, \
         without a trailing slash, query or fragment, for example http://127.0.0.1:8080"
    )]
    InvalidUrl(String),
    #[error(
        "the Valet server URL `{0}` uses https, but valet-tower was built without TLS; \
         enable its `rustls` feature"
    )]
    TlsNotEnabled(String),
    #[error(
        "no verifier key: call `verifier_key` with a Valet API key of scope `keys:verify`, \
         which the layer uses to ask the server about the keys it receives"
    )]
    MissingVerifierKey,
    #[error(
        "invalid scope `{0}`: a scope is one or more printable ASCII characters without spaces, quotes or backslashes"
    )]
    InvalidScope(String),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A handle on one Valet server: its key checker and token verifier, with their caches.
/// Clone it freely; clones share the caches. Make layers with [`Valet::layer`] and
/// [`Valet::require`].
#[derive(Clone)]
pub struct Valet {
    inner: Arc<Shared>,
}

struct Shared {
    realm: String,
    keys: keys::KeyChecker,
    tokens: Option<tokens::TokenChecker>,
}

impl std::fmt::Debug for Valet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Valet")
            .field("realm", &self.inner.realm)
            .field("access_tokens", &self.inner.tokens.is_some())
            .finish_non_exhaustive()
    }
}

impl Valet {
    /// Starts configuring the layer for the Valet server at `url`, as this service reaches
    /// it, for example `http://127.0.0.1:8080`.
    pub fn builder(url: impl Into<String>) -> ValetBuilder {
        ValetBuilder {
            url: url.into(),
            verifier_key: None,
            audience: None,
            issuer: None,
            realm: "valet".to_owned(),
            revocation_bound: DEFAULT_REVOCATION_BOUND,
            min_jwks_refresh: DEFAULT_MIN_JWKS_REFRESH,
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }

    /// A layer that admits any valid credential, whatever its scopes.
    pub fn layer(&self) -> ValetAuthLayer {
        ValetAuthLayer::new(self.clone(), Vec::new())
    }

    /// A layer that admits valid credentials holding every scope in `scopes`.
    ///
    /// # Panics
    ///
    /// If a scope is not a valid scope token (RFC 6749 section 3.3), which is a mistake in
    /// the service's code that should stop it at start-up. [`Valet::try_require`] returns
    /// the error instead.
    pub fn require<I, S>(&self, scopes: I) -> ValetAuthLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        match self.try_require(scopes) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        }
    }

    /// Like [`Valet::require`], returning an invalid scope as an error.
    pub fn try_require<I, S>(&self, scopes: I) -> Result<ValetAuthLayer, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if let Some(bad) = scopes.iter().find(|scope| !is_scope_token(scope)) {
            return Err(ConfigError::InvalidScope(bad.clone()));
        }
        Ok(ValetAuthLayer::new(self.clone(), scopes))
    }
}

/// RFC 6749 section 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// Configuration of a [`Valet`] handle.
#[must_use]
pub struct ValetBuilder {
    url: String,
    verifier_key: Option<SecretString>,
    audience: Option<String>,
    issuer: Option<String>,
    realm: String,
    revocation_bound: Duration,
    min_jwks_refresh: Duration,
    jwks_max_age: Duration,
    request_timeout: Duration,
    cache_capacity: usize,
}

impl std::fmt::Debug for ValetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValetBuilder")
            .field("url", &self.url)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ValetBuilder {
    /// The Valet API key of scope `keys:verify` with which the layer asks the server about
    /// API keys. Required.
    pub fn verifier_key(mut self, key: impl Into<String>) -> Self {
        self.verifier_key = Some(SecretString::from(key.into()));
        self
    }

    /// The `aud` this service accepts in access tokens, as its clients request it with
    /// `resource` or `audience`. Without one, access tokens are rejected.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The `iss` of access tokens, which is the server's `--issuer`. Default: the URL given
    /// to [`Valet::builder`].
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The realm named in `WWW-Authenticate` challenges. Default `valet`.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// The longest time a revoked key may still be admitted: how long an answer about a
    /// valid key is reused. `Duration::ZERO` asks the server on every request. Default
    /// [`DEFAULT_REVOCATION_BOUND`].
    pub fn revocation_bound(mut self, bound: Duration) -> Self {
        self.revocation_bound = bound;
        self
    }

    /// The shortest time between two fetches of the JWK set, so that tokens naming unknown
    /// keys cannot make the layer hammer the server. Default [`DEFAULT_MIN_JWKS_REFRESH`].
    pub fn min_jwks_refresh(mut self, interval: Duration) -> Self {
        self.min_jwks_refresh = interval;
        self
    }

    /// Age after which the JWK set is fetched again. Default [`DEFAULT_JWKS_MAX_AGE`].
    pub fn jwks_max_age(mut self, age: Duration) -> Self {
        self.jwks_max_age = age;
        self
    }

    /// Limit on each request to the Valet server. Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Number of key answers kept, for admitted and rejected keys each. Default
    /// [`DEFAULT_CACHE_CAPACITY`].
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    pub fn build(self) -> Result<Valet, ConfigError> {
        let url = self.url.trim_end_matches('/').to_owned();
        let parsed: http::Uri = url
            .parse()
            .map_err(|_| ConfigError::InvalidUrl(url.clone()))?;
        let scheme = parsed.scheme_str();
        if !matches!(scheme, Some("http" | "https"))
            || parsed.host().is_none()
            || parsed.query().is_some()
            || url.contains('#')
        {
            return Err(ConfigError::InvalidUrl(url));
        }
        if scheme == Some("https") && !cfg!(feature = "rustls") {
            return Err(ConfigError::TlsNotEnabled(url));
        }
        let verifier_key = self
            .verifier_key
            .filter(|key| !secrecy::ExposeSecret::expose_secret(key).is_empty())
            .ok_or(ConfigError::MissingVerifierKey)?;

        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .build()?;
        let keys = keys::KeyChecker::new(
            http.clone(),
            &url,
            verifier_key,
            self.revocation_bound,
            self.cache_capacity,
        );
        let tokens = self.audience.map(|audience| {
            tokens::TokenChecker::new(
                http,
                &url,
                self.issuer.unwrap_or_else(|| url.clone()),
                audience,
                self.jwks_max_age,
                self.min_jwks_refresh,
            )
        });
        Ok(Valet {
            inner: Arc::new(Shared {
                realm: self.realm,
                keys,
                tokens,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rejects_bad_urls_and_a_missing_verifier_key() {
        for url in ["127.0.0.1:8080", "ftp://host", "http://host?x=1", "http://"] {
            let result = Valet::builder(url).verifier_key("k").build();
            assert!(
                matches!(result, Err(ConfigError::InvalidUrl(_))),
                "{url}: {result:?}"
            );
        }
        assert!(matches!(
            Valet::builder("http://127.0.0.1:8080").build(),
            Err(ConfigError::MissingVerifierKey)
        ));
    }

    #[test]
    fn try_require_rejects_invalid_scope_tokens() {
        let valet = Valet::builder("http://127.0.0.1:8080")
            .verifier_key("k")
            .build()
            .unwrap();
        assert!(valet.try_require(["orders:read"]).is_ok());
        for bad in ["", "a b", "quote\"", "back\\slash", "é"] {
            assert!(
                matches!(valet.try_require([bad]), Err(ConfigError::InvalidScope(_))),
                "{bad:?}"
            );
        }
    }
}
