//! Fuzzes the form parsing of `/oauth/token`, `/oauth/introspect` and `/oauth/revoke`:
//! `Form::parse`, the choice of client authentication method, and the token request's
//! parameters.
//!
//! Input: a `Content-Type` value, a newline, an `Authorization` value (an empty line for
//! none), a newline, then the body.

#![no_main]

use http::{HeaderMap, HeaderValue, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use valet::fuzzing::{
    ClientCredentials, Form, OAuthErrorResponse, TokenParameters, basic_credentials,
    client_credentials,
};
use valet::oauth::service::JWT_BEARER_ASSERTION;
use valet_fuzz::{assert_no_key_text, split_line};

const PREFIX: &str = "vk";

fuzz_target!(|data: &[u8]| {
    let (Some(content_type), rest) = split_line(data) else {
        return;
    };
    let (Some(authorization), body) = split_line(rest) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let Ok(content_type) = HeaderValue::from_bytes(content_type) else {
        return;
    };
    headers.insert(header::CONTENT_TYPE, content_type);
    if !authorization.is_empty() {
        let Ok(authorization) = HeaderValue::from_bytes(authorization) else {
            return;
        };
        headers.insert(header::AUTHORIZATION, authorization);
    }

    let form = match Form::parse(&headers, body, PREFIX) {
        Ok(form) => form,
        Err(err) => {
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert_eq!(err.error(), "invalid_request");
            assert_no_key_text(err.description(), PREFIX);
            return;
        }
    };
    check_form(&headers, body, &form);
    let basic = check_credentials(&headers, &form);
    if let Some(basic) = basic {
        check_token_parameters(&form, basic);
    }
});

/// Checks an accepted form: the content type, unique names, the same pairs as a plain
/// form decoding, and a round trip through the form encoder.
fn check_form(headers: &HeaderMap, body: &[u8], form: &Form) {
    let content_type = headers[header::CONTENT_TYPE].to_str().expect("accepted");
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    assert!(essence.eq_ignore_ascii_case("application/x-www-form-urlencoded"));

    let decoded: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    assert_eq!(form.pairs(), decoded.as_slice());
    for (index, (name, value)) in form.pairs().iter().enumerate() {
        let repeated = form.pairs()[..index].iter().any(|(seen, _)| seen == name);
        assert!(!repeated, "the parameter {name:?} was accepted twice");
        assert_eq!(form.get(name), Some(value.as_str()));
    }

    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.pairs())
        .finish();
    let again = Form::parse(headers, encoded.as_bytes(), PREFIX).expect("re-encoded form");
    assert_eq!(again.pairs(), form.pairs());
}

/// Checks which client authentication method was read, and returns whether it was HTTP
/// Basic, or `None` when the request was rejected.
fn check_credentials(headers: &HeaderMap, form: &Form) -> Option<bool> {
    let credentials = match client_credentials(headers, form) {
        Ok(credentials) => credentials,
        Err(err) => {
            check_rejection(&err);
            return None;
        }
    };
    let has_header = headers.contains_key(header::AUTHORIZATION);
    match &credentials {
        ClientCredentials::Secret {
            client_id,
            secret,
            basic: true,
        } => {
            let Ok(Some((basic_id, basic_secret))) = basic_credentials(headers) else {
                panic!("Basic credentials read from an invalid header");
            };
            assert_eq!(*client_id, basic_id);
            assert_eq!(secret.as_str(), basic_secret.as_str());
            assert!(form.get("client_secret").is_none());
            assert!(form.get("client_id").is_none_or(|id| id == client_id));
        }
        ClientCredentials::Secret {
            client_id,
            secret,
            basic: false,
        } => {
            assert!(!has_header);
            assert_eq!(form.get("client_id"), Some(client_id.as_str()));
            assert_eq!(form.get("client_secret"), Some(secret.as_str()));
        }
        ClientCredentials::Assertion {
            client_id,
            assertion,
        } => {
            assert!(!has_header);
            assert!(form.get("client_secret").is_none());
            assert_eq!(
                form.get("client_assertion_type"),
                Some(JWT_BEARER_ASSERTION)
            );
            assert_eq!(form.get("client_assertion"), Some(assertion.as_str()));
            assert_eq!(form.get("client_id"), client_id.as_deref());
        }
    }
    Some(credentials.basic())
}

/// Checks the token request's parameters against the form they came from.
fn check_token_parameters(form: &Form, basic: bool) {
    match TokenParameters::from_form(form, basic) {
        Ok(parameters) => {
            assert_eq!(form.get("grant_type"), Some("client_credentials"));
            let (resource, audience) = (form.get("resource"), form.get("audience"));
            assert!(resource.is_none() || audience.is_none());
            assert_eq!(parameters.audience, resource.or(audience));
            assert_eq!(parameters.scope, form.get("scope"));
        }
        Err(err) => {
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            check_rejection(&err);
        }
    }
}

fn check_rejection(err: &OAuthErrorResponse) {
    let expected_status = match err.error() {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "invalid_request" | "unsupported_grant_type" => StatusCode::BAD_REQUEST,
        other => panic!("unexpected error code {other}"),
    };
    assert_eq!(err.status(), expected_status);
    assert_no_key_text(err.description(), PREFIX);
}
