//! Bearer authentication of the management and verify endpoints.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, assert_problem, on_each_backend, spawn_app};

on_each_backend!(
    authentication_precedes_input_checks,
    malformed_bearer_values_are_named,
    missing_credential_is_unauthorized,
    invalid_credentials_are_unauthorized,
    bearer_scheme_is_case_insensitive,
    duplicate_authorization_is_bad_request,
    key_without_admin_is_forbidden,
    verify_scope_cannot_manage,
);

/// Lists every endpoint that needs a credential, with a body that would be accepted.
fn protected(id: &str) -> Vec<(Method, String, Option<serde_json::Value>)> {
    vec![
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"name": "n", "scopes": []})),
        ),
        (Method::GET, "/v1/keys".into(), None),
        (Method::GET, format!("/v1/keys/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{id}"),
            Some(json!({"name": "m"})),
        ),
        (Method::POST, format!("/v1/keys/{id}/roll"), None),
        (Method::POST, format!("/v1/keys/{id}/revoke"), None),
        (
            Method::POST,
            "/v1/keys/verify".into(),
            Some(json!({"key": "x"})),
        ),
    ]
}

async fn missing_credential_is_unauthorized(backend: Backend) {
    let app = spawn_app(backend).await;
    for (method, path, body) in protected("AAAAAAAA") {
        let mut request = app.client.request(method.clone(), app.url(&path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(challenge, "Bearer realm=\"valet\"", "{method} {path}");
        assert_problem(response, 401, "missing_credentials").await;
    }
}

async fn invalid_credentials_are_unauthorized(backend: Backend) {
    let app = spawn_app(backend).await;
    let revoked = app.create_simple("old admin", &["admin"]).await;
    app.admin(
        Method::POST,
        &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
        None,
    )
    .await;

    let cases = [
        (format!("Basic {}", app.admin_key), "invalid_credentials"),
        ("Bearer".to_owned(), "invalid_credentials"),
        ("Bearer not-a-key".to_owned(), "invalid_token"),
        (
            format!("Bearer {}", revoked["key"].as_str().unwrap()),
            "invalid_token",
        ),
    ];
    for (header, code) in cases {
        let response = app
            .client
            .get(app.url("/v1/keys"))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"valet\""),
            "{challenge}"
        );
        let body = assert_problem(response, 401, code).await;
        assert!(
            !body.to_string().contains(&app.admin_key),
            "credential echoed: {body}"
        );
    }
}

async fn bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(app.url("/v1/keys"))
        .header("authorization", format!("bearer {}", app.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn duplicate_authorization_is_bad_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(app.url("/v1/keys"))
        .header("authorization", format!("Bearer {}", app.admin_key))
        .header("authorization", format!("Bearer {}", app.admin_key))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_request").await;
}

async fn key_without_admin_is_forbidden(backend: Backend) {
    let app = spawn_app(backend).await;
    let target = app.create_simple("target", &[]).await;
    let id = target["id"].as_str().unwrap();
    let weak = app.create_simple("worker", &["orders:read"]).await;
    let weak_key = weak["key"].as_str().unwrap();

    for (method, path, body) in protected(id) {
        let mut request = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(weak_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{method} {path}: {challenge}"
        );
        assert_problem(response, 403, "insufficient_scope").await;
    }
}

async fn verify_scope_cannot_manage(backend: Backend) {
    let app = spawn_app(backend).await;
    let verifier = app.create_simple("gateway", &["keys:verify"]).await;
    let response = app
        .client
        .get(app.url("/v1/keys"))
        .bearer_auth(verifier["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "insufficient_scope").await;
}

async fn authentication_precedes_input_checks(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (
            Method::POST,
            "/v1/keys/verify",
            Some("application/json"),
            "{",
        ),
        (Method::POST, "/v1/keys", Some("text/plain"), "x"),
        (Method::GET, "/v1/keys/bad!", None, ""),
        (
            Method::PATCH,
            "/v1/keys/AAAAAAAA",
            Some("application/json"),
            "[]",
        ),
    ];
    for (method, path, content_type, body) in cases {
        let mut request = app.client.request(method.clone(), app.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{method} {path} without a key");
    }
}

async fn malformed_bearer_values_are_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases: [(&[u8], &str, &str); 3] = [
        (b"Bearer ", "invalid_credentials", "no key after"),
        (b"Bearer vk_live_\xd0\x90", "invalid_token", "not valid"),
        (b"Bearer vk_live_\xff", "invalid_token", "not UTF-8"),
    ];
    for (header, code, words) in cases {
        let value = reqwest::header::HeaderValue::from_bytes(header).unwrap();
        let response = app
            .client
            .get(app.url("/v1/keys"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 401, code).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(words),
            "{header:?}: {detail:?} lacks {words:?}"
        );
    }
}
