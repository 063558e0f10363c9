//! The middleware that throttles client addresses after failed attempts, and the reading
//! of `Forwarded` and `X-Forwarded-For` chains from trusted proxies.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::{ApiError, FailedAttempt};
use crate::throttle::Throttled;

/// Rejects requests to `/v1/` and `/oauth/` from a throttled client address with 429, and
/// counts a failure for the address when the response rejected a presented credential.
pub async fn throttle_failed_attempts(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let guarded = path.starts_with("/v1/") || path.starts_with("/oauth/");
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let (true, Some(peer)) = (guarded, peer) else {
        return next.run(request).await;
    };

    let throttle = &state.throttle;
    let client = if throttle.is_trusted(peer) {
        throttle.client_address(peer, &forwarded_chain(request.headers()))
    } else {
        peer
    };
    if let Err(throttled) = throttle.check(client) {
        return too_many_attempts(path.starts_with("/oauth/"), throttled);
    }
    let response = next.run(request).await;
    if response.extensions().get::<FailedAttempt>().is_some() {
        throttle.record_failure(client);
    }
    response
}

fn too_many_attempts(oauth: bool, throttled: Throttled) -> Response {
    let detail = "too many failed attempts from this address; wait for Retry-After seconds, \
                  then retry with a valid credential";
    if oauth {
        super::oauth::OAuthErrorResponse::too_many_attempts(throttled, detail).into_response()
    } else {
        ApiError::too_many_attempts(throttled, detail).into_response()
    }
}

/// Returns the addresses a proxy chain reports, client first: from `Forwarded` (RFC 7239)
/// when present, else from `X-Forwarded-For`. An entry that is not an IP address, such as
/// `unknown` or an obfuscated identifier, is `None`.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(forwarded_for)
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|item| parse_node(item.trim()))
        .collect()
}

/// Reads the `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(value.trim().trim_matches('"'))
    })
}

/// Parses a node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1` or `[2001:db8::1]:8080`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_chain_reads_rfc_7239_for_parameters() {
        let mut headers = HeaderMap::new();
        headers.append(
            "forwarded",
            HeaderValue::from_static("for=192.0.2.60;proto=http;by=203.0.113.43"),
        );
        headers.append(
            "forwarded",
            HeaderValue::from_static("For=\"[2001:db8:cafe::17]:4711\", for=unknown"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        assert_eq!(
            forwarded_chain(&headers),
            vec![Some(ip("192.0.2.60")), Some(ip("2001:db8:cafe::17")), None]
        );
    }

    #[test]
    fn forwarded_chain_falls_back_to_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.7, 10.0.0.1:443"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(
            forwarded_chain(&headers),
            vec![Some(ip("198.51.100.7")), Some(ip("10.0.0.1")), None]
        );
    }
}
