//! Runs the example orders service against a real Valet server, both on loopback, and
//! calls it as a partner with an API key and as a worker with an access token would.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use valet::service::CacheConfig;
use valet::testing::EmbeddedServer;
use valet_tower::Valet;

const AUDIENCE: &str = "orders";

async fn post_json(http: &Client, url: String, bearer: &str, body: Value) -> Value {
    let response = http
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

#[tokio::test]
async fn orders_service_admits_keys_and_tokens_by_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("valet.db").display());
    let valet = EmbeddedServer::start(&store, CacheConfig::default())
        .await
        .unwrap();
    let http = Client::new();
    let keys_url = format!("{}/v1/keys", valet.url);
    let admin = valet.admin_key.as_str();

    // What an operator does once: a verifier key for the service, keys for its callers.
    let verifier = post_json(
        &http,
        keys_url.clone(),
        admin,
        json!({"name": "orders-service", "scopes": ["keys:verify"]}),
    )
    .await;
    let reader = post_json(
        &http,
        keys_url.clone(),
        admin,
        json!({"name": "partner", "scopes": ["orders:read"], "owner": "acme"}),
    )
    .await;
    let worker = post_json(
        &http,
        format!("{}/v1/clients", valet.url),
        admin,
        json!({"name": "worker", "scopes": ["orders:read", "orders:write"],
               "audiences": [AUDIENCE], "default_audience": AUDIENCE}),
    )
    .await;

    let layer = Valet::builder(&valet.url)
        .verifier_key(verifier["key"].as_str().unwrap())
        .audience(AUDIENCE)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders = format!("http://{}/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, orders_service::app(&layer)).await });

    // The partner's key reads, and the handler sees who it is.
    let raw = reader["key"].as_str().unwrap();
    let listed = http.get(&orders).bearer_auth(raw).send().await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body["caller"]["key_id"], reader["id"]);
    assert_eq!(body["caller"]["owner"], "acme");
    assert_eq!(body["caller"]["env"], "live");

    // It may not write.
    let rejected = http.post(&orders).bearer_auth(raw).send().await.unwrap();
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert!(
        rejected.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"orders:write\"")
    );

    // The worker gets a token from Valet and writes with it.
    let token: Value = http
        .post(format!("{}/oauth/token", valet.url))
        .basic_auth(
            worker["client_id"].as_str().unwrap(),
            worker["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created = http
        .post(&orders)
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["caller"]["client_id"], worker["client_id"]);

    // Without a credential, nothing gets through.
    let anonymous = http.get(&orders).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
