//! Bearer authentication of management and verify callers, with RFC 6750 challenges.

use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::problem::ApiError;
use crate::model::{KeyRecord, Scopes};
use crate::service::VerifyCode;

/// Scope that grants every management operation.
pub const ADMIN_SCOPE: &str = "admin";
/// Scope that grants the verify endpoint only.
pub const VERIFY_SCOPE: &str = "keys:verify";

const REALM: &str = "valet";

/// Checks the request's bearer key and that it has at least one of the `accepted` scopes.
///
/// A missing or invalid key gets 401 and a malformed header 400, each with a
/// `WWW-Authenticate: Bearer` challenge (RFC 6750 section 3). A valid key without an
/// accepted scope gets 403 `insufficient_scope`.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    accepted: &[&str],
) -> Result<KeyRecord, ApiError> {
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
    let token = value
        .to_str()
        .ok()
        .and_then(|text| text.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Err(unauthorized(
            "invalid_credentials",
            "the Authorization header must use the Bearer scheme: Authorization: Bearer <key>",
            None,
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
    Ok(record)
}

fn unauthorized(code: &'static str, detail: impl Into<String>, error: Option<&str>) -> ApiError {
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"{REALM}\", error=\"{error}\""),
        None => format!("Bearer realm=\"{REALM}\""),
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, detail).with_challenge(challenge)
}
