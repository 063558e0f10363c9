//! Rejections as RFC 6750 responses: a `WWW-Authenticate: Bearer` challenge and a small JSON
//! body that says what was wrong and what to do.

use http::{HeaderValue, Response, StatusCode, header};

/// The reason a request was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No credential at all (RFC 6750 section 3.1: the challenge carries no error code).
    Missing,
    /// The request is malformed, for example two credentials.
    InvalidRequest(&'static str),
    /// The credential is unknown, revoked, expired, or not a credential.
    InvalidToken(&'static str),
    /// The credential is valid but lacks `missing`, one of `required`.
    InsufficientScope {
        required: Vec<String>,
        missing: String,
    },
    /// The Valet server could not be asked; the caller should retry.
    Unavailable,
}

/// Seconds a caller should wait after a 503 before retrying.
const RETRY_AFTER_SECONDS: &str = "1";

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` code of the JSON body, and of the challenge where RFC 6750 defines one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_) => "invalid_token",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Unavailable => "temporarily_unavailable",
        }
    }

    fn description(&self) -> String {
        match self {
            Self::Missing => {
                "send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`, \
                 or an access token as `Authorization: Bearer <token>`"
                    .to_owned()
            }
            Self::InvalidRequest(text) | Self::InvalidToken(text) => (*text).to_owned(),
            Self::InsufficientScope { missing, .. } => {
                format!("the credential lacks scope `{missing}`; use one that holds it")
            }
            Self::Unavailable => {
                "the credential could not be verified right now; retry after the Retry-After \
                 delay"
                    .to_owned()
            }
        }
    }

    /// The `WWW-Authenticate` value: realm, then the error and the required scopes.
    fn challenge(&self, realm: &str) -> String {
        let mut value = format!("Bearer realm=\"{realm}\"");
        match self {
            Self::Missing | Self::Unavailable => {}
            Self::InvalidRequest(_) | Self::InvalidToken(_) => {
                value.push_str(&format!(", error=\"{}\"", self.code()));
            }
            Self::InsufficientScope { required, .. } => {
                value.push_str(&format!(
                    ", error=\"insufficient_scope\", scope=\"{}\"",
                    required.join(" ")
                ));
            }
        }
        value
    }

    /// Builds the response, with a body of any type that a `String` converts into.
    pub fn into_response<B: From<String>>(self, realm: &str) -> Response<B> {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        let mut response = Response::new(B::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self == Self::Unavailable {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        } else if let Ok(value) = HeaderValue::from_str(&self.challenge(realm)) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge_of(rejection: Rejection) -> (StatusCode, Option<String>) {
        let response: Response<String> = rejection.into_response("orders");
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|value| value.to_str().unwrap().to_owned());
        (response.status(), challenge)
    }

    #[test]
    fn missing_credentials_get_a_challenge_without_error() {
        assert_eq!(
            challenge_of(Rejection::Missing),
            (
                StatusCode::UNAUTHORIZED,
                Some("Bearer realm=\"orders\"".into())
            )
        );
    }

    #[test]
    fn insufficient_scope_names_the_required_scopes() {
        let rejection = Rejection::InsufficientScope {
            required: vec!["orders:read".into(), "orders:write".into()],
            missing: "orders:write".into(),
        };
        assert_eq!(
            challenge_of(rejection),
            (
                StatusCode::FORBIDDEN,
                Some(
                    "Bearer realm=\"orders\", error=\"insufficient_scope\", \
                     scope=\"orders:read orders:write\""
                        .into()
                )
            )
        );
    }

    #[test]
    fn unavailable_asks_for_a_retry() {
        let response: Response<String> = Rejection::Unavailable.into_response("orders");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
