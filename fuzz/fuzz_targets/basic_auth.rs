//! Fuzzes the HTTP Basic credentials of `client_secret_basic` at `/oauth/token`, whose id
//! and secret are form-urlencoded before Base64 (RFC 6749 section 2.3.1).
//!
//! Input: a first byte that picks the mode, then the mode's data.
//! - Even: the rest is an `Authorization` header value. What the parser returns must match
//!   an independent decoding: Base64, a split at the first `:`, then `+` as space and
//!   percent-decoding of each half.
//! - Odd: the rest is an id, a newline and a secret. They are encoded as a client would
//!   encode them, and must come back unchanged.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use valet::fuzzing::basic_credentials;
use valet_fuzz::split_line;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_header(rest, mode & 2 != 0);
    } else {
        check_round_trip(rest, mode);
    }
});

/// Parses `value` as the only `Authorization` header, or as one of two when `twice` is set.
fn check_header(value: &[u8], twice: bool) {
    let Ok(header_value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(header::AUTHORIZATION, header_value.clone());
    if twice {
        headers.append(header::AUTHORIZATION, header_value);
        let err = basic_credentials(&headers)
            .err()
            .expect("two headers accepted");
        assert_eq!(err.error(), "invalid_request");
        return;
    }

    let expected = decode_independently(value);
    match basic_credentials(&headers) {
        Ok(Some((id, secret))) => {
            let (expected_id, expected_secret) = expected.expect("accepted invalid Basic");
            assert_eq!(id, expected_id);
            assert_eq!(secret.as_str(), expected_secret);
        }
        Ok(None) => panic!("a present header read as no credentials"),
        Err(err) => {
            assert!(expected.is_none(), "rejected valid Basic credentials");
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(err.error(), "invalid_client");
        }
    }
}

/// Decodes Basic credentials without Valet's code: the scheme in any case, Base64 of the
/// value with surrounding ASCII whitespace trimmed, and `id:secret` in form encoding.
fn decode_independently(value: &[u8]) -> Option<(String, String)> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = STANDARD.decode(value[6..].trim_ascii()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((
        form_decode(&decoded[..colon]),
        form_decode(&decoded[colon + 1..]),
    ))
}

/// Decodes one application/x-www-form-urlencoded value: `+` is a space, `%XX` a byte, and
/// invalid UTF-8 becomes U+FFFD.
fn form_decode(part: &[u8]) -> String {
    let spaced: Vec<u8> = part
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Encodes an id and secret as a client following RFC 6749 section 2.3.1 does, and checks
/// that they are read back unchanged.
fn check_round_trip(data: &[u8], mode: u8) {
    let (Some(id), secret) = split_line(data) else {
        return;
    };
    let id = String::from_utf8_lossy(id);
    let secret = String::from_utf8_lossy(secret);
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = STANDARD.encode(format!("{}:{}", encode(&id), encode(&secret)));
    let scheme = if mode & 2 == 0 { "Basic" } else { "bASIC" };
    let value = HeaderValue::from_str(&format!("{scheme} {credentials}"))
        .expect("Base64 is a valid header value");
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);

    let Ok(Some((read_id, read_secret))) = basic_credentials(&headers) else {
        panic!("valid Basic credentials were rejected");
    };
    assert_eq!(read_id, id);
    assert_eq!(read_secret.as_str(), secret);
}
