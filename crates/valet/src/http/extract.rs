//! Request extractors whose rejections are problem details with a stable code.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::ApiError;
use crate::key::KeyId;
use crate::redact::redact_keys;

/// A JSON request body. The body must be non-empty and sent as `application/json`.
pub struct ApiJson<T>(pub T);

/// A JSON request body that may be left out; an empty body yields `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (json, bytes) = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "missing_body",
                "the request body is empty; send a JSON object",
            ));
        }
        decode(json, &bytes, state).map(Self)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (json, bytes) = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        decode(json, &bytes, state).map(Self)
    }
}

/// Reads the whole body, and whether the request declared it as JSON. The content type is
/// read before the body consumes the request, so the headers need no copy, but it is only
/// checked after the body has been read, so that a body error takes precedence.
async fn read_body(req: Request, state: &AppState) -> Result<(bool, Bytes), ApiError> {
    let json = is_json(req.headers());
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::bad_request(
                "unreadable_body",
                "the request body could not be read: check its Content-Length or chunked encoding",
            )
        }
    })?;
    Ok((json, bytes))
}

fn decode<T: DeserializeOwned>(json: bool, bytes: &[u8], state: &AppState) -> Result<T, ApiError> {
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with the header Content-Type: application/json",
        ));
    }
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

    let prefix = state.service.format().prefix().as_str();
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
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        KeyId::parse(&text).map(Self).map_err(|_| invalid())
    }
}
