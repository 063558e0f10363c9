//! The HTTP API: routes, shared state, request logging and graceful shutdown.
//!
//! This module alone deals with HTTP. Handlers parse input into domain types, call
//! [`KeyService`], and turn the result into JSON or problem details.

mod auth;
pub(crate) mod clients;
pub(crate) mod extract;
mod forward;
pub(crate) mod keys;
pub(crate) mod oauth;
mod problem;
mod server;
mod throttle;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use auth::{ADMIN_SCOPE, VERIFY_SCOPE};
pub use problem::ApiError;
pub use server::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, REQUEST_TIMEOUT};
pub use tls::{PlainHttp, TlsError, acceptor as tls_acceptor};

use crate::service::KeyService;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<KeyService>,
    pub oauth: Arc<crate::oauth::service::OAuthService>,
    /// Failed attempts per client address, and the proxies trusted to name the address.
    pub throttle: Arc<crate::throttle::AddressThrottle>,
}

/// Builds the router with every route, the body limit and request logging, for a listener
/// on loopback.
pub fn router(state: AppState) -> Router {
    router_for(state, PlainHttp::Loopback)
}

/// Builds the router for a listener whose plain HTTP is protected as `plain_http` says;
/// with [`PlainHttp::Rejected`], requests that carry credentials get a 403 or 400.
pub fn router_for(state: AppState, plain_http: PlainHttp) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/verify", post(keys::verify))
        .route("/v1/keys/{id}", get(keys::show).patch(keys::update))
        .route("/v1/keys/{id}/roll", post(keys::roll))
        .route("/v1/keys/{id}/revoke", post(keys::revoke))
        .route("/v1/forward-auth", any(forward::forward_auth))
        .route("/v1/clients", post(clients::create).get(clients::list))
        .route(
            "/v1/clients/{id}",
            get(clients::show)
                .patch(clients::update)
                .delete(clients::delete),
        )
        .route("/v1/clients/{id}/secrets", post(clients::add_secret))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/introspect", post(oauth::introspect))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let router = if plain_http == PlainHttp::Rejected {
        router.layer(middleware::from_fn(tls::reject_plain_credentials))
    } else {
        router
    };
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            throttle::throttle_failed_attempts,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, drains
/// in-flight requests for up to [`DRAIN_TIMEOUT`] and closes the connections left.
///
/// Request headers must arrive within [`HEADER_READ_TIMEOUT`] and a whole request within
/// [`REQUEST_TIMEOUT`]. Accept errors are logged and retried, so serving ends only
/// through `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    server::serve_router(listener, router(state), None, shutdown).await;
}

/// Serves like [`serve`], over TLS when `tls` is set, and otherwise with credentials over
/// plain HTTP handled as `plain_http` says.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    plain_http: PlainHttp,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let plain_http = if tls.is_some() {
        PlainHttp::Loopback
    } else {
        plain_http
    };
    server::serve_router(listener, router_for(state, plain_http), tls, shutdown).await;
}

/// Liveness: returns 200 while the process serves, without touching the store.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: returns 200 only when the store responds to a query.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.store().ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed: store not responding");
            ApiError::store_unavailable().into_response()
        }
    }
}

/// Prometheus metrics in the OpenMetrics text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.service.metrics().encode();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn route_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; the API lives under /v1/keys",
    )
}

/// Builds the 405 response for a method that the route does not take, in the error format
/// of the route's family: RFC 6749 JSON under `/oauth`, problem details elsewhere.
async fn method_not_allowed(uri: Uri) -> Response {
    if uri.path().starts_with("/oauth/") {
        return oauth::method_not_allowed().into_response();
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that HTTP method",
    )
    .into_response()
}

/// Runs each request in a span with its method and matched route pattern, and counts it by
/// route and status. The full URI is never logged, because a query string can carry a key.
async fn log_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A shared copy of the pattern, so that naming the route allocates nothing.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        actor = tracing::field::Empty,
    );
    let started = Instant::now();
    async move {
        let mut response = next.run(request).await;
        // Responses of this API describe keys and must never be cached by a proxy.
        response
            .headers_mut()
            .entry(axum::http::header::CACHE_CONTROL)
            .or_insert(axum::http::HeaderValue::from_static("no-store"));
        state
            .service
            .metrics()
            .request(route, response.status().as_u16());
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "request finished"
        );
        response
    }
    .instrument(span)
    .await
}
