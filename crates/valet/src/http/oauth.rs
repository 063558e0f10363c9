//! The OAuth 2.0 endpoints: `/oauth/token`, the JWK set and the server metadata.
//!
//! Every response of the token, introspection and revocation endpoints carries
//! `Cache-Control: no-store` and `Pragma: no-cache`, and every error is JSON with `error`
//! and `error_description`, as RFC 6749 section 5 requires. The JWK set is cacheable.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::extract::{BodyError, read_body};
use crate::oauth::client::ClientRecord;
use crate::oauth::service::{Caller, Introspection, JWT_BEARER_ASSERTION, OAuthError};

/// An RFC 6749 section 5.2 error response.
#[derive(Debug)]
pub struct OAuthErrorResponse {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// The client authenticated with HTTP Basic, so a 401 must challenge with Basic.
    basic_challenge: bool,
    /// Seconds for `Retry-After` on a 429 or 503.
    retry_after: Option<u64>,
}

impl OAuthErrorResponse {
    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }

    /// Builds a 429 for a throttled client address, with `Retry-After`.
    pub(super) fn too_many_attempts(
        throttled: crate::throttle::Throttled,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "too_many_attempts",
            description: description.into(),
            basic_challenge: false,
            retry_after: Some(throttled.retry_after_seconds()),
        }
    }

    /// Returns the HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Returns the RFC 6749 error code, such as `invalid_request`.
    pub fn error(&self) -> &'static str {
        self.error
    }

    /// Returns the `error_description` sent to the client.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn from_error(err: OAuthError, basic: bool) -> Self {
        let (status, error, description) = match err {
            OAuthError::InvalidRequest(text) => (StatusCode::BAD_REQUEST, "invalid_request", text),
            OAuthError::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed: check the client id and secret".to_owned(),
            ),
            OAuthError::InvalidScope(text) => (StatusCode::BAD_REQUEST, "invalid_scope", text),
            OAuthError::InvalidTarget(text) => (StatusCode::BAD_REQUEST, "invalid_target", text),
            OAuthError::UnauthorizedClient(text) => {
                (StatusCode::BAD_REQUEST, "unauthorized_client", text)
            }
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                err.to_string(),
            ),
            OAuthError::Service(crate::service::ServiceError::Throttled { throttled, .. }) => {
                return Self::too_many_attempts(
                    throttled,
                    "too many failed attempts with this client secret; wait for Retry-After \
                     seconds before trying again",
                );
            }
            OAuthError::Service(crate::service::ServiceError::Store(
                crate::store::StoreError::Unavailable(ref cause),
            )) => {
                tracing::warn!(error = %cause, "store unavailable at the token endpoint");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the store is not responding; retry shortly".to_owned(),
                )
            }
            other => {
                tracing::error!(error = %super::problem::error_chain(&other), "token request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the server failed to handle the request; the cause is in its log".to_owned(),
                )
            }
        };
        let retry_after = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        Self {
            status,
            error,
            description,
            basic_challenge: basic,
            retry_after,
        }
    }
}

impl IntoResponse for OAuthErrorResponse {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "error_description": self.description });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        no_store(headers);
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 section 5.2: a client that used Basic gets a Basic challenge.
            let challenge = if self.basic_challenge {
                "Basic realm=\"valet\""
            } else {
                "Bearer realm=\"valet\""
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.error == "invalid_client" {
            response
                .extensions_mut()
                .insert(super::problem::FailedAttempt);
        }
        response
    }
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The whole body of an OAuth request. A body that cannot be read gets an error in the
/// RFC 6749 format, like every other failure of these endpoints.
pub struct FormBody(Bytes);

impl FromRequest<AppState> for FormBody {
    type Rejection = OAuthErrorResponse;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (_, bytes) = read_body(req, state).await.map_err(|err| {
            let mut response = OAuthErrorResponse::invalid_request(err.detail());
            if err == BodyError::TooLarge {
                response.status = StatusCode::PAYLOAD_TOO_LARGE;
            }
            response
        })?;
        Ok(Self(bytes))
    }
}

/// Builds the 405 response to a method other than POST at an OAuth endpoint.
pub(super) fn method_not_allowed() -> OAuthErrorResponse {
    let mut response =
        OAuthErrorResponse::invalid_request("this endpoint accepts only the POST method");
    response.status = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// Parameters of a form body; [`Form::parse`] rejects a repeated one.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body; a repeated parameter is an
    /// `invalid_request` (RFC 6749 section 3.2).
    pub fn parse(
        headers: &HeaderMap,
        body: &[u8],
        prefix: &str,
    ) -> Result<Self, OAuthErrorResponse> {
        let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
        let (Some(content_type), None) = (content_types.next(), content_types.next()) else {
            return Err(OAuthErrorResponse::invalid_request(
                "send one Content-Type header, application/x-www-form-urlencoded",
            ));
        };
        let content_type = content_type
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if content_type.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(OAuthErrorResponse::invalid_request(
                "send the parameters as application/x-www-form-urlencoded",
            ));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(body) {
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(OAuthErrorResponse::invalid_request(format!(
                    "the parameter `{}` is repeated; send each parameter once",
                    crate::redact::redact_keys(&name, prefix)
                )));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self(pairs))
    }

    /// Returns the value of the parameter `name`, if the body has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Returns every parameter as a name and value, in the order of the body.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Client credentials from `client_secret_basic`, `client_secret_post` or
/// `private_key_jwt`.
pub enum ClientCredentials {
    Secret {
        client_id: String,
        secret: zeroize::Zeroizing<String>,
        basic: bool,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

impl ClientCredentials {
    /// Returns whether the client used HTTP Basic, which shapes a 401's challenge.
    pub fn basic(&self) -> bool {
        matches!(self, Self::Secret { basic: true, .. })
    }
}

/// Reads the client's credentials, rejecting two methods at once and a body `client_id`
/// that differs from the Basic one.
pub fn client_credentials(
    headers: &HeaderMap,
    form: &Form,
) -> Result<ClientCredentials, OAuthErrorResponse> {
    let basic = basic_credentials(headers)?;
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");
    let assertion_type = form.get("client_assertion_type");
    let assertion = form.get("client_assertion");
    let methods = usize::from(basic.is_some())
        + usize::from(body_secret.is_some())
        + usize::from(assertion_type.is_some() || assertion.is_some());
    if methods > 1 {
        return Err(OAuthErrorResponse::invalid_request(
            "use one client authentication method: Basic, client_secret or client_assertion",
        ));
    }

    if assertion_type.is_some() || assertion.is_some() {
        let (Some(assertion_type), Some(assertion)) = (assertion_type, assertion) else {
            return Err(OAuthErrorResponse::invalid_request(
                "send client_assertion_type and client_assertion together",
            ));
        };
        if assertion_type != JWT_BEARER_ASSERTION {
            return Err(OAuthErrorResponse::invalid_request(format!(
                "client_assertion_type must be {JWT_BEARER_ASSERTION}"
            )));
        }
        return Ok(ClientCredentials::Assertion {
            client_id: body_id.map(str::to_owned),
            assertion: assertion.to_owned(),
        });
    }

    match (basic, body_secret) {
        (Some((id, secret)), _) => {
            if body_id.is_some_and(|body_id| body_id != id) {
                return Err(OAuthErrorResponse::invalid_request(
                    "the client_id in the body differs from the one in the Authorization header",
                ));
            }
            Ok(ClientCredentials::Secret {
                client_id: id,
                secret,
                basic: true,
            })
        }
        (None, Some(secret)) => {
            let Some(id) = body_id else {
                return Err(OAuthErrorResponse::invalid_request(
                    "client_secret was sent without client_id",
                ));
            };
            Ok(ClientCredentials::Secret {
                client_id: id.to_owned(),
                secret: zeroize::Zeroizing::new(secret.to_owned()),
                basic: false,
            })
        }
        (None, None) => Err(OAuthErrorResponse {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description:
                "authenticate the client with HTTP Basic, client_secret or a client assertion"
                    .into(),
            basic_challenge: true,
            retry_after: None,
        }),
    }
}

/// Authenticates the client behind `credentials` with whichever method it used.
async fn authenticate_client(
    state: &AppState,
    credentials: &ClientCredentials,
) -> Result<std::sync::Arc<ClientRecord>, OAuthErrorResponse> {
    let result = match credentials {
        ClientCredentials::Secret {
            client_id, secret, ..
        } => state.oauth.authenticate(client_id, secret).await,
        ClientCredentials::Assertion {
            client_id,
            assertion,
        } => {
            state
                .oauth
                .authenticate_assertion(client_id.as_deref(), assertion)
                .await
        }
    };
    result.map_err(|err| OAuthErrorResponse::from_error(err, credentials.basic()))
}

/// Decodes `Authorization: Basic`, whose id and secret are form-urlencoded before Base64
/// (RFC 6749 section 2.3.1).
pub fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, zeroize::Zeroizing<String>)>, OAuthErrorResponse> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthErrorResponse::invalid_request(
            "send exactly one Authorization header",
        ));
    }
    let malformed = || OAuthErrorResponse {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: "the Authorization header is not valid HTTP Basic credentials".into(),
        basic_challenge: true,
        retry_after: None,
    };
    let bytes = value.as_bytes();
    if bytes.len() < 6 || !bytes[..6].eq_ignore_ascii_case(b"basic ") {
        return Err(malformed());
    }
    let decoded = zeroize::Zeroizing::new(
        STANDARD
            .decode(bytes[6..].trim_ascii())
            .map_err(|_| malformed())?,
    );
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return Err(malformed());
    };
    let id = form_decode(&decoded[..colon]);
    let secret = zeroize::Zeroizing::new(form_decode(&decoded[colon + 1..]));
    Ok(Some((id, secret)))
}

/// Decodes one application/x-www-form-urlencoded value: `+` is a space, `%XX` is a byte,
/// and invalid UTF-8 becomes U+FFFD. Every other byte, `&` and `=` included, is itself,
/// because the value is not part of a list of parameters.
fn form_decode(part: &[u8]) -> String {
    let spaced = zeroize::Zeroizing::new(
        part.iter()
            .map(|&byte| if byte == b'+' { b' ' } else { byte })
            .collect::<Vec<u8>>(),
    );
    let bytes =
        zeroize::Zeroizing::new(percent_encoding::percent_decode(&spaced).collect::<Vec<u8>>());
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The parameters of a client credentials token request (RFC 6749 section 4.4.2), read
/// before the client is authenticated.
pub struct TokenParameters<'a> {
    /// The space-delimited `scope`, if the request names one.
    pub scope: Option<&'a str>,
    /// The `resource` (RFC 8707) or `audience` that the token is for, if the request names
    /// one.
    pub audience: Option<&'a str>,
}

impl<'a> TokenParameters<'a> {
    /// Checks `grant_type` and reads `scope` and `resource` or `audience` from `form`.
    /// `basic` is whether the client used HTTP Basic, which sets the challenge of an error.
    pub fn from_form(form: &'a Form, basic: bool) -> Result<Self, OAuthErrorResponse> {
        match form.get("grant_type") {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthErrorResponse::from_error(
                    OAuthError::UnsupportedGrantType,
                    basic,
                ));
            }
            None => {
                return Err(OAuthErrorResponse::invalid_request(
                    "grant_type is missing: send grant_type=client_credentials",
                ));
            }
        }
        let audience = match (form.get("resource"), form.get("audience")) {
            (Some(_), Some(_)) => {
                return Err(OAuthErrorResponse::invalid_request(
                    "send either resource or audience, not both",
                ));
            }
            (resource, audience) => resource.or(audience),
        };
        Ok(Self {
            scope: form.get("scope"),
            audience,
        })
    }
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
}

/// `POST /oauth/token` with `grant_type=client_credentials` (RFC 6749 section 4.4).
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, OAuthErrorResponse> {
    let form = Form::parse(&headers, &body, state.service.format().prefix().as_str())?;
    let credentials = client_credentials(&headers, &form)?;
    let basic = credentials.basic();
    let parameters = TokenParameters::from_form(&form, basic)?;

    let client = authenticate_client(&state, &credentials).await?;
    let issued = state
        .oauth
        .issue_token(&client, parameters.scope, parameters.audience)
        .map_err(|err| OAuthErrorResponse::from_error(err, basic))?;

    let mut response = Json(TokenResponse {
        access_token: issued.access_token.expose(),
        token_type: "Bearer",
        expires_in: issued.expires_in,
        scope: issued.scope,
    })
    .into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// Authenticates the caller of the introspection or revocation endpoint: a client by any
/// method the token endpoint accepts, or `Authorization: Bearer` with an `admin` key.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Caller, OAuthErrorResponse> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .filter(|bytes| bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer "));
    let Some(bearer) = bearer else {
        let credentials = client_credentials(headers, form)?;
        let client = authenticate_client(state, &credentials).await?;
        return Ok(Caller::Client(client));
    };

    if headers.get_all(header::AUTHORIZATION).iter().count() > 1
        || form.get("client_secret").is_some()
        || form.get("client_assertion").is_some()
    {
        return Err(OAuthErrorResponse::invalid_request(
            "use one authentication method: a Bearer admin key or the client's credentials",
        ));
    }
    let invalid = || OAuthErrorResponse {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: "the bearer key is not a valid key with scope admin".into(),
        basic_challenge: false,
        retry_after: None,
    };
    let token = std::str::from_utf8(&bearer[7..])
        .map_err(|_| invalid())?
        .trim();
    let verification = state
        .service
        .verify(token, &crate::model::Scopes::default())
        .await
        .map_err(|err| OAuthErrorResponse::from_error(err.into(), false))?;
    let is_admin = verification.code == crate::service::VerifyCode::Valid
        && verification
            .key
            .is_some_and(|key| key.scopes.iter().any(|s| s == super::ADMIN_SCOPE));
    if !is_admin {
        return Err(invalid());
    }
    Ok(Caller::Admin)
}

/// `POST /oauth/introspect` (RFC 7662): `active` and the claims of a valid access token or
/// API key, and `{"active": false}` alone for anything else.
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, OAuthErrorResponse> {
    let form = Form::parse(&headers, &body, state.service.format().prefix().as_str())?;
    caller(&state, &headers, &form).await?;
    let Some(token) = form.get("token") else {
        return Err(OAuthErrorResponse::invalid_request(
            "the token parameter is missing",
        ));
    };

    let introspection = state
        .oauth
        .introspect(token)
        .await
        .map_err(|err| OAuthErrorResponse::from_error(err, false))?;
    let body = match introspection {
        Introspection::Inactive => json!({ "active": false }),
        Introspection::AccessToken { claims, .. } => json!({
            "active": true,
            "token_type": "Bearer",
            "scope": claims.scope,
            "client_id": claims.client_id,
            "sub": claims.sub,
            "aud": claims.aud,
            "iss": claims.iss,
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
        }),
        Introspection::ApiKey(key) => {
            let mut body = json!({
                "active": true,
                "token_type": "api_key",
                "scope": key.scopes.join(" "),
                "sub": key.id.to_string(),
                "key_id": key.id.to_string(),
                "env": key.env.as_str(),
                "iat": key.created_at.unix_timestamp(),
            });
            if let Some(owner) = &key.owner {
                body["owner"] = json!(owner);
            }
            if let Some(client_id) = &key.client_id {
                body["client_id"] = json!(client_id);
            }
            if let Some(expires_at) = key.expires_at {
                body["exp"] = json!(expires_at.unix_timestamp());
            }
            body
        }
    };
    let mut response = Json(body).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// `POST /oauth/revoke` (RFC 7009): revokes an access token or an API key, and returns 200
/// for a token it does not know.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Result<Response, OAuthErrorResponse> {
    let form = Form::parse(&headers, &body, state.service.format().prefix().as_str())?;
    let caller = caller(&state, &headers, &form).await?;
    let Some(token) = form.get("token") else {
        return Err(OAuthErrorResponse::invalid_request(
            "the token parameter is missing",
        ));
    };
    state
        .oauth
        .revoke(&caller, token)
        .await
        .map_err(|err| OAuthErrorResponse::from_error(err, false))?;
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// `GET /.well-known/jwks.json`: the public keys that verify access tokens.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.oauth.jwks()).into_response();
    // Resource servers cache the set; a short lifetime lets them see a new key soon.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

/// Client authentication methods that every endpoint accepting client authentication takes.
const AUTH_METHODS: [&str; 3] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];
/// Signature algorithms accepted on client assertions.
const ASSERTION_ALGORITHMS: [&str; 2] = ["ES256", "EdDSA"];

/// `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
pub async fn metadata(State(state): State<AppState>) -> Json<serde_json::Value> {
    let issuer = state.oauth.issuer();
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> Result<Option<(String, String)>, OAuthErrorResponse> {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(credentials));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        basic_credentials(&headers).map(|read| read.map(|(id, secret)| (id, secret.to_string())))
    }

    #[test]
    fn basic_keeps_ampersand_in_secret() {
        // Found by the basic_auth fuzz target: the secret was cut at the first `&`.
        let read = basic("id:secret&rest").unwrap();
        assert_eq!(read, Some(("id".into(), "secret&rest".into())));
    }

    #[test]
    fn basic_decodes_form_encoding() {
        let read = basic("my+client%21:p%40ss=word+%2B").unwrap();
        assert_eq!(read, Some(("my client!".into(), "p@ss=word +".into())));
    }

    #[test]
    fn basic_without_colon_is_invalid_client() {
        let err = basic("no-colon").unwrap_err();
        assert_eq!(err.error(), "invalid_client");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }
}
