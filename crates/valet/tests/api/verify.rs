//! `POST /v1/keys/verify`: every code and what the response carries.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, on_each_backend, spawn_app};

on_each_backend!(
    verify_valid_carries_key_object,
    verify_malformed_names_the_part,
    verify_wrong_secret_equals_unknown_id,
    verify_env_mismatch_is_not_found,
    verify_insufficient_scope_carries_key,
    verify_expired_after_expiry_passes,
    verify_revoked_carries_key,
    verify_accepts_verify_scope_caller,
    last_used_at_reaches_store_on_flush,
);

async fn verify_valid_carries_key_object(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["orders:read"]).await;
    let answer = app
        .verify(created["key"].as_str().unwrap(), &["orders:read"])
        .await;
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["code"], "VALID");
    assert_eq!(answer["key"]["id"], created["id"]);
    assert!(
        answer["key"].get("key").is_none(),
        "raw key echoed: {answer}"
    );
    assert!(answer["key"]["last_used_at"].is_string());
}

async fn verify_malformed_names_the_part(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    let mut typo = raw.to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });

    let cases = [
        ("", "empty"),
        ("vk_live_abc", "parts"),
        (&raw.replacen("vk_", "xk_", 1), "prefix"),
        (&raw.replacen("_live_", "_prod_", 1), "environment"),
        (&typo, "checksum"),
    ];
    for (input, word) in cases {
        let answer = app.verify(input, &[]).await;
        assert_eq!(answer["code"], "MALFORMED", "input {input:?}");
        assert_eq!(answer["valid"], false);
        assert!(answer.get("key").is_none());
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(word), "message {message:?} lacks {word:?}");
    }
}

async fn verify_wrong_secret_equals_unknown_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();

    // Same id, another valid secret: re-checksummed so it passes parsing.
    let format = valet::key::KeyFormat::default();
    let forged_same_id = format
        .generate(
            valet::key::KeyEnv::Live,
            &valet::key::KeyId::parse(id).unwrap(),
        )
        .unwrap();
    let unknown_id = format
        .generate(
            valet::key::KeyEnv::Live,
            &valet::key::KeyId::parse("ZZZZZZZZ").unwrap(),
        )
        .unwrap();

    let wrong_secret = app.verify(forged_same_id.expose(), &[]).await;
    let unknown = app.verify(unknown_id.expose(), &[]).await;
    assert_ne!(forged_same_id.expose(), raw);
    assert_eq!(wrong_secret["code"], "NOT_FOUND");
    assert_eq!(
        wrong_secret, unknown,
        "wrong secret must look like an unknown id"
    );
    assert!(wrong_secret.get("key").is_none());
}

async fn verify_env_mismatch_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let id = created["id"].as_str().unwrap();
    let format = valet::key::KeyFormat::default();
    let other_env = format
        .generate(
            valet::key::KeyEnv::Test,
            &valet::key::KeyId::parse(id).unwrap(),
        )
        .unwrap();
    assert_eq!(
        app.verify(other_env.expose(), &[]).await["code"],
        "NOT_FOUND"
    );
}

async fn verify_insufficient_scope_carries_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["orders:read"]).await;
    let answer = app
        .verify(
            created["key"].as_str().unwrap(),
            &["orders:read", "orders:write"],
        )
        .await;
    assert_eq!(answer["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(answer["valid"], false);
    assert_eq!(answer["key"]["id"], created["id"]);
    assert!(answer["message"].as_str().unwrap().contains("orders:write"));
}

async fn verify_expired_after_expiry_passes(backend: Backend) {
    let app = spawn_app(backend).await;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = app
        .create_key(json!({"name": "short", "scopes": [], "expires_at": expires}))
        .await;
    let raw = created["key"].as_str().unwrap();
    assert_eq!(app.verify(raw, &[]).await["code"], "VALID");

    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let answer = app.verify(raw, &[]).await;
    assert_eq!(answer["code"], "EXPIRED");
    assert_eq!(answer["key"]["id"], created["id"]);
}

async fn verify_revoked_carries_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let id = created["id"].as_str().unwrap();
    app.admin(Method::POST, &format!("/v1/keys/{id}/revoke"), None)
        .await;
    let answer = app.verify(created["key"].as_str().unwrap(), &[]).await;
    assert_eq!(answer["code"], "REVOKED");
    assert!(answer["key"]["revoked_at"].is_string());
}

async fn verify_accepts_verify_scope_caller(backend: Backend) {
    let app = spawn_app(backend).await;
    let verifier = app.create_simple("gateway", &["keys:verify"]).await;
    let target = app.create_simple("worker", &[]).await;
    let response = app
        .client
        .post(app.url("/v1/keys/verify"))
        .bearer_auth(verifier["key"].as_str().unwrap())
        .json(&json!({"key": target["key"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "VALID");
}

async fn last_used_at_reaches_store_on_flush(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let id = valet::key::KeyId::parse(created["id"].as_str().unwrap()).unwrap();
    app.verify(created["key"].as_str().unwrap(), &[]).await;

    let before = app.service.store().find_key(&id).await.unwrap().unwrap();
    assert_eq!(
        before.record.last_used_at, None,
        "no store write per request"
    );

    app.service
        .usage()
        .flush(app.service.store().as_ref())
        .await
        .unwrap();
    let after = app.service.store().find_key(&id).await.unwrap().unwrap();
    assert!(
        after.record.last_used_at.is_some(),
        "flush wrote last_used_at"
    );
}
