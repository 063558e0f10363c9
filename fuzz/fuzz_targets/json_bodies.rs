//! Fuzzes the JSON request bodies of `/v1/keys` (create, update, roll, verify) and
//! `/v1/clients` (create, update) through the handlers' own parsing and validation.
//!
//! Input: a request body, tried as each of the six bodies. A rejection must be a problem
//! with a known code that repeats no key-like text. An accepted body, written back as
//! JSON, must parse to the same values, which must lie within the documented limits.

#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use valet::fuzzing::{
    CreateClientRequest, CreateKeyRequest, RollRequest, UpdateClientRequest, UpdateKeyRequest,
    VerifyRequest, parse_json,
};
use valet::http::ApiError;
use valet::key::KeyFormat;
use valet::model::{self, KeyName, KeyUpdate, MAX_METADATA_BYTES, Owner, Scopes};
use valet::oauth::client::{MAX_CLIENT_KEYS, check_audience};
use valet::oauth::service::{ClientUpdate, NewClient};
use valet::service::{MAX_GRACE, NewKey, check_roll};
use valet_fuzz::assert_no_key_text;

const PREFIX: &str = "vk";

fuzz_target!(|data: &[u8]| {
    // `ApiJson` rejects an empty body before parsing; only the roll body may be empty.
    if !data.is_empty() {
        check_create_key(data);
        check_update_key(data);
        check_verify(data);
        check_create_client(data);
        check_update_client(data);
    }
    check_roll_body(data);
});

/// Parses `bytes` as the handlers do, checking a rejection and that an accepted body is
/// a JSON object.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match parse_json::<T>(bytes, PREFIX) {
        Ok(value) => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            assert_eq!(first, Some(&b'{'), "accepted a body that is not an object");
            assert!(serde_json::from_slice::<Value>(bytes).is_ok());
            Some(value)
        }
        Err(err) => {
            check_rejection(&err);
            None
        }
    }
}

fn check_rejection(err: &ApiError) {
    let expected_status = match err.code() {
        "malformed_json" => StatusCode::BAD_REQUEST,
        "invalid_body" | "invalid_field" | "empty_update" => StatusCode::UNPROCESSABLE_ENTITY,
        other => panic!("unexpected problem code {other}"),
    };
    assert_eq!(err.status(), expected_status);
    assert_no_key_text(err.detail(), PREFIX);
}

/// Returns the validated value, or checks the rejection and returns `None`.
fn validated<T>(result: Result<T, ApiError>) -> Option<T> {
    result.map_err(|err| check_rejection(&err)).ok()
}

fn check_create_key(data: &[u8]) {
    let Some(request) = parse::<CreateKeyRequest>(data) else {
        return;
    };
    let Some(new) = validated(request.into_new_key()) else {
        return;
    };
    check_metadata_size(new.metadata.as_map());
    if let Some(at) = new.expires_at {
        check_expiry(at);
    }

    let again = reparse(&create_key_body(&new), |request: CreateKeyRequest| {
        request.into_new_key()
    });
    assert_eq!(again.name, new.name);
    assert_eq!(again.owner, new.owner);
    assert_eq!(again.scopes, new.scopes);
    assert_eq!(again.env, new.env);
    assert!(same_json(
        &Value::Object(again.metadata.into_map()),
        &Value::Object(new.metadata.into_map())
    ));
    assert_eq!(again.expires_at, new.expires_at);
}

fn create_key_body(new: &NewKey) -> Value {
    let mut body = json!({
        "name": new.name.as_str(),
        "scopes": new.scopes.to_strings(),
        "env": new.env.as_str(),
        "metadata": new.metadata.as_map(),
    });
    if let Some(owner) = &new.owner {
        body["owner"] = json!(owner.as_str());
    }
    if let Some(at) = new.expires_at {
        body["expires_at"] = json!(rfc3339(at));
    }
    body
}

fn check_update_key(data: &[u8]) {
    let Some(request) = parse::<UpdateKeyRequest>(data) else {
        return;
    };
    let Some(update) = validated(request.into_update()) else {
        return;
    };
    assert!(!update.is_empty());
    if let Some(metadata) = &update.metadata {
        check_metadata_size(metadata.as_map());
    }

    let again = reparse(&update_key_body(&update), |request: UpdateKeyRequest| {
        request.into_update()
    });
    assert_eq!(again.name, update.name);
    assert_eq!(again.owner, update.owner);
    assert_eq!(again.scopes, update.scopes);
    match (again.metadata, update.metadata) {
        (Some(again), Some(first)) => assert!(same_json(
            &Value::Object(again.into_map()),
            &Value::Object(first.into_map())
        )),
        (again, first) => assert_eq!(again.is_some(), first.is_some()),
    }
}

fn update_key_body(update: &KeyUpdate) -> Value {
    let mut body = update_body(
        update.name.as_ref(),
        update.owner.as_ref(),
        update.scopes.as_ref(),
    );
    if let Some(metadata) = &update.metadata {
        body.insert("metadata".into(), json!(metadata.as_map()));
    }
    Value::Object(body)
}

/// Writes the fields that key and client updates share, each only when it is set.
fn update_body(
    name: Option<&KeyName>,
    owner: Option<&Option<Owner>>,
    scopes: Option<&Scopes>,
) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(name) = name {
        body.insert("name".into(), json!(name.as_str()));
    }
    if let Some(owner) = owner {
        body.insert("owner".into(), json!(owner.as_ref().map(Owner::as_str)));
    }
    if let Some(scopes) = scopes {
        body.insert("scopes".into(), json!(scopes.to_strings()));
    }
    body
}

/// Checks the roll body and the service's checks of it. An empty body is the default.
fn check_roll_body(data: &[u8]) {
    let request = if data.is_empty() {
        RollRequest::default()
    } else {
        let Some(request) = parse::<RollRequest>(data) else {
            return;
        };
        request
    };
    let grace = request.grace();
    let now = model::now();
    match check_roll(grace, request.expires_at(), now) {
        Ok(expires_at) => {
            assert!(!grace.is_negative());
            assert!(grace <= MAX_GRACE);
            if let Some(at) = expires_at {
                assert!(at > now);
                assert!(at <= model::MAX_EXPIRY);
            }
        }
        Err(err) => {
            let message = err.to_string();
            assert_no_key_text(&message, PREFIX);
        }
    }
}

fn check_verify(data: &[u8]) {
    let Some(request) = parse::<VerifyRequest>(data) else {
        return;
    };
    // The presented key goes to the key parser unchanged; that parser has its own target.
    let _ = KeyFormat::default().parse(request.key());
    let Some(scopes) = validated(request.required_scopes()) else {
        return;
    };
    let again = Scopes::parse("scopes", &scopes.to_strings()).expect("valid scopes re-parse");
    assert_eq!(again, scopes);
}

fn check_create_client(data: &[u8]) {
    let Some(request) = parse::<CreateClientRequest>(data) else {
        return;
    };
    let Some(new) = validated(request.into_new_client()) else {
        return;
    };
    check_audiences(&new.audiences);
    if let Some(default) = &new.default_audience {
        assert!(check_audience("default_audience", default).is_ok());
    }
    if let Some(jwks) = &new.jwks {
        check_public_jwks(jwks);
    }

    let again = reparse(&create_client_body(&new), |request: CreateClientRequest| {
        request.into_new_client()
    });
    assert_eq!(again.name, new.name);
    assert_eq!(again.owner, new.owner);
    assert_eq!(again.scopes, new.scopes);
    assert_eq!(again.audiences, new.audiences);
    assert_eq!(again.default_audience, new.default_audience);
    assert_eq!(again.token_lifetime_seconds, new.token_lifetime_seconds);
    assert_eq!(again.jwks.is_some(), new.jwks.is_some());
    if let (Some(again), Some(first)) = (&again.jwks, &new.jwks) {
        assert!(same_json(again, first));
    }
}

fn create_client_body(new: &NewClient) -> Value {
    let mut body = json!({
        "name": new.name.as_str(),
        "scopes": new.scopes.to_strings(),
        "audiences": new.audiences,
    });
    if let Some(owner) = &new.owner {
        body["owner"] = json!(owner.as_str());
    }
    if let Some(default) = &new.default_audience {
        body["default_audience"] = json!(default);
    }
    if let Some(seconds) = new.token_lifetime_seconds {
        body["token_lifetime_seconds"] = json!(seconds);
    }
    if let Some(jwks) = &new.jwks {
        body["jwks"] = jwks.clone();
    }
    body
}

fn check_update_client(data: &[u8]) {
    let Some(request) = parse::<UpdateClientRequest>(data) else {
        return;
    };
    let Some(update) = validated(request.into_update()) else {
        return;
    };
    if let Some(audiences) = &update.audiences {
        check_audiences(audiences);
    }
    if let Some(Some(jwks)) = &update.jwks {
        check_public_jwks(jwks);
    }

    let again = reparse(
        &update_client_body(&update),
        |request: UpdateClientRequest| request.into_update(),
    );
    assert_eq!(again.name, update.name);
    assert_eq!(again.owner, update.owner);
    assert_eq!(again.scopes, update.scopes);
    assert_eq!(again.audiences, update.audiences);
    assert_eq!(again.default_audience, update.default_audience);
    assert_eq!(again.token_lifetime_seconds, update.token_lifetime_seconds);
    match (&again.jwks, &update.jwks) {
        (Some(Some(again)), Some(Some(first))) => assert!(same_json(again, first)),
        (again, first) => assert_eq!(
            again.as_ref().map(Option::is_some),
            first.as_ref().map(Option::is_some)
        ),
    }
}

fn update_client_body(update: &ClientUpdate) -> Value {
    let mut body = update_body(
        update.name.as_ref(),
        update.owner.as_ref(),
        update.scopes.as_ref(),
    );
    if let Some(audiences) = &update.audiences {
        body.insert("audiences".into(), json!(audiences));
    }
    if let Some(default) = &update.default_audience {
        body.insert("default_audience".into(), json!(default));
    }
    if let Some(seconds) = update.token_lifetime_seconds {
        body.insert("token_lifetime_seconds".into(), json!(seconds));
    }
    if let Some(jwks) = &update.jwks {
        body.insert("jwks".into(), json!(jwks));
    }
    Value::Object(body)
}

/// Serializes `body`, parses it as `T` again and validates it. Both steps must succeed.
fn reparse<T: DeserializeOwned, V>(body: &Value, validate: impl Fn(T) -> Result<V, ApiError>) -> V {
    let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
    let request = parse_json::<T>(&bytes, PREFIX)
        .unwrap_or_else(|err| panic!("the written-back body was rejected: {}", err.detail()));
    validate(request)
        .unwrap_or_else(|err| panic!("the written-back body was invalid: {}", err.detail()))
}

fn check_metadata_size(metadata: &Map<String, Value>) {
    let size = serde_json::to_vec(metadata)
        .expect("metadata serializes")
        .len();
    assert!(size <= MAX_METADATA_BYTES);
}

/// Checks the service's expiry rule on a create: a future instant no later than year
/// 9999, in UTC, whole microseconds, and within a microsecond of the request.
fn check_expiry(at: OffsetDateTime) {
    let now = model::now();
    let Ok(utc) = model::parse_expiry(at, now) else {
        return;
    };
    assert!(utc > now);
    assert!(utc <= model::MAX_EXPIRY);
    assert_eq!(utc.offset(), time::UtcOffset::UTC);
    assert_eq!(utc.nanosecond() % 1_000, 0);
    let truncated = at - utc;
    assert!(!truncated.is_negative());
    assert!(truncated < time::Duration::microseconds(1));
}

fn check_audiences(audiences: &[String]) {
    for (index, audience) in audiences.iter().enumerate() {
        assert!(check_audience("audiences", audience).is_ok());
        assert!(!audiences[..index].contains(audience), "repeated audience");
    }
}

/// Checks an accepted JWK set: 1 to 8 keys, none with a private part.
fn check_public_jwks(jwks: &Value) {
    let keys = jwks["keys"]
        .as_array()
        .expect("an accepted JWK set has keys");
    assert!((1..=MAX_CLIENT_KEYS).contains(&keys.len()));
    for key in keys {
        assert!(key.get("d").is_none(), "accepted a private key");
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("a timestamp parsed from RFC 3339 formats as RFC 3339")
}

/// Compares two JSON values, allowing floats to differ in the last bits: serde_json
/// parses floats with best-effort precision unless its `float_roundtrip` feature is on.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) else {
                return false;
            };
            a == b || (a - b).abs() <= a.abs().max(b.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(name, a)| b.get(name).is_some_and(|b| same_json(a, b)))
        }
        (a, b) => a == b,
    }
}
