//! Valet: a self-hosted authentication server for machine-to-machine traffic.
//!
//! ARCHITECTURE.md at the repository root maps the modules and states the invariants.

pub mod api;
pub mod cache;
pub mod cli;
pub mod http;
pub mod key;
pub mod metrics;
pub mod model;
pub mod oauth;
pub mod redact;
pub mod secret;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod usage;

/// The request parsers of the HTTP layer, for the fuzz targets in `fuzz/`. This is not a
/// stable interface: other code reaches them through the HTTP API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::clients::{CreateClientRequest, UpdateClientRequest};
    pub use crate::http::extract::parse_json;
    pub use crate::http::keys::{CreateKeyRequest, RollRequest, UpdateKeyRequest, VerifyRequest};
    pub use crate::http::oauth::{
        ClientCredentials, Form, OAuthErrorResponse, TokenParameters, basic_credentials,
        client_credentials,
    };
}
