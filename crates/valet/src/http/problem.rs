//! Errors of the management and verify API as RFC 9457 problem details.
//!
//! Every error leaves as `application/problem+json` with a stable `code` that clients can
//! match on. A 5xx response carries a generic detail, and the full error is logged once here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;
use crate::store::StoreError;
use crate::throttle::Throttled;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Marks a response that rejected a presented credential, so the throttling middleware
/// counts a failure for the client's address.
#[derive(Clone, Copy, Debug)]
pub struct FailedAttempt;

/// An error response: status, stable code and a detail that states what to do next.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    www_authenticate: Option<String>,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl ApiError {
    /// Creates an error with `status`, a stable `code` and a human-readable `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            www_authenticate: None,
            retry_after: None,
        }
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.www_authenticate = Some(challenge);
        self
    }

    /// Returns the stable code, for logs and tests.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Returns the HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Returns the detail sent to the client.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// Builds a 503 for a store that cannot be reached, with `Retry-After`.
    pub fn store_unavailable() -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the key store is not answering; retry after the number of seconds in Retry-After",
        );
        err.retry_after = Some(RETRY_AFTER_SECONDS);
        err
    }

    /// Builds a 429 for a throttled client address or key id, with `Retry-After`.
    pub fn too_many_attempts(throttled: Throttled, detail: &str) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", detail);
        err.retry_after = Some(throttled.retry_after_seconds());
        err
    }

    /// Builds a 500 and logs its cause, which is never sent to the client.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(cause), "request failed with an internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle the request; the cause is in its log",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "key_not_found", err.to_string())
            }
            ServiceError::ClientNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "client_not_found", err.to_string())
            }
            ServiceError::AlreadyRolled { .. } => {
                Self::new(StatusCode::CONFLICT, "key_already_rolled", err.to_string())
            }
            ServiceError::RollRevoked(_) => {
                Self::new(StatusCode::CONFLICT, "key_revoked", err.to_string())
            }
            ServiceError::RollExpired(_) => {
                Self::new(StatusCode::CONFLICT, "key_expired", err.to_string())
            }
            ServiceError::Contended(_) => {
                Self::new(StatusCode::CONFLICT, "update_conflict", err.to_string())
            }
            ServiceError::InvalidField(ref invalid) => {
                Self::unprocessable("invalid_field", invalid.to_string())
            }
            ServiceError::Throttled { ref throttled, .. } => Self::too_many_attempts(
                *throttled,
                "too many failed attempts with this key; wait for Retry-After seconds before \
                 trying again, and check that the key is the one Valet issued",
            ),
            ServiceError::Store(StoreError::Unavailable(ref cause)) => {
                tracing::warn!(error = %cause, "key store unavailable");
                Self::store_unavailable()
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let json = serde_json::to_vec(&body).expect("problem details serialize");
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // A rejected credential counts against the client's address.
        if self.status == StatusCode::UNAUTHORIZED && self.code == "invalid_token" {
            response.extensions_mut().insert(FailedAttempt);
        }
        response
    }
}

/// Writes an error and its sources on one line, outermost first.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
