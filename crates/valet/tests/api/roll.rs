//! `POST /v1/keys/{id}/roll`: zero-downtime rotation with a grace period.

use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{Backend, assert_problem, on_each_backend, spawn_app};

on_each_backend!(
    roll_copies_fields_committed_before_it,
    roll_keeps_both_keys_valid,
    roll_default_grace_is_one_day,
    roll_keeps_earlier_expiry,
    roll_zero_grace_expires_old_key,
    roll_twice_is_conflict,
    roll_concurrent_has_one_winner,
    roll_revoked_or_expired_is_conflict,
    roll_rejects_grace_out_of_range,
);

fn parse_time(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &Rfc3339).unwrap()
}

async fn roll_keeps_both_keys_valid(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app
        .create_key(json!({
            "name": "partner", "scopes": ["a", "b"], "owner": "acme",
            "env": "test", "metadata": {"tier": 1}
        }))
        .await;
    let old_id = old["id"].as_str().unwrap();

    let response = app
        .admin(
            Method::POST,
            &format!("/v1/keys/{old_id}/roll"),
            Some(json!({"grace_period_seconds": 3600})),
        )
        .await;
    assert_eq!(response.status(), 201);
    let rolled: Value = response.json().await.unwrap();

    for field in ["name", "owner", "scopes", "env", "metadata"] {
        assert_eq!(rolled[field], old[field], "successor keeps `{field}`");
    }
    assert_ne!(rolled["id"], old["id"]);
    assert_eq!(rolled["previous"]["id"], old["id"]);
    assert_eq!(rolled["previous"]["successor_id"], rolled["id"]);
    assert!(rolled["previous"].get("key").is_none());

    let grace_end = parse_time(&rolled["previous"]["expires_at"]);
    let created = parse_time(&rolled["created_at"]);
    assert_eq!(grace_end - created, time::Duration::hours(1));

    let new_answer = app.verify(rolled["key"].as_str().unwrap(), &["a"]).await;
    assert_eq!(new_answer["code"], "VALID");
    let old_answer = app.verify(old["key"].as_str().unwrap(), &["a"]).await;
    assert_eq!(old_answer["code"], "VALID");
    assert_eq!(old_answer["key"]["successor_id"], rolled["id"]);
    assert_eq!(
        old_answer["key"]["expires_at"],
        rolled["previous"]["expires_at"]
    );
}

async fn roll_default_grace_is_one_day(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app.create_simple("partner", &[]).await;
    let rolled: Value = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{}/roll", old["id"].as_str().unwrap()),
            None,
        )
        .await;
    let grace_end = parse_time(&rolled["previous"]["expires_at"]);
    let created = parse_time(&rolled["created_at"]);
    assert_eq!(grace_end - created, time::Duration::hours(24));
}

async fn roll_keeps_earlier_expiry(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app
        .create_key(json!({"name": "p", "scopes": [], "expires_at": "2099-01-01T00:00:00Z"}))
        .await;
    let soon = app
        .create_key(json!({"name": "q", "scopes": [], "expires_at":
            (OffsetDateTime::now_utc() + time::Duration::minutes(5)).format(&Rfc3339).unwrap()}))
        .await;

    let rolled: Value = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{}/roll", old["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_ne!(
        rolled["previous"]["expires_at"], "2099-01-01T00:00:00Z",
        "grace end is earlier"
    );

    let rolled_soon: Value = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{}/roll", soon["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        rolled_soon["previous"]["expires_at"], soon["expires_at"],
        "an expiry before the grace end is kept"
    );
}

async fn roll_zero_grace_expires_old_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app.create_simple("partner", &[]).await;
    let rolled: Value = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{}/roll", old["id"].as_str().unwrap()),
            Some(json!({"grace_period_seconds": 0})),
        )
        .await;
    let old_answer = app.verify(old["key"].as_str().unwrap(), &[]).await;
    assert_eq!(old_answer["code"], "EXPIRED");
    assert_eq!(old_answer["key"]["successor_id"], rolled["id"]);
    assert_eq!(
        app.verify(rolled["key"].as_str().unwrap(), &[]).await["code"],
        "VALID"
    );
}

async fn roll_twice_is_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app.create_simple("partner", &[]).await;
    let path = format!("/v1/keys/{}/roll", old["id"].as_str().unwrap());
    assert_eq!(app.admin(Method::POST, &path, None).await.status(), 201);
    let second = app.admin(Method::POST, &path, None).await;
    assert_problem(second, 409, "key_already_rolled").await;
}

async fn roll_concurrent_has_one_winner(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app.create_simple("partner", &[]).await;
    let path = format!("/v1/keys/{}/roll", old["id"].as_str().unwrap());
    let mut handles = Vec::new();
    for _ in 0..8 {
        let request = app.client.post(app.url(&path)).bearer_auth(&app.admin_key);
        handles.push(tokio::spawn(async move {
            request.send().await.unwrap().status()
        }));
    }
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );

    let page: Value = app.admin_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(
        page["keys"].as_array().unwrap().len(),
        3,
        "admin, old and one successor"
    );
}

async fn roll_revoked_or_expired_is_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let revoked = app.create_simple("r", &[]).await;
    let id = revoked["id"].as_str().unwrap();
    app.admin(Method::POST, &format!("/v1/keys/{id}/revoke"), None)
        .await;
    let response = app
        .admin(Method::POST, &format!("/v1/keys/{id}/roll"), None)
        .await;
    assert_problem(response, 409, "key_revoked").await;

    let old = app.create_simple("e", &[]).await;
    let old_id = old["id"].as_str().unwrap();
    app.admin(
        Method::POST,
        &format!("/v1/keys/{old_id}/roll"),
        Some(json!({"grace_period_seconds": 0})),
    )
    .await;
    // The successor is set, so a second roll reports the earlier roll first.
    let response = app
        .admin(Method::POST, &format!("/v1/keys/{old_id}/roll"), None)
        .await;
    assert_problem(response, 409, "key_already_rolled").await;

    let expires = (OffsetDateTime::now_utc() + time::Duration::seconds(1))
        .format(&Rfc3339)
        .unwrap();
    let expiring = app
        .create_key(json!({"name": "x", "scopes": [], "expires_at": expires}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let path = format!("/v1/keys/{}/roll", expiring["id"].as_str().unwrap());
    let response = app.admin(Method::POST, &path, None).await;
    assert_problem(response, 409, "key_expired").await;
}

async fn roll_rejects_grace_out_of_range(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = app.create_simple("partner", &[]).await;
    let path = format!("/v1/keys/{}/roll", old["id"].as_str().unwrap());
    for grace in [-1, 604_801, i64::MAX] {
        let response = app
            .admin(
                Method::POST,
                &path,
                Some(json!({"grace_period_seconds": grace})),
            )
            .await;
        let body = assert_problem(response, 422, "invalid_field").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("grace_period_seconds")
        );
    }
    let page: Value = app.admin_json(Method::GET, "/v1/keys", None).await;
    assert_eq!(
        page["keys"].as_array().unwrap().len(),
        2,
        "no key was created"
    );
    let max = app
        .admin(
            Method::POST,
            &path,
            Some(json!({"grace_period_seconds": 604_800})),
        )
        .await;
    assert_eq!(max.status(), 201, "seven days is allowed");
}

async fn roll_copies_fields_committed_before_it(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..20 {
        let old = app
            .create_simple(&format!("round {round}"), &["admin", "orders:read"])
            .await;
        let id = old["id"].as_str().unwrap();
        let patch = app
            .client
            .patch(app.url(&format!("/v1/keys/{id}")))
            .bearer_auth(&app.admin_key)
            .json(&json!({"scopes": ["orders:read"]}))
            .send();
        let roll = app
            .client
            .post(app.url(&format!("/v1/keys/{id}/roll")))
            .bearer_auth(&app.admin_key)
            .send();
        let (patched, rolled) = tokio::join!(patch, roll);
        let patched: Value = patched.unwrap().json().await.unwrap();
        let rolled: Value = rolled.unwrap().json().await.unwrap();

        // A patch that committed before the roll shows no successor yet, and the roll
        // must then have copied the patched scopes.
        if patched["successor_id"].is_null() {
            assert_eq!(
                rolled["scopes"],
                json!(["orders:read"]),
                "round {round}: the successor lost the update"
            );
        }
    }
}
