//! The authenticated caller, as handlers find it in the request extensions.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

/// Environment written into an API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEnv {
    Live,
    Test,
}

/// The authenticated party behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API key, by its public id. `client_id` is set when the key is a client secret.
    Key {
        id: String,
        client_id: Option<String>,
    },
    /// An OAuth client that presented an access token.
    Client { id: String },
}

/// The caller of an admitted request. Cheap to clone: the data sits behind an `Arc`.
///
/// In axum, take it with `Extension<Identity>`.
#[derive(Clone, Debug)]
pub struct Identity(Arc<Inner>);

/// The fields of an [`Identity`], filled by the module that checked the credential.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) principal: Principal,
    pub(crate) scopes: Vec<String>,
    pub(crate) owner: Option<String>,
    pub(crate) env: Option<KeyEnv>,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) sunset: Option<OffsetDateTime>,
}

impl Identity {
    pub(crate) fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn principal(&self) -> &Principal {
        &self.0.principal
    }

    /// Returns the API key's id, for a request made with an API key.
    pub fn key_id(&self) -> Option<&str> {
        match &self.0.principal {
            Principal::Key { id, .. } => Some(id),
            Principal::Client { .. } => None,
        }
    }

    /// Returns the OAuth client: the token's client, or the client whose secret the key is.
    pub fn client_id(&self) -> Option<&str> {
        match &self.0.principal {
            Principal::Key { client_id, .. } => client_id.as_deref(),
            Principal::Client { id } => Some(id),
        }
    }

    /// Returns every scope of the credential, not only those the route required.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|held| held == scope)
    }

    /// Returns the key's `owner`, your id for the customer or service. Access tokens have none.
    pub fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }

    /// Returns the environment written into an API key, or `None` for access tokens.
    pub fn env(&self) -> Option<KeyEnv> {
        self.0.env
    }

    /// Returns when the credential expires, if it does.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.0.expires_at
    }

    /// For a key that was rolled and is in its grace period, the instant it stops working.
    /// The layer sends it to the caller as a `Sunset` header.
    pub fn sunset(&self) -> Option<OffsetDateTime> {
        self.0.sunset
    }

    /// Returns the first of `required` that this identity lacks.
    pub(crate) fn missing_scope<'a>(&self, required: &'a [String]) -> Option<&'a str> {
        required
            .iter()
            .find(|scope| !self.has_scope(scope))
            .map(String::as_str)
    }

    /// Whether the credential's own expiry has passed, checked on every use of a cached
    /// answer.
    pub(crate) fn has_expired(&self, now: OffsetDateTime) -> bool {
        self.0.expires_at.is_some_and(|at| at <= now)
    }
}
