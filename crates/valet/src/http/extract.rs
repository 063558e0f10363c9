//! Request extractors whose rejections are problem details with a stable code.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::ApiError;
use crate::key::KeyId;
use crate::oauth::client::{CLIENT_ID_LEN, is_client_id};
use crate::redact::redact_keys;

/// A JSON request body. The body must be non-empty and sent as `application/json`.
pub struct ApiJson<T>(pub T);

/// A JSON request body that may be left out; an empty body yields `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "missing_body",
                "the request body is empty; send a JSON object",
            ));
        }
        decode(&headers, &bytes, state).map(Self)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        decode(&headers, &bytes, state).map(Self)
    }
}

/// Failure to read a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The body, or the `Content-Length` that announces it, is over [`super::MAX_BODY_BYTES`].
    TooLarge,
    /// The connection failed or the framing was broken, such as an invalid chunk size.
    Unreadable,
}

impl BodyError {
    /// Returns the message for the client: what was wrong and what to do.
    pub fn detail(self) -> String {
        match self {
            Self::TooLarge => format!(
                "the request body is larger than {} bytes; send a smaller body",
                super::MAX_BODY_BYTES
            ),
            Self::Unreadable => "the request body could not be read: check its Content-Length \
                                 or chunked encoding"
                .to_owned(),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                err.detail(),
            ),
            BodyError::Unreadable => ApiError::bad_request("unreadable_body", err.detail()),
        }
    }
}

/// Reads the whole body of `req`, at most [`super::MAX_BODY_BYTES`].
///
/// A `Content-Length` over the limit is rejected before any of the body is read, so a
/// client that announces a huge body and sends none gets its 413 at once instead of a
/// 408 when the request timeout ends.
pub async fn read_body(req: Request, state: &AppState) -> Result<(HeaderMap, Bytes), BodyError> {
    // The headers are moved out rather than copied; reading the body needs only the body
    // and the limit in the extensions.
    let (mut parts, body) = req.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    let req = Request::from_parts(parts, body);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if announced.is_some_and(|length| length > super::MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BodyError::TooLarge
        } else {
            BodyError::Unreadable
        }
    })?;
    Ok((headers, bytes))
}

fn decode<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
    state: &AppState,
) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with the header Content-Type: application/json",
        ));
    }
    parse_json(bytes, state.service.format().prefix().as_str())
}

/// Parses a JSON object into `T`. A problem names the field that failed and replaces
/// anything that could be a key of `prefix` with `[REDACTED]`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    // serde would also accept an array, matching fields by position; the API takes
    // objects only.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{')
        && serde_json::from_slice::<serde_json::Value>(bytes).is_ok()
    {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }

    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => Ok(value),
            Err(err) => Err(json_error(&err, None, prefix)),
        },
        Err(err) => {
            let path = err.path().to_string();
            Err(json_error(err.inner(), Some(&path), prefix))
        }
    }
}

/// Turns a JSON error into a problem that names the field at `path` when there is one.
fn json_error(err: &serde_json::Error, path: Option<&str>, prefix: &str) -> ApiError {
    let detail = redact_keys(&err.to_string(), prefix);
    if !err.is_data() {
        return ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {detail}"),
        );
    }
    let field = match path {
        Some(path) if path != "." => format!("`{}`: ", redact_keys(path, prefix)),
        _ => String::new(),
    };
    ApiError::unprocessable(
        "invalid_body",
        format!("the JSON body does not match the expected fields: {field}{detail}"),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The `{id}` path segment, parsed as a key id.
pub struct KeyIdPath(pub KeyId);

impl FromRequestParts<AppState> for KeyIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let invalid = || {
            ApiError::bad_request(
                "invalid_key_id",
                "the key id in the path is not valid: a key id is 8 characters from 0-9, A-Z and a-z",
            )
        };
        let text = path_id(parts, state).await.ok_or_else(invalid)?;
        KeyId::parse(&text).map(Self).map_err(|_| invalid())
    }
}

/// Reads the `{id}` path segment, or returns `None` when it is not UTF-8 once
/// percent-decoded.
async fn path_id(parts: &mut Parts, state: &AppState) -> Option<String> {
    let Path(text) = Path::<String>::from_request_parts(parts, state)
        .await
        .ok()?;
    Some(text)
}

/// The `{id}` path segment, checked to have the shape of a client id.
pub struct ClientIdPath(pub String);

impl FromRequestParts<AppState> for ClientIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let invalid = || {
            ApiError::bad_request(
                "invalid_client_id",
                format!(
                    "the client id in the path is not valid: a client id is {CLIENT_ID_LEN} \
                     characters from 0-9, A-Z and a-z"
                ),
            )
        };
        let text = path_id(parts, state).await.ok_or_else(invalid)?;
        if !is_client_id(&text) {
            return Err(invalid());
        }
        Ok(Self(text))
    }
}
