//! `/v1/forward-auth`: the check that reverse proxies (nginx `auth_request`, Traefik
//! ForwardAuth, Envoy ext_authz) make before letting a request through.
//!
//! The proxy forwards the client's headers. A valid API key or access token gets 200 and
//! identity headers; anything else gets 401 or 403 with an RFC 6750 challenge.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::AppState;
use super::problem::FailedAttempt;
use crate::model::Scopes;
use crate::oauth::service::OAuthError;
use crate::service::{ServiceError, VerifyCode};

/// Header in which a proxy may name the required scopes, space-delimited.
const REQUIRED_SCOPES: &str = "x-valet-required-scopes";

#[derive(Debug, Default, Deserialize)]
pub struct ForwardParams {
    /// Required scopes, space-delimited as in OAuth.
    #[serde(default)]
    scope: Option<String>,
}

/// Maximum length in bytes of the scope list that a 403 challenge names. nginx reads the headers of an
/// `auth_request` response into `proxy_buffer_size`, 4 KiB or 8 KiB by default, and a
/// longer header would turn the 403 into a 500.
const MAX_CHALLENGE_SCOPE_BYTES: usize = 1024;

/// A refusal response, boxed because a response is large and refusals are the rare path.
type Refusal = Box<Response>;

/// Identity of an accepted credential, sent back to the proxy as headers.
struct Identity {
    key_id: Option<String>,
    client_id: Option<String>,
    scopes: String,
    owner: Option<String>,
    sunset: Option<OffsetDateTime>,
}

/// Checks the credential a proxy forwards, for any HTTP method.
///
/// The handler takes the whole request, because extracting `HeaderMap` would copy every
/// header on each call.
pub async fn forward_auth(State(state): State<AppState>, request: Request) -> Response {
    let Ok(Query(params)) = Query::<ForwardParams>::try_from_uri(request.uri()) else {
        return invalid_request("the query string is not valid; use ?scope=a%20b");
    };
    let headers = request.headers();
    // The query parameter wins over the header, so a client cannot lower the scopes the
    // proxy names in the URL. The header is read only when it is unambiguous: a second
    // copy, or bytes that are not text, could otherwise make the check require nothing.
    let scope_text = match params.scope {
        Some(scope) => Some(scope),
        None => match required_scopes_header(headers) {
            Ok(scope) => scope,
            Err(response) => return *response,
        },
    };
    let scope_list: Vec<&str> = scope_text
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    let Ok(required) = Scopes::parse("scope", &scope_list) else {
        return invalid_request("a required scope is not a valid scope token");
    };

    let credential = match credential(headers) {
        Ok(Some(credential)) => credential,
        Ok(None) => return challenge(StatusCode::UNAUTHORIZED, None, None),
        Err(response) => return *response,
    };

    // A JWT has two dots; a Valet API key has none.
    let identity = if credential.matches('.').count() == 2 {
        check_access_token(&state, &credential, &required).await
    } else {
        check_api_key(&state, &credential, &required).await
    };
    match identity {
        Ok(identity) => accepted(identity),
        Err(response) => *response,
    }
}

/// Reads `X-Valet-Required-Scopes`, rejecting a repeated header or one that is not text.
fn required_scopes_header(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(REQUIRED_SCOPES).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Box::new(invalid_request(
            "send X-Valet-Required-Scopes once, or name the scopes in ?scope=",
        )));
    }
    let text = value.to_str().map_err(|_| {
        Box::new(invalid_request(
            "X-Valet-Required-Scopes must be space-delimited scope tokens in ASCII",
        ))
    })?;
    Ok(Some(text.to_owned()))
}

/// Reads the credential from `Authorization: Bearer` or `X-API-Key`, never the query.
fn credential(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let mut api_key = headers.get_all("x-api-key").iter();
    let (authorization, api_key) = match (
        authorization.next(),
        authorization.next(),
        api_key.next(),
        api_key.next(),
    ) {
        (authorization, None, None, None) => (authorization, None),
        (None, None, api_key, None) => (None, api_key),
        _ => {
            return Err(Box::new(invalid_request(
                "send one credential: Authorization: Bearer or X-API-Key, once",
            )));
        }
    };
    if let Some(value) = api_key {
        let text = value
            .to_str()
            .map_err(|_| Box::new(invalid_token_response()))?;
        return Ok(Some(text.trim().to_owned()));
    }
    let Some(value) = authorization else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(Box::new(challenge(StatusCode::UNAUTHORIZED, None, None)));
    }
    let token = std::str::from_utf8(&bytes[7..]).map_err(|_| Box::new(invalid_token_response()))?;
    Ok(Some(token.trim().to_owned()))
}

async fn check_api_key(
    state: &AppState,
    key: &str,
    required: &Scopes,
) -> Result<Identity, Refusal> {
    let verification = state
        .service
        .verify(key, required)
        .await
        .map_err(service_refusal)?;
    match (verification.code, verification.key) {
        (VerifyCode::Valid, Some(record)) => Ok(Identity {
            key_id: Some(record.id.to_string()),
            client_id: record.client_id.clone(),
            scopes: record.scopes.join(" "),
            owner: record.owner.clone(),
            // A rolled key in its grace period reports when it stops working.
            sunset: record.successor_id.as_ref().and(record.expires_at),
        }),
        (VerifyCode::InsufficientScope, Some(_)) => Err(insufficient_scope(state, required)),
        _ => Err(Box::new(invalid_token_response())),
    }
}

async fn check_access_token(
    state: &AppState,
    token: &str,
    required: &Scopes,
) -> Result<Identity, Refusal> {
    let introspection = state.oauth.introspect(token).await.map_err(oauth_refusal)?;
    let crate::oauth::service::Introspection::AccessToken { claims, client } = introspection else {
        return Err(Box::new(invalid_token_response()));
    };
    let granted: Vec<&str> = claims.scope.split(' ').collect();
    if required
        .iter()
        .any(|scope| !granted.contains(&scope.as_str()))
    {
        return Err(insufficient_scope(state, required));
    }
    Ok(Identity {
        key_id: None,
        client_id: Some(claims.client_id.clone()),
        scopes: claims.scope.clone(),
        owner: client.owner.clone(),
        sunset: None,
    })
}

/// Builds the response for an error of the OAuth service. A failure of the key service or
/// its store gets the response of the API key path, such as 503 with `Retry-After` when
/// the store is unavailable. Any other error is an invalid token.
fn oauth_refusal(err: OAuthError) -> Refusal {
    match err {
        OAuthError::Service(err) => service_refusal(err),
        _ => Box::new(invalid_token_response()),
    }
}

/// Builds the response for a failure of the key service, as the rest of the API does: 503
/// with `Retry-After` when the store is unavailable, 429 when the key is throttled.
fn service_refusal(err: ServiceError) -> Refusal {
    Box::new(super::problem::ApiError::from(err).into_response())
}

fn accepted(identity: Identity) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    if let Some(key_id) = &identity.key_id {
        set("x-valet-key-id", key_id);
    }
    if let Some(client_id) = &identity.client_id {
        set("x-valet-client-id", client_id);
    }
    set("x-valet-scopes", &identity.scopes);
    if let Some(owner) = &identity.owner {
        set("x-valet-owner", owner);
    }
    // RFC 8594: Sunset carries an HTTP-date.
    if let Some(at) = identity.sunset
        && let Ok(date) = at.format(&Rfc2822)
    {
        set("sunset", &date.replace("+0000", "GMT"));
    }
    response
}

fn invalid_token_response() -> Response {
    let mut response = challenge(StatusCode::UNAUTHORIZED, Some("invalid_token"), None);
    response.extensions_mut().insert(FailedAttempt);
    response
}

fn invalid_request(description: &str) -> Response {
    let mut response = challenge(StatusCode::BAD_REQUEST, Some("invalid_request"), None);
    *response.body_mut() = axum::body::Body::from(description.to_owned());
    response
}

/// Builds the 403 for a credential that lacks one of `required`. Its challenge lists every
/// required scope, as RFC 6750 section 3 defines the `scope` attribute, so the caller
/// learns the whole set from one response. A scope that looks like a key is redacted,
/// because the scopes come from the request. A list longer than
/// [`MAX_CHALLENGE_SCOPE_BYTES`] is left out, so that the header fits a proxy's buffer.
fn insufficient_scope(state: &AppState, required: &Scopes) -> Refusal {
    let scopes: Vec<&str> = required.iter().map(|scope| scope.as_str()).collect();
    let prefix = state.service.format().prefix().as_str();
    let listed = crate::redact::redact_keys(&scopes.join(" "), prefix);
    Box::new(challenge(
        StatusCode::FORBIDDEN,
        Some("insufficient_scope"),
        Some(listed).filter(|listed| listed.len() <= MAX_CHALLENGE_SCOPE_BYTES),
    ))
}

/// Builds a response with an RFC 6750 section 3 `WWW-Authenticate: Bearer` challenge.
fn challenge(status: StatusCode, error: Option<&str>, scope: Option<String>) -> Response {
    let mut value = "Bearer realm=\"valet\"".to_owned();
    if let Some(error) = error {
        value.push_str(&format!(", error=\"{error}\""));
    }
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{scope}\""));
    }
    let mut response = status.into_response();
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
