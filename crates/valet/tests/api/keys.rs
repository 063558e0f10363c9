//! Create, list, show, update and revoke over HTTP.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, KEY_FIELDS, assert_problem, on_each_backend, spawn_app};

on_each_backend!(
    create_answer_is_not_cacheable,
    create_returns_key_once,
    create_defaults_env_owner_metadata,
    list_paginates_newest_first,
    list_last_page_has_null_cursor,
    list_filters_by_owner,
    update_changes_listed_fields,
    update_scopes_take_effect_on_verify,
    update_rejects_empty_body_object,
    revoke_is_immediate_and_idempotent,
    unknown_id_is_not_found,
    malformed_id_is_bad_request,
    health_and_readiness_answer,
);

fn assert_key_object(object: &Value) {
    for field in KEY_FIELDS {
        assert!(
            object.get(field).is_some(),
            "field `{field}` missing from {object}"
        );
    }
    assert!(object.get("key_hash").is_none(), "hash leaked: {object}");
}

async fn create_returns_key_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_key(json!({
            "name": "billing worker",
            "scopes": ["orders:read", "orders:write"],
            "env": "test",
            "owner": "acme",
            "metadata": {"team": "billing"},
            "expires_at": "2099-01-01T00:00:00Z"
        }))
        .await;

    assert_key_object(&created);
    let raw = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(raw.starts_with(&format!("vk_test_{id}_")), "{raw}");
    assert_eq!(created["owner"], "acme");
    assert_eq!(created["env"], "test");
    assert_eq!(created["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(created["metadata"], json!({"team": "billing"}));
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");

    let shown: Value = app
        .admin_json(Method::GET, &format!("/v1/keys/{id}"), None)
        .await;
    assert_key_object(&shown);
    assert!(shown.get("key").is_none(), "raw key shown again: {shown}");
    assert_eq!(shown["created_at"], created["created_at"]);
}

async fn create_defaults_env_owner_metadata(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("minimal", &[]).await;
    assert_eq!(created["env"], "live");
    assert_eq!(created["owner"], Value::Null);
    assert_eq!(created["metadata"], json!({}));
    assert_eq!(created["scopes"], json!([]));
    assert_eq!(created["expires_at"], Value::Null);
}

async fn list_paginates_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = app.create_simple(&format!("key {i}"), &["a"]).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }

    let mut seen = Vec::new();
    let mut path = "/v1/keys?limit=2".to_owned();
    loop {
        let page: Value = app.admin_json(Method::GET, &path, None).await;
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 2, "page too long: {page}");
        for key in keys {
            assert_key_object(key);
            assert!(key.get("key").is_none(), "raw key in list: {key}");
            seen.push(key["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/keys?limit=2&cursor={cursor}"),
            None => break,
        }
    }

    // Five created keys plus the admin key, newest first.
    assert_eq!(seen.len(), 6);
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(&seen[..5], &newest[..]);
}

async fn list_last_page_has_null_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let page: Value = app.admin_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
}

async fn list_filters_by_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_key(json!({"name": "a", "scopes": [], "owner": "acme"}))
        .await;
    app.create_key(json!({"name": "b", "scopes": [], "owner": "globex"}))
        .await;
    app.create_key(json!({"name": "c", "scopes": [], "owner": "acme"}))
        .await;

    let page: Value = app
        .admin_json(Method::GET, "/v1/keys?owner=acme", None)
        .await;
    let owners: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, vec!["acme", "acme"]);
}

async fn update_changes_listed_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create_key(json!({"name": "old", "scopes": ["a"], "owner": "acme"}))
        .await;
    let id = created["id"].as_str().unwrap();

    let response = app
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"name": "new", "scopes": ["b", "c"], "metadata": {"tier": 2}})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "new");
    assert_eq!(updated["scopes"], json!(["b", "c"]));
    assert_eq!(updated["metadata"], json!({"tier": 2}));
    assert_eq!(updated["owner"], "acme", "owner left out stays");

    let cleared: Value = app
        .admin_json(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"owner": null})),
        )
        .await;
    assert_eq!(cleared["owner"], Value::Null);
    assert_eq!(cleared["name"], "new");
}

async fn update_scopes_take_effect_on_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["a"]).await;
    let raw = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.verify(raw, &["b"]).await["code"], "INSUFFICIENT_SCOPE");

    app.admin(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"scopes": ["b"]})),
    )
    .await;
    assert_eq!(app.verify(raw, &["b"]).await["code"], "VALID");
}

async fn update_rejects_empty_body_object(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let id = created["id"].as_str().unwrap();
    let response = app
        .admin(Method::PATCH, &format!("/v1/keys/{id}"), Some(json!({})))
        .await;
    assert_problem(response, 422, "empty_update").await;
}

async fn revoke_is_immediate_and_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["a"]).await;
    let raw = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.verify(raw, &[]).await["code"], "VALID");

    let first = app
        .admin(Method::POST, &format!("/v1/keys/{id}/revoke"), None)
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_key_object(&first);
    assert!(first["revoked_at"].is_string());

    let verified = app.verify(raw, &[]).await;
    assert_eq!(verified["code"], "REVOKED");
    assert_eq!(verified["valid"], false);

    let second: Value = app
        .admin_json(Method::POST, &format!("/v1/keys/{id}/revoke"), None)
        .await;
    assert_eq!(
        second["revoked_at"], first["revoked_at"],
        "revoked_at unchanged"
    );
}

async fn unknown_id_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    for (method, path) in [
        (Method::GET, "/v1/keys/AAAAAAAA"),
        (Method::POST, "/v1/keys/AAAAAAAA/revoke"),
        (Method::POST, "/v1/keys/AAAAAAAA/roll"),
    ] {
        let response = app.admin(method, path, None).await;
        assert_problem(response, 404, "key_not_found").await;
    }
    let response = app
        .admin(
            Method::PATCH,
            "/v1/keys/AAAAAAAA",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_problem(response, 404, "key_not_found").await;
}

async fn malformed_id_is_bad_request(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        "/v1/keys/short",
        "/v1/keys/AAAAAAAAA",
        "/v1/keys/AAAA%2DAAA",
    ] {
        let response = app.admin(Method::GET, path, None).await;
        assert_problem(response, 400, "invalid_key_id").await;
    }
}

async fn health_and_readiness_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

async fn create_answer_is_not_cacheable(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "n", "scopes": []})),
        )
        .await;
    assert_eq!(response.status(), 201);
    let cache_control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(cache_control, "no-store");
    assert_eq!(
        location,
        format!("/v1/keys/{}", created["id"].as_str().unwrap())
    );
}
