//! `/v1/forward-auth`: the check a reverse proxy makes before passing a request on.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_each_backend, spawn_app};

on_each_backend!(
    forward_auth_accepts_and_identifies_keys,
    forward_auth_refuses_with_rfc6750,
    forward_auth_accepts_access_tokens,
);

/// Sends a forward-auth check with `headers` and returns status and response headers.
async fn check(
    app: &TestApp,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap) {
    let mut request = app
        .client
        .request(method, app.url(&format!("/v1/forward-auth{query}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.headers().clone())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap())
}

async fn forward_auth_accepts_and_identifies_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_key(
            json!({"name": "w", "scopes": ["orders:read", "orders:write"], "owner": "acme"}),
        )
        .await;
    let raw = created["key"].as_str().unwrap();
    let bearer = format!("Bearer {raw}");

    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let (status, headers) = check(
            &app,
            method.clone(),
            "?scope=orders:read",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, 200, "{method}");
        assert_eq!(
            header(&headers, "x-valet-key-id"),
            created["id"].as_str().unwrap()
        );
        assert_eq!(
            header(&headers, "x-valet-scopes"),
            "orders:read orders:write"
        );
        assert_eq!(header(&headers, "x-valet-owner"), "acme");
        assert!(headers.get("sunset").is_none(), "no Sunset before a roll");
    }

    let (status, _) = check(
        &app,
        Method::GET,
        "",
        &[
            ("x-api-key", raw),
            ("x-valet-required-scopes", "orders:read orders:write"),
        ],
    )
    .await;
    assert_eq!(status, 200, "X-API-Key and the scopes header work");

    let rolled = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{}/roll", created["id"].as_str().unwrap()),
            Some(json!({"grace_period_seconds": 600})),
        )
        .await;
    let (status, headers) = check(&app, Method::GET, "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "the old key works during its grace period");
    let sunset = header(&headers, "sunset");
    assert!(
        sunset.ends_with(" GMT"),
        "Sunset is an HTTP-date: {sunset:?}"
    );
    let expires = time::OffsetDateTime::parse(
        rolled["previous"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let sunset_at = time::OffsetDateTime::parse(
        &sunset.replace("GMT", "+0000"),
        &time::format_description::well_known::Rfc2822,
    )
    .unwrap();
    assert_eq!(sunset_at.unix_timestamp(), expires.unix_timestamp());
}

async fn forward_auth_refuses_with_rfc6750(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("w", &["orders:read"]).await;
    let raw = created["key"].as_str().unwrap();
    let bearer = format!("Bearer {raw}");

    let (status, headers) = check(&app, Method::GET, "", &[]).await;
    assert_eq!(status, 401, "no credential");
    assert_eq!(
        header(&headers, "www-authenticate"),
        "Bearer realm=\"valet\""
    );

    let (status, headers) = check(
        &app,
        Method::GET,
        "",
        &[("authorization", "Bearer vk_live_nope")],
    )
    .await;
    assert_eq!(status, 401, "malformed key");
    assert!(header(&headers, "www-authenticate").contains("error=\"invalid_token\""));

    let (status, headers) = check(
        &app,
        Method::GET,
        "?scope=orders:write",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403, "missing scope");
    let challenge = header(&headers, "www-authenticate");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");

    let (status, headers) = check(
        &app,
        Method::GET,
        "?scope=orders:read%20orders:write",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403, "one of two scopes missing");
    let challenge = header(&headers, "www-authenticate");
    assert!(
        challenge.contains("scope=\"orders:read orders:write\""),
        "the challenge lists every required scope: {challenge}"
    );

    // A required scope that looks like a key is not sent back in the challenge.
    let (status, headers) = check(
        &app,
        Method::GET,
        &format!("?scope={raw}"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403, "a key-like scope is missing");
    let challenge = header(&headers, "www-authenticate");
    assert!(!challenge.contains(&raw[..20]), "{challenge}");

    // Many long required scopes: still a 403, with a challenge that stays short.
    let many: Vec<String> = (0..64)
        .map(|i| format!("read:{i:0>3}:{}", "a.".repeat(59)))
        .collect();
    let (status, headers) = check(
        &app,
        Method::GET,
        "",
        &[
            ("authorization", &bearer),
            ("x-valet-required-scopes", &many.join(" ")),
        ],
    )
    .await;
    assert_eq!(status, 403, "64 long scopes are missing");
    let challenge = header(&headers, "www-authenticate");
    assert!(
        challenge.len() <= 1200,
        "challenge of {} bytes",
        challenge.len()
    );
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );

    let (status, _) = check(
        &app,
        Method::GET,
        "",
        &[("authorization", &bearer), ("x-api-key", raw)],
    )
    .await;
    assert_eq!(status, 400, "two credentials");

    let (status, _) = check(&app, Method::GET, &format!("?key={raw}"), &[]).await;
    assert_eq!(status, 401, "a key in the query string is never read");

    app.admin(
        Method::POST,
        &format!("/v1/keys/{}/revoke", created["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (status, _) = check(&app, Method::GET, "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 401, "revoked on the next request");
}

async fn forward_auth_accepts_access_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let client: Value = app
        .admin_json(
            Method::POST,
            "/v1/clients",
            Some(
                json!({"name": "c", "owner": "acme", "scopes": ["orders:read"],
                        "audiences": ["https://api"], "default_audience": "https://api"}),
            ),
        )
        .await;
    let id = client["client_id"].as_str().unwrap();
    let token: Value = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, client["client_secret"].as_str())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());

    let (status, headers) = check(
        &app,
        Method::GET,
        "?scope=orders:read",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-valet-client-id"), id);
    assert_eq!(header(&headers, "x-valet-scopes"), "orders:read");
    assert_eq!(
        header(&headers, "x-valet-owner"),
        "acme",
        "the client's owner"
    );

    let (status, _) = check(
        &app,
        Method::GET,
        "?scope=orders:write",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403, "the token lacks the scope");

    let revoked = app
        .client
        .post(app.url("/oauth/revoke"))
        .bearer_auth(&app.admin_key)
        .form(&[("token", token["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, _) = check(&app, Method::GET, "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 401, "a revoked token is refused");

    // A token of a deleted client is rejected, although it was never revoked itself.
    let fresh = app
        .access_token(id, client["client_secret"].as_str().unwrap())
        .await;
    let bearer = format!("Bearer {fresh}");
    let (status, _) = check(&app, Method::GET, "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "the new token passes");
    let deleted = app
        .admin(Method::DELETE, &format!("/v1/clients/{id}"), None)
        .await;
    assert_eq!(deleted.status(), 204);
    let (status, _) = check(&app, Method::GET, "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 401, "a token of a deleted client is refused");
}
