//! Bad input gets a specific 4xx problem, never a 5xx, and changes no row.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem, on_each_backend, spawn_app};

on_each_backend!(
    create_rejects_bad_bodies,
    oversized_body_is_payload_too_large,
    verify_rejects_bad_bodies,
    list_rejects_bad_query,
    roll_rejects_bad_bodies,
    unknown_route_and_method_are_problems,
    create_rejects_hostile_values,
    update_rejects_null_fields,
    key_like_input_is_never_echoed,
);

async fn key_count(app: &TestApp) -> u64 {
    app.service.store().count_keys().await.unwrap()
}

async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.admin_key)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

async fn create_rejects_bad_bodies(backend: Backend) {
    let app = spawn_app(backend).await;
    let json = Some("application/json");
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (json, b"".to_vec(), 400, "missing_body"),
        (json, b"{".to_vec(), 400, "malformed_json"),
        (json, b"[1,2]".to_vec(), 422, "invalid_body"),
        (json, vec![0xff, 0xfe, b'{'], 400, "malformed_json"),
        (
            None,
            br#"{"name":"n","scopes":[]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Some("text/plain"),
            br#"{"name":"n","scopes":[]}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (json, br#"{"scopes":[]}"#.to_vec(), 422, "invalid_body"),
        (json, br#"{"name":"n"}"#.to_vec(), 422, "invalid_body"),
        (
            json,
            br#"{"name":"n","scopes":[],"colour":"red"}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json,
            br#"{"name":7,"scopes":[]}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json,
            br#"{"name":"n","scopes":"admin"}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"env":"prod"}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"expires_at":"tomorrow"}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"expires_at":"2001-01-01T00:00:00Z"}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            json,
            br#"{"name":"","scopes":[]}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            json,
            br#"{"name":"n","scopes":["has space"]}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"metadata":[1]}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"owner":""}"#.to_vec(),
            422,
            "invalid_field",
        ),
        (
            json,
            format!(r#"{{"name":"{}","scopes":[]}}"#, "n".repeat(201)).into_bytes(),
            422,
            "invalid_field",
        ),
        (
            json,
            format!("{}1{}", "[".repeat(300), "]".repeat(300)).into_bytes(),
            422,
            "invalid_body",
        ),
        (
            json,
            format!(
                r#"{{"name":"n","scopes":[],"metadata":{{"deep":{}1{}}}}}"#,
                "[".repeat(300),
                "]".repeat(300)
            )
            .into_bytes(),
            400,
            "malformed_json",
        ),
        (
            json,
            br#"{"name":"n","scopes":[],"metadata":{"n":1e999999}}"#.to_vec(),
            400,
            "malformed_json",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(60)
            .collect::<String>();
        let response = send_raw(&app, Method::POST, "/v1/keys", content_type, body).await;
        assert_eq!(response.status(), status, "body {shown:?}");
        assert_problem(response, status, code).await;
    }
    assert_eq!(key_count(&app).await, 1, "no key was created");
}

async fn oversized_body_is_payload_too_large(backend: Backend) {
    let app = spawn_app(backend).await;
    let big = json!({"name": "n", "scopes": [], "metadata": {"blob": "x".repeat(70_000)}});
    let response = send_raw(
        &app,
        Method::POST,
        "/v1/keys",
        Some("application/json"),
        serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_problem(response, 413, "body_too_large").await;
    assert_eq!(key_count(&app).await, 1);
}

async fn verify_rejects_bad_bodies(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let raw = created["key"].as_str().unwrap();

    let response = send_raw(
        &app,
        Method::POST,
        "/v1/keys/verify",
        Some("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_problem(response, 422, "invalid_body").await;

    let response = app
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"key": raw, "scopes": ["bad scope"]})),
        )
        .await;
    assert_problem(response, 422, "invalid_field").await;

    // A key sent where an enum or number is expected must not be echoed.
    let response = app
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"key": 5, "scopes": raw})),
        )
        .await;
    let body = assert_problem(response, 422, "invalid_body").await;
    assert!(!body.to_string().contains(raw), "key echoed: {body}");

    let response = app
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "n", "scopes": [], "env": raw})),
        )
        .await;
    let body = assert_problem(response, 422, "invalid_body").await;
    assert!(!body.to_string().contains(raw), "key echoed: {body}");
}

async fn list_rejects_bad_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        ("/v1/keys?limit=0", "invalid_limit"),
        ("/v1/keys?limit=101", "invalid_limit"),
        ("/v1/keys?limit=abc", "invalid_limit"),
        ("/v1/keys?limit=99999999999999999999", "invalid_limit"),
        ("/v1/keys?cursor=nope", "invalid_cursor"),
        ("/v1/keys?cursor=zzzzzzzzzzz", "invalid_cursor"),
        ("/v1/keys?colour=red", "invalid_query"),
        ("/v1/keys?limit=1&limit=2", "invalid_query"),
        ("/v1/keys?limit=+5", "invalid_limit"),
        ("/v1/keys?owner=", "invalid_owner"),
    ];
    for (path, code) in cases {
        let response = app.admin(Method::GET, path, None).await;
        assert_problem(response, 400, code).await;
    }
}

async fn roll_rejects_bad_bodies(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &[]).await;
    let path = format!("/v1/keys/{}/roll", created["id"].as_str().unwrap());
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{", 400, "malformed_json"),
        (br#"{"grace_period_seconds":"1"}"#, 422, "invalid_body"),
        (br#"{"grace_period_seconds":1.5}"#, 422, "invalid_body"),
        (
            br#"{"grace_period_seconds":99999999999999999999999}"#,
            422,
            "invalid_body",
        ),
        (br#"{"grace":1}"#, 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let response = send_raw(
            &app,
            Method::POST,
            &path,
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert_problem(response, status, code).await;
    }
    let shown: Value = app
        .admin_json(
            Method::GET,
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(shown["successor_id"], Value::Null, "no roll happened");
}

async fn unknown_route_and_method_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.admin(Method::GET, "/v2/keys", None).await;
    assert_problem(response, 404, "route_not_found").await;
    let response = app.admin(Method::DELETE, "/v1/keys", None).await;
    assert_problem(response, 405, "method_not_allowed").await;
}

async fn create_rejects_hostile_values(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (
            json!(["name", ["admin"]]),
            422,
            "invalid_body",
            "JSON object",
        ),
        (
            json!({"name": "n", "scopes": [], "expires_at": "9999-12-31T23:59:59-00:01"}),
            422,
            "invalid_field",
            "expires_at",
        ),
        (
            json!({"name": "n", "scopes": [], "expires_at": "tomorrow"}),
            422,
            "invalid_body",
            "expires_at",
        ),
        (
            json!({"name": "acme\u{200B}", "scopes": []}),
            422,
            "invalid_field",
            "name",
        ),
        (
            json!({"name": "\u{202E}evil", "scopes": []}),
            422,
            "invalid_field",
            "name",
        ),
        (
            json!({"name": "n", "scopes": [], "owner": "a\u{2028}b"}),
            422,
            "invalid_field",
            "owner",
        ),
    ];
    for (body, status, code, named) in cases {
        let response = app
            .admin(Method::POST, "/v1/keys", Some(body.clone()))
            .await;
        let problem = assert_problem(response, status, code).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(named),
            "{body}: detail {detail:?} lacks {named:?}"
        );
    }
    assert_eq!(key_count(&app).await, 1, "no key was created");
    let listed = app.admin(Method::GET, "/v1/keys", None).await;
    assert_eq!(listed.status(), 200, "the list still reads every row");
}

async fn update_rejects_null_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["a"]).await;
    let path = format!("/v1/keys/{}", created["id"].as_str().unwrap());
    for (field, hint) in [("name", "new name"), ("scopes", "[]"), ("metadata", "{}")] {
        let response = app
            .admin(Method::PATCH, &path, Some(json!({ field: null })))
            .await;
        let problem = assert_problem(response, 422, "invalid_field").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(field), "detail {detail:?} names {field}");
        assert!(detail.contains(hint), "detail {detail:?} suggests {hint}");
    }
    let cleared = app
        .admin_json(
            Method::PATCH,
            &path,
            Some(json!({"scopes": [], "metadata": {}})),
        )
        .await;
    assert_eq!(cleared["scopes"], json!([]));
}

async fn key_like_input_is_never_echoed(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_simple("worker", &["a"]).await;
    let raw = created["key"].as_str().unwrap();
    let secret = raw.split('_').nth(3).unwrap();

    let response = app
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "n", "scopes": [raw]})),
        )
        .await;
    let problem = assert_problem(response, 422, "invalid_field").await;
    assert!(
        !problem.to_string().contains(secret),
        "scope echoed: {problem}"
    );

    let answer = app.verify(raw, &[raw]).await;
    assert_eq!(answer["code"], "INSUFFICIENT_SCOPE");
    assert!(!answer["message"].to_string().contains(secret), "{answer}");

    let response = app
        .admin(Method::GET, &format!("/v1/keys?{secret}=1"), None)
        .await;
    let problem = assert_problem(response, 400, "invalid_query").await;
    assert!(
        !problem.to_string().contains(secret),
        "query echoed: {problem}"
    );

    let response = app
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"key": raw, secret: 1})),
        )
        .await;
    let problem = assert_problem(response, 422, "invalid_body").await;
    assert!(
        !problem.to_string().contains(secret),
        "field name echoed: {problem}"
    );
}

#[tokio::test]
async fn busy_sqlite_store_is_unavailable() {
    let app = spawn_app(Backend::Sqlite).await;
    // Another process holding the write lock past the 5 s busy timeout.
    let mut locker = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&app.store_url())
            .await
            .unwrap()
    };
    sqlx::Executor::execute(&mut locker, "BEGIN IMMEDIATE")
        .await
        .unwrap();

    let response = app
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "n", "scopes": []})),
        )
        .await;
    let retry_after = response.headers().get("retry-after").cloned();
    assert_problem(response, 503, "store_unavailable").await;
    assert!(retry_after.is_some(), "503 carries Retry-After");

    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .unwrap();
}
