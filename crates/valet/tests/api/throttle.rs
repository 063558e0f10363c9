//! Failed-attempt throttling: per client address (with trusted proxies) and per key id,
//! on the management, verify, forward-auth and token endpoints.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use valet::testing::{EmbeddedServer, ServerOptions};
use valet::throttle::{ThrottleConfig, parse_trusted_proxies};

use crate::process::with_wrong_secret;

const WINDOW: Duration = Duration::from_secs(2);

/// A server whose throttle allows `per_address` failures per address and `per_key` per
/// key id in each window, trusting the proxies in `trusted`.
struct Throttled {
    server: EmbeddedServer,
    http: Client,
    _dir: tempfile::TempDir,
}

impl Throttled {
    async fn start(per_address: u32, per_key: u32, trusted: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("valet.db").display());
        let options = ServerOptions {
            throttle: ThrottleConfig {
                window: WINDOW,
                max_failures_per_address: per_address,
                max_failures_per_key: per_key,
                trusted_proxies: parse_trusted_proxies(trusted).unwrap(),
            },
            ..ServerOptions::default()
        };
        let server = EmbeddedServer::start_with(&url, options).await.unwrap();
        Self {
            server,
            http: Client::new(),
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(format!("{}{path}", self.server.url))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.server.url))
    }

    async fn create_key(&self, scopes: &[&str]) -> String {
        let created: Value = self
            .post("/v1/keys")
            .bearer_auth(&self.server.admin_key)
            .json(&json!({"name": "caller", "scopes": scopes}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["key"].as_str().unwrap().to_owned()
    }

    async fn verify(&self, key: &str) -> Response {
        self.post("/v1/keys/verify")
            .bearer_auth(&self.server.admin_key)
            .json(&json!({ "key": key }))
            .send()
            .await
            .unwrap()
    }
}

/// Checks a 429 and returns its body.
async fn assert_throttled(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry_after),
        "{retry_after}"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn address_throttle_rejects_after_failed_attempts() {
    let app = Throttled::start(3, 0, "").await;
    for _ in 0..3 {
        let response = app
            .get("/v1/keys")
            .bearer_auth("vk_live_guess")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // Even a valid key is rejected from this address until the window closes.
    let blocked = app
        .get("/v1/keys")
        .bearer_auth(&app.server.admin_key)
        .send()
        .await
        .unwrap();
    let problem = assert_throttled(blocked).await;
    assert_eq!(problem["code"], "too_many_attempts");
    let token = app
        .post("/oauth/token")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let error = assert_throttled(token).await;
    assert_eq!(error["error"], "too_many_attempts");
    let introspection = app
        .post("/oauth/introspect")
        .bearer_auth(&app.server.admin_key)
        .form(&[("token", "anything")])
        .send()
        .await
        .unwrap();
    assert_throttled(introspection).await;
    let health = app.get("/healthz").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let after = app
        .get("/v1/keys")
        .bearer_auth(&app.server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn address_throttle_ignores_forwarded_headers_of_untrusted_peers() {
    let app = Throttled::start(3, 0, "").await;
    for n in 0..3 {
        let response = app
            .get("/v1/forward-auth")
            .header("x-api-key", "vk_live_guess")
            .header("x-forwarded-for", format!("198.51.100.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let spoofed = app
        .get("/v1/forward-auth")
        .header("x-api-key", &app.server.admin_key)
        .header("x-forwarded-for", "198.51.100.99")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn address_throttle_counts_forwarded_clients_of_trusted_proxies() {
    let app = Throttled::start(3, 0, "127.0.0.1").await;
    let forward = |client: &str, key: &str| {
        app.get("/v1/forward-auth")
            .header("x-api-key", key)
            .header("forwarded", format!("for={client};proto=https"))
            .send()
    };
    for _ in 0..3 {
        let response = forward("198.51.100.7", "vk_live_guess").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    let admin = app.server.admin_key.clone();
    let guesser = forward("198.51.100.7", &admin).await.unwrap();
    assert_throttled(guesser).await;
    let neighbour = forward("198.51.100.8", &admin).await.unwrap();
    assert_eq!(neighbour.status(), StatusCode::OK);
}

#[tokio::test]
async fn key_throttle_rejects_a_guessed_key_id() {
    let app = Throttled::start(0, 3, "").await;
    let key = app.create_key(&["orders:read"]).await;
    let other = app.create_key(&["orders:read"]).await;
    let guess = with_wrong_secret(&key);

    for _ in 0..3 {
        let response = app.verify(&guess).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "NOT_FOUND");
    }

    // The id is throttled on every endpoint, for the right secret too.
    let problem = assert_throttled(app.verify(&key).await).await;
    assert_eq!(problem["code"], "too_many_attempts");
    let forward = app
        .get("/v1/forward-auth")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_throttled(forward).await;

    // Other keys are unaffected.
    let body: Value = app.verify(&other).await.json().await.unwrap();
    assert_eq!(body["code"], "VALID");

    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let body: Value = app.verify(&key).await.json().await.unwrap();
    assert_eq!(body["code"], "VALID");
}

#[tokio::test]
async fn key_throttle_covers_client_secrets_at_the_token_endpoint() {
    let app = Throttled::start(0, 2, "").await;
    let client: Value = app
        .post("/v1/clients")
        .bearer_auth(&app.server.admin_key)
        .json(&json!({"name": "worker", "scopes": ["orders:read"],
                      "audiences": ["orders"], "default_audience": "orders"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let request_token = |secret: String| {
        app.post("/oauth/token")
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };

    for _ in 0..2 {
        let response = request_token(with_wrong_secret(secret)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = request_token(secret.to_owned()).await.unwrap();
    let error = assert_throttled(response).await;
    assert_eq!(error["error"], "too_many_attempts");
}
