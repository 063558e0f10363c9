//! Bearer authentication of management and verify callers, with RFC 6750 challenges.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::problem::ApiError;
use crate::model::Scopes;
use crate::service::{VerifiedKey, VerifyCode};

/// Scope that grants every management operation.
pub const ADMIN_SCOPE: &str = "admin";
/// Scope that grants the verify endpoint only.
pub const VERIFY_SCOPE: &str = "keys:verify";

const REALM: &str = "valet";

/// The caller's key, checked to hold scope `admin`. As the first argument of a handler it
/// runs before the path and body are read, so an unauthenticated caller learns nothing
/// about the request format.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, &[ADMIN_SCOPE]).await?;
        Ok(Self)
    }
}

/// The caller's key, checked to hold scope `admin` or `keys:verify`.
pub struct Verifier;

impl FromRequestParts<AppState> for Verifier {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, &[ADMIN_SCOPE, VERIFY_SCOPE]).await?;
        Ok(Self)
    }
}

/// Checks the request's bearer key and that it has at least one of the `accepted` scopes.
///
/// A missing or invalid key gets 401 and a malformed header 400, each with a
/// `WWW-Authenticate: Bearer` challenge (RFC 6750 section 3). A valid key without an
/// accepted scope gets 403 `insufficient_scope`.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    accepted: &[&str],
) -> Result<VerifiedKey, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(unauthorized(
            "missing_credentials",
            "this endpoint needs an API key: send Authorization: Bearer <key>",
            None,
        ));
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "send exactly one Authorization header",
        )
        .with_challenge(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_request\""
        )));
    }
    let bytes = value.as_bytes();
    let scheme_ok = bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"bearer");
    if !scheme_ok || (bytes.len() > 6 && bytes[6] != b' ') {
        return Err(unauthorized(
            "invalid_credentials",
            "the Authorization header must use the Bearer scheme: Authorization: Bearer <key>",
            None,
        ));
    }
    let token = bytes.get(7..).unwrap_or_default().trim_ascii();
    if token.is_empty() {
        return Err(unauthorized(
            "invalid_credentials",
            "the Authorization header has no key after `Bearer`: send Authorization: Bearer <key>",
            None,
        ));
    }
    let Ok(token) = std::str::from_utf8(token) else {
        return Err(unauthorized(
            "invalid_token",
            "the bearer key is not valid: it contains bytes that are not UTF-8",
            Some("invalid_token"),
        ));
    };

    let verification = state.service.verify(token, &Scopes::default()).await?;
    let (VerifyCode::Valid, Some(record)) = (verification.code, verification.key) else {
        let reason = verification.message.unwrap_or_default();
        return Err(unauthorized(
            "invalid_token",
            format!("the bearer key is not valid: {reason}"),
            Some("invalid_token"),
        ));
    };

    let allowed = record
        .scopes
        .iter()
        .any(|held| accepted.contains(&held.as_str()));
    if !allowed {
        let expected = accepted.join(" ");
        let detail = if accepted.len() == 1 {
            format!("the bearer key {} lacks the scope `{expected}`", record.id)
        } else {
            format!(
                "the bearer key {} needs one of the scopes `{}`",
                record.id,
                accepted.join("`, `")
            )
        };
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", detail).with_challenge(
                format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{expected}\""
                ),
            ),
        );
    }
    // Management actions logged inside this request name the key that asked for them.
    tracing::Span::current().record("actor", record.id.as_str());
    Ok(record)
}

fn unauthorized(code: &'static str, detail: impl Into<String>, error: Option<&str>) -> ApiError {
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"{REALM}\", error=\"{error}\""),
        None => format!("Bearer realm=\"{REALM}\""),
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, detail).with_challenge(challenge)
}
