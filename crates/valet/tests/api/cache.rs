//! The verification cache: forged ids cost no store query, and a lost store or change feed
//! never lets a cached key verify beyond the stale-if-error window.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use valet::key::{KeyEnv, KeyFormat, KeyId};
use valet::service::CacheConfig;

use crate::helpers::{
    Backend, TIMED_OPERATIONS, TestSchema, TestStore, assert_problem, on_each_backend,
    postgres_available, spawn_app, spawn_app_at, store_queries,
};
use crate::proxy::TcpProxy;

on_each_backend!(
    forged_keys_cost_no_store_query,
    revoke_reaches_cached_key,
    metrics_cover_requests_and_cache,
);

async fn forged_keys_cost_no_store_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let format = KeyFormat::default();
    // The admin key is verified once, so later requests find it in the cache.
    app.verify("warm-up", &[]).await;

    let before = store_queries(&app.service.metrics().encode(), TIMED_OPERATIONS);
    for _ in 0..1_000 {
        let forged = format
            .generate(KeyEnv::Live, &KeyId::generate().unwrap())
            .unwrap();
        let answer = app.verify(forged.expose(), &[]).await;
        assert_eq!(answer["code"], "NOT_FOUND");
    }
    let after = store_queries(&app.service.metrics().encode(), TIMED_OPERATIONS);
    assert_eq!(
        after, before,
        "forged keys with valid checksums reached the store"
    );
}

async fn revoke_reaches_cached_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    app.verify(raw, &[]).await;

    let before = store_queries(&app.service.metrics().encode(), TIMED_OPERATIONS);
    assert_eq!(app.verify(raw, &[]).await["code"], "VALID");
    let after = store_queries(&app.service.metrics().encode(), TIMED_OPERATIONS);
    assert_eq!(after, before, "a known key answers from memory");

    let path = format!("/v1/keys/{}/revoke", created["id"].as_str().unwrap());
    app.admin(Method::POST, &path, None).await;
    assert_eq!(app.verify(raw, &[]).await["code"], "REVOKED");
}

/// Starts an app whose PostgreSQL connections pass through a proxy the test controls.
async fn spawn_behind_proxy(stale_if_error: Duration) -> (crate::helpers::TestApp, TcpProxy) {
    let schema = TestSchema::create().await;
    let upstream = postgres_socket(&schema.url);
    let proxy = TcpProxy::start(upstream).await;
    let url = schema
        .url
        .replacen(&upstream.to_string(), &proxy.address.to_string(), 1);
    assert_ne!(
        url, schema.url,
        "VALET_TEST_POSTGRES_URL names HOST:PORT explicitly"
    );
    let cache = CacheConfig {
        stale_if_error,
        ..CacheConfig::default()
    };
    let app = spawn_app_at(TestStore::Postgres(schema), &url, cache).await;
    (app, proxy)
}

fn postgres_socket(url: &str) -> std::net::SocketAddr {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    host_port
        .parse()
        .expect("VALET_TEST_POSTGRES_URL uses an IP:PORT host")
}

async fn verify_status(app: &crate::helpers::TestApp, key: &str) -> (u16, Option<String>, Value) {
    let response = app
        .admin(Method::POST, "/v1/keys/verify", Some(json!({ "key": key })))
        .await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    (status, retry_after, body)
}

/// Cuts the proxy and waits until the app has noticed the lost feed.
async fn cut_and_wait_for_distrust(app: &crate::helpers::TestApp, proxy: &TcpProxy) {
    proxy.cut();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.service.cache().is_trusted() {
        assert!(
            std::time::Instant::now() < deadline,
            "feed loss noticed within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn store_outage_fails_closed_then_recovers() {
    if !postgres_available("store_outage_fails_closed_then_recovers") {
        return;
    }
    let (app, proxy) = spawn_behind_proxy(Duration::ZERO).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    assert_eq!(app.verify(raw, &[]).await["code"], "VALID");
    let client_body = json!({
        "name": "worker",
        "scopes": [],
        "audiences": ["https://api"],
        "default_audience": "https://api",
    });
    let client = app
        .admin_json(Method::POST, "/v1/clients", Some(client_body))
        .await;
    let token = app
        .access_token(
            client["client_id"].as_str().unwrap(),
            client["client_secret"].as_str().unwrap(),
        )
        .await;

    cut_and_wait_for_distrust(&app, &proxy).await;

    // A token's revocation cannot be checked either: forward auth returns 503, not 401.
    let forwarded = app
        .client
        .get(app.url("/v1/forward-auth"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 503, "a token during the outage");
    assert!(forwarded.headers().contains_key("retry-after"));

    // The admin key itself cannot be checked either, so the response is a 503 problem.
    let response = app
        .admin(Method::POST, "/v1/keys/verify", Some(json!({ "key": raw })))
        .await;
    let retry_after = response.headers().get("retry-after").cloned();
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert_problem(response, 503, "store_unavailable").await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the store is unreachable"
    );

    proxy.restore();
    crate::helpers::wait_until_trusted(&app.service, Duration::from_secs(15)).await;
    let (status, _, body) = verify_status(&app, raw).await;
    assert_eq!(status, 200, "recovered without a restart: {body}");
    assert_eq!(body["code"], "VALID");
}

#[tokio::test]
async fn stale_if_error_serves_cached_keys() {
    if !postgres_available("stale_if_error_serves_cached_keys") {
        return;
    }
    let (app, proxy) = spawn_behind_proxy(Duration::from_secs(60)).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    assert_eq!(app.verify(raw, &[]).await["code"], "VALID");

    cut_and_wait_for_distrust(&app, &proxy).await;

    let (status, _, body) = verify_status(&app, raw).await;
    assert_eq!(
        status, 200,
        "cached keys still answer inside the window: {body}"
    );
    assert_eq!(body["code"], "VALID");

    let unknown = KeyFormat::default()
        .generate(KeyEnv::Live, &KeyId::generate().unwrap())
        .unwrap();
    let (status, retry_after, _) = verify_status(&app, unknown.expose()).await;
    assert_eq!(status, 503, "an uncached key fails closed");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    proxy.restore();
}

async fn metrics_cover_requests_and_cache(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    app.verify(raw, &[]).await;
    app.verify(raw, &[]).await;
    app.verify("not a key", &[]).await;
    let path = format!("/v1/keys/{}/revoke", created["id"].as_str().unwrap());
    app.admin(Method::POST, &path, None).await;
    // The revoke reaches the feed, which records its lag.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for expected in [
        "valet_build_info{version=\"",
        "valet_http_requests_total{route=\"/v1/keys/verify\",status=\"200\"}",
        "valet_http_requests_total{route=\"/v1/keys/{id}/revoke\",status=\"200\"}",
        "valet_verifications_total{code=\"VALID\"}",
        "valet_verifications_total{code=\"MALFORMED\"} 1",
        "valet_store_queries_total{operation=\"find_key\"}",
        "valet_cache_hits_total",
        "valet_cache_misses_total",
        "valet_id_filter_rejections_total",
        "valet_notification_lag_seconds_count",
        "valet_cache_trusted 1",
    ] {
        assert!(text.contains(expected), "metrics lack {expected}:\n{text}");
    }
    let lag_count = text
        .lines()
        .find_map(|line| line.strip_prefix("valet_notification_lag_seconds_count "))
        .and_then(|count| count.trim().parse::<u64>().ok())
        .unwrap_or_default();
    assert!(lag_count > 0, "feed changes record their lag");
    assert!(
        !text.contains(created["id"].as_str().unwrap()),
        "a key id leaked into labels"
    );
    assert!(
        !text.contains(&raw[..20]),
        "key material leaked into metrics"
    );
}
