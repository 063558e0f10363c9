//! Finding the one credential of a request: `Authorization: Bearer`, `X-API-Key`, or, only
//! where the service opted in, a query parameter.

use http::{HeaderMap, Uri, header};

use crate::rejection::Rejection;

/// Header that carries a bare API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Maximum credential length in bytes. Valet keys are under 100 bytes and its access tokens
/// under 1 KiB, so anything far longer is rejected before it costs a hash or a round trip.
const MAX_CREDENTIAL_BYTES: usize = 4096;

/// A credential found in a request, by kind.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A JWT: three dot-separated parts.
    AccessToken(&'a str),
    /// Anything else, to be checked as a Valet API key.
    ApiKey(&'a str),
}

/// Error for an Authorization header with the Bearer scheme and nothing after it.
const NO_BEARER_TOKEN: &str =
    "the Authorization header has no key or token after `Bearer`: send Authorization: Bearer <key>";

/// Reads the credential. `query_parameter` names the query parameter that may carry one,
/// `None` when the service did not opt in.
pub fn find<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    query_parameter: Option<&str>,
) -> Result<Credential<'a>, Rejection> {
    let mut found: Option<&'a str> = None;
    // `if_empty` is the error for an empty credential, naming where it came from.
    let mut take = |text: &'a str, if_empty: &'static str| {
        if text.is_empty() {
            Err(Rejection::InvalidRequest(if_empty))
        } else if found.replace(text).is_some() {
            Err(Rejection::InvalidRequest(
                "send one credential, once: Authorization: Bearer or X-API-Key",
            ))
        } else {
            Ok(())
        }
    };

    for value in headers.get_all(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        // Field values carry no trailing whitespace (RFC 9110, section 5.5), so `Bearer `
        // arrives as `Bearer`.
        if bytes.eq_ignore_ascii_case(b"bearer") {
            return Err(Rejection::InvalidRequest(NO_BEARER_TOKEN));
        }
        let Some(token) = bytes
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| std::str::from_utf8(&bytes[7..]).ok())
        else {
            return Err(Rejection::InvalidRequest(
                "the Authorization header must use the Bearer scheme: Authorization: Bearer <key>",
            ));
        };
        take(token.trim(), NO_BEARER_TOKEN)?;
    }
    for value in headers.get_all(API_KEY_HEADER) {
        let Ok(key) = value.to_str() else {
            return Err(Rejection::InvalidToken(
                "the X-API-Key header is not a Valet API key",
            ));
        };
        take(
            key.trim(),
            "the X-API-Key header is empty; send the key in it",
        )?;
    }
    if let (Some(name), Some(query)) = (query_parameter, uri.query()) {
        for (param, value) in form_urlencoded::parse(query.as_bytes()) {
            if param == name {
                // The value borrows the URI only when it needed no decoding; a key never
                // needs any, so a decoded value cannot be a valid credential.
                let std::borrow::Cow::Borrowed(value) = value else {
                    return Err(Rejection::InvalidToken(
                        "the query parameter does not hold a Valet credential",
                    ));
                };
                take(value, "the credential query parameter is empty")?;
            }
        }
    }

    let Some(text) = found else {
        return Err(Rejection::Missing);
    };
    if text.len() > MAX_CREDENTIAL_BYTES {
        return Err(Rejection::InvalidToken(
            "the credential is longer than any Valet key or access token",
        ));
    }
    if text.bytes().filter(|&b| b == b'.').count() == 2 {
        Ok(Credential::AccessToken(text))
    } else {
        Ok(Credential::ApiKey(text))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn uri(text: &'static str) -> Uri {
        Uri::from_static(text)
    }

    #[test]
    fn find_reads_bearer_and_x_api_key() {
        let bearer = headers(&[("authorization", "Bearer vk_live_a")]);
        assert_eq!(
            find(&bearer, &uri("/"), None),
            Ok(Credential::ApiKey("vk_live_a"))
        );
        let lower = headers(&[("authorization", "bearer a.b.c")]);
        assert_eq!(
            find(&lower, &uri("/"), None),
            Ok(Credential::AccessToken("a.b.c"))
        );
        let api_key = headers(&[("x-api-key", "vk_live_b")]);
        assert_eq!(
            find(&api_key, &uri("/"), None),
            Ok(Credential::ApiKey("vk_live_b"))
        );
    }

    #[test]
    fn find_rejects_two_credentials() {
        let both = headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert!(matches!(
            find(&both, &uri("/"), None),
            Err(Rejection::InvalidRequest(_))
        ));
        let twice = headers(&[("x-api-key", "a"), ("x-api-key", "a")]);
        assert!(matches!(
            find(&twice, &uri("/"), None),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn find_ignores_the_query_unless_opted_in() {
        let none = HeaderMap::new();
        assert_eq!(
            find(&none, &uri("/orders?api_key=vk_live_a"), None),
            Err(Rejection::Missing)
        );
        assert_eq!(
            find(&none, &uri("/orders?api_key=vk_live_a"), Some("api_key")),
            Ok(Credential::ApiKey("vk_live_a"))
        );
        let header = headers(&[("x-api-key", "b")]);
        assert!(matches!(
            find(&header, &uri("/orders?api_key=a"), Some("api_key")),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn find_rejects_other_schemes_and_empty_tokens() {
        let basic = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert!(matches!(
            find(&basic, &uri("/"), None),
            Err(Rejection::InvalidRequest(_))
        ));
        let empty = headers(&[("authorization", "Bearer  ")]);
        assert_eq!(
            find(&empty, &uri("/"), None),
            Err(Rejection::InvalidRequest(NO_BEARER_TOKEN))
        );
        let bare = headers(&[("authorization", "Bearer")]);
        assert_eq!(
            find(&bare, &uri("/"), None),
            Err(Rejection::InvalidRequest(NO_BEARER_TOKEN))
        );
    }

    #[test]
    fn find_names_the_empty_header() {
        let empty = headers(&[("x-api-key", "")]);
        let Err(Rejection::InvalidRequest(message)) = find(&empty, &uri("/"), None) else {
            panic!("an empty X-API-Key is an invalid request");
        };
        assert!(message.contains("X-API-Key"), "{message}");
    }
}
