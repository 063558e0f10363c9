//! The layer in front of a small axum app, against a real Valet server on loopback with
//! its own SQLite file.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Json, Router};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use valet::service::CacheConfig;
use valet::testing::EmbeddedServer;
use valet_tower::{Identity, Valet, ValetBuilder};

const AUDIENCE: &str = "https://orders.example";

/// A Valet server, and an app protected by the layer on another loopback port.
struct Setup {
    valet: EmbeddedServer,
    app_url: String,
    http: Client,
    _dir: TempDir,
}

async fn echo(Extension(caller): Extension<Identity>) -> Json<Value> {
    Json(json!({
        "key_id": caller.key_id(),
        "client_id": caller.client_id(),
        "owner": caller.owner(),
        "scopes": caller.scopes(),
        "env": caller.env().map(|env| format!("{env:?}")),
    }))
}

impl Setup {
    /// Starts Valet, creates a verifier key, and serves the app with the layer that
    /// `configure` sets up.
    async fn start(configure: impl FnOnce(ValetBuilder) -> ValetBuilder) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("valet.db").display());
        let valet = EmbeddedServer::start(&url, CacheConfig::default())
            .await
            .unwrap();
        let mut setup = Self {
            valet,
            app_url: String::new(),
            http: Client::new(),
            _dir: dir,
        };
        let verifier = setup.create_key(&["keys:verify"], None).await;
        let builder = Valet::builder(&setup.valet.url)
            .verifier_key(verifier["key"].as_str().unwrap())
            .audience(AUDIENCE);
        let layer = configure(builder).build().unwrap();
        setup.app_url = serve(app(&layer)).await;
        setup
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.valet.url))
            .bearer_auth(&self.valet.admin_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn create_key(&self, scopes: &[&str], owner: Option<&str>) -> Value {
        let body = json!({ "name": "caller", "scopes": scopes, "owner": owner });
        self.admin(reqwest::Method::POST, "/v1/keys", body).await
    }

    /// Creates a client with `scopes` and returns a token for `audience`.
    async fn token(&self, scopes: &[&str], audience: &str) -> String {
        let client = self
            .admin(
                reqwest::Method::POST,
                "/v1/clients",
                json!({ "name": "worker", "scopes": scopes, "audiences": [audience] }),
            )
            .await;
        let response = self
            .http
            .post(format!("{}/oauth/token", self.valet.url))
            .basic_auth(
                client["client_id"].as_str().unwrap(),
                client["client_secret"].as_str(),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", &scopes.join(" ")),
                ("resource", audience),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self.http.get(format!("{}{path}", self.app_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn get_bearer(&self, path: &str, credential: &str) -> Response {
        let value = format!("Bearer {credential}");
        self.get(path, &[("authorization", &value)]).await
    }

    /// Fetches of the JWK set that the Valet server has answered.
    async fn jwks_fetches(&self) -> u64 {
        let metrics = self
            .http
            .get(format!("{}/metrics", self.valet.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .filter(|line| line.starts_with("valet_http_requests_total{"))
            .filter(|line| line.contains("route=\"/.well-known/jwks.json\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

fn app(valet: &Valet) -> Router {
    Router::new()
        .route(
            "/read",
            get(echo).route_layer(valet.require(["orders:read"])),
        )
        .route(
            "/write",
            get(echo).route_layer(valet.require(["orders:read", "orders:write"])),
        )
        .route(
            "/query",
            get(echo).route_layer(valet.layer().allow_query_parameter("api_key")),
        )
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn challenge(response: &Response) -> &str {
    response.headers()["www-authenticate"].to_str().unwrap()
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn api_key_with_the_scope_reaches_the_handler_with_its_identity() {
    let setup = Setup::start(|b| b).await;
    let key = setup.create_key(&["orders:read"], Some("acme")).await;
    let raw = key["key"].as_str().unwrap();

    for response in [
        setup.get_bearer("/read", raw).await,
        setup.get("/read", &[("x-api-key", raw)]).await,
    ] {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("sunset").is_none());
        let caller: Value = response.json().await.unwrap();
        assert_eq!(
            caller,
            json!({
                "key_id": key["id"], "client_id": null, "owner": "acme",
                "scopes": ["orders:read"], "env": "Live",
            })
        );
    }
}

#[tokio::test]
async fn api_key_without_a_required_scope_gets_403_naming_the_scopes() {
    let setup = Setup::start(|b| b).await;
    let key = setup.create_key(&["orders:read"], None).await;

    let response = setup
        .get_bearer("/write", key["key"].as_str().unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&response),
        "Bearer realm=\"valet\", error=\"insufficient_scope\", scope=\"orders:read orders:write\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("orders:write")
    );
}

#[tokio::test]
async fn missing_invalid_and_doubled_credentials_get_rfc_6750_answers() {
    let setup = Setup::start(|b| b.realm("orders")).await;
    let key = setup.create_key(&["orders:read"], None).await;
    let raw = key["key"].as_str().unwrap();

    let missing = setup.get("/read", &[]).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&missing), "Bearer realm=\"orders\"");

    // The last checksum character, changed to one it is not.
    let last = if raw.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &raw[..raw.len() - 1]);
    for (name, bad) in [
        ("changed checksum", forged.as_str()),
        ("nonsense key", "vk_live_nonsense"),
        ("nonsense token", "a.b.c"),
    ] {
        let response = setup.get_bearer("/read", bad).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            challenge(&response),
            "Bearer realm=\"orders\", error=\"invalid_token\""
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains(bad), "the rejection echoes the credential");
    }

    let bearer = format!("Bearer {raw}");
    let doubled = setup
        .get("/read", &[("authorization", &bearer), ("x-api-key", raw)])
        .await;
    assert_eq!(doubled.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(doubled).await, "invalid_request");
}

#[tokio::test]
async fn query_parameter_keys_count_only_where_the_route_opted_in() {
    let setup = Setup::start(|b| b).await;
    let key = setup.create_key(&["orders:read"], None).await;
    let raw = key["key"].as_str().unwrap();

    let ignored = setup.get(&format!("/read?api_key={raw}"), &[]).await;
    assert_eq!(ignored.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&ignored), "Bearer realm=\"valet\"");

    let accepted = setup.get(&format!("/query?api_key={raw}"), &[]).await;
    assert_eq!(accepted.status(), StatusCode::OK);
}

#[tokio::test]
async fn revoked_key_is_rejected_within_the_revocation_bound() {
    let bound = Duration::from_millis(300);
    let setup = Setup::start(|b| b.revocation_bound(bound)).await;
    let key = setup.create_key(&["orders:read"], None).await;
    let raw = key["key"].as_str().unwrap();
    assert_eq!(setup.get_bearer("/read", raw).await.status(), 200);

    let id = key["id"].as_str().unwrap();
    setup
        .admin(
            reqwest::Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            json!({}),
        )
        .await;
    let revoked_at = Instant::now();
    loop {
        let status = setup.get_bearer("/read", raw).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < bound + Duration::from_millis(500),
            "a revoked key was still admitted {:?} after revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rolled_key_in_its_grace_period_gets_a_sunset_header() {
    let setup = Setup::start(|b| b).await;
    let key = setup.create_key(&["orders:read"], None).await;
    let id = key["id"].as_str().unwrap();
    let rolled = setup
        .admin(
            reqwest::Method::POST,
            &format!("/v1/keys/{id}/roll"),
            json!({ "grace_period_seconds": 3600 }),
        )
        .await;

    let old = setup
        .get_bearer("/read", key["key"].as_str().unwrap())
        .await;
    assert_eq!(old.status(), StatusCode::OK);
    let expires_at = time::OffsetDateTime::parse(
        rolled["previous"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let sunset = old.headers()["sunset"].to_str().unwrap();
    let expected = expires_at
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap()
        .replace("+0000", "GMT");
    assert_eq!(sunset, expected);

    let new = setup
        .get_bearer("/read", rolled["key"].as_str().unwrap())
        .await;
    assert_eq!(new.status(), StatusCode::OK);
    assert!(new.headers().get("sunset").is_none());
}

#[tokio::test]
async fn access_token_is_verified_locally_with_scopes_and_audience() {
    let setup = Setup::start(|b| b).await;
    let reader = setup.token(&["orders:read"], AUDIENCE).await;

    let response = setup.get_bearer("/read", &reader).await;
    assert_eq!(response.status(), StatusCode::OK);
    let caller: Value = response.json().await.unwrap();
    assert!(caller["client_id"].is_string());
    assert_eq!(caller["key_id"], Value::Null);
    assert_eq!(caller["scopes"], json!(["orders:read"]));

    let forbidden = setup.get_bearer("/write", &reader).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let elsewhere = setup
        .token(&["orders:read"], "https://billing.example")
        .await;
    let rejected = setup.get_bearer("/read", &elsewhere).await;
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(rejected).await, "invalid_token");

    // The same token with its signature cut off, and with another payload.
    let mut parts: Vec<&str> = reader.split('.').collect();
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    parts[1] = "eyJzY29wZSI6Im9yZGVyczpyZWFkIG9yZGVyczp3cml0ZSJ9";
    let tampered = parts.join(".");
    for forged in [unsigned, tampered] {
        let response = setup.get_bearer("/read", &forged).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn token_from_other_issuer_names_issuer() {
    let setup = Setup::start(|b| b.issuer("https://auth.elsewhere.example")).await;
    let token = setup.token(&["orders:read"], AUDIENCE).await;

    let rejected = setup.get_bearer("/read", &token).await;
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("issuer"), "{description}");
}

#[tokio::test]
async fn new_signing_key_is_fetched_when_a_token_names_it() {
    let setup = Setup::start(|b| b.min_jwks_refresh(Duration::from_millis(50))).await;
    let before = setup.token(&["orders:read"], AUDIENCE).await;
    assert_eq!(setup.get_bearer("/read", &before).await.status(), 200);

    setup
        .valet
        .oauth
        .rotate_signing_key(
            valet::oauth::signing::SigningAlgorithm::EdDsa,
            time::Duration::ZERO,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let after = setup.token(&["orders:read"], AUDIENCE).await;
    assert_eq!(setup.get_bearer("/read", &after).await.status(), 200);
    assert_eq!(setup.get_bearer("/read", &before).await.status(), 200);
}

#[tokio::test]
async fn tokens_naming_unknown_keys_cannot_flood_the_jwks_endpoint() {
    let setup = Setup::start(|b| b.min_jwks_refresh(Duration::from_secs(60))).await;
    let token = setup.token(&["orders:read"], AUDIENCE).await;
    assert_eq!(setup.get_bearer("/read", &token).await.status(), 200);
    let fetches = setup.jwks_fetches().await;
    assert_eq!(fetches, 1);

    let payload = token.split('.').nth(1).unwrap();
    for n in 0..50 {
        // {"alg":"ES256","typ":"at+jwt","kid":"unknown-<n>"}, base64url without padding.
        let header = base64url(&format!(
            "{{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"unknown-{n}\"}}"
        ));
        let forged = format!("{header}.{payload}.c2lnbmF0dXJl");
        assert_eq!(setup.get_bearer("/read", &forged).await.status(), 401);
    }
    assert_eq!(setup.jwks_fetches().await, fetches);
}

#[tokio::test]
async fn unreachable_valet_gets_503_with_retry_after() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let valet = Valet::builder(closed)
        .verifier_key("vk_live_unused")
        .build()
        .unwrap();
    let app_url = serve(app(&valet)).await;

    let response = Client::new()
        .get(format!("{app_url}/read"))
        .header("x-api-key", "vk_live_anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn verifier_key_without_the_verify_scope_fails_closed() {
    let setup = Setup::start(|b| b).await;
    let weak = setup.create_key(&["orders:read"], None).await;
    let valet = Valet::builder(&setup.valet.url)
        .verifier_key(weak["key"].as_str().unwrap())
        .build()
        .unwrap();
    let app_url = serve(app(&valet)).await;

    let response = Client::new()
        .get(format!("{app_url}/read"))
        .bearer_auth(weak["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Base64url without padding, for building forged token headers.
fn base64url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
