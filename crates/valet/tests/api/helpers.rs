//! Test harness: `spawn_app` starts the HTTP server in-process on `127.0.0.1:0`, on a
//! fresh SQLite file or a fresh PostgreSQL schema.
//!
//! PostgreSQL tests reach the server named by `VALET_TEST_POSTGRES_URL`. Without it they
//! print a loud SKIPPED line and pass, except under CI (`CI` set), where they fail.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::{Client, Response};
use serde_json::{Value, json};
use tempfile::TempDir;
use valet::oauth::service::OAuthService;
use valet::service::{CacheConfig, KeyService};
use valet::testing::EmbeddedServer;

/// Fields of a key object, in the HTTP API and in `--json` output alike.
pub const KEY_FIELDS: [&str; 12] = [
    "id",
    "name",
    "owner",
    "scopes",
    "env",
    "metadata",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "successor_id",
    "client_id",
];

/// Store backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn name(backend: Backend)`, a module `name` with one
/// test per backend: `name::sqlite` and `name::postgres`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test]
                async fn postgres() {
                    if $crate::helpers::postgres_available(stringify!($name)) {
                        super::$name($crate::helpers::Backend::Postgres).await;
                    }
                }
            }
        )*
    };
}
pub(crate) use on_each_backend;

/// Returns the PostgreSQL server for tests, or `None` when `VALET_TEST_POSTGRES_URL` is
/// unset.
pub fn postgres_url() -> Option<String> {
    std::env::var("VALET_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Returns whether PostgreSQL tests can run; prints a loud SKIPPED line when they cannot,
/// and panics under CI, where they must run.
pub fn postgres_available(test: &str) -> bool {
    if postgres_url().is_some() {
        return true;
    }
    skip_outside_ci(
        &format!("{test} on PostgreSQL"),
        "VALET_TEST_POSTGRES_URL is unset; set it to a PostgreSQL server URL to run the test",
    );
    false
}

/// Prints a loud `SKIPPED test: reason` line for a test that cannot run here, or panics
/// under CI (`CI` set), where every test must run.
pub fn skip_outside_ci(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} must run under CI, but cannot: {reason}");
    }
    // Writing to the stream directly, not through `eprintln!`, gets past the test
    // harness's output capture, so the skip shows even when the test passes.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// A PostgreSQL schema of its own for one test, dropped when this value is dropped.
pub struct TestSchema {
    server_url: String,
    pub name: String,
    /// URL whose connections use this schema through `search_path`.
    pub url: String,
}

impl TestSchema {
    /// Creates an empty schema on the server named by `VALET_TEST_POSTGRES_URL`.
    pub async fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server_url = postgres_url().expect("VALET_TEST_POSTGRES_URL is set");
        let name = format!(
            "valet_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut connection = sqlx_connect(&server_url).await;
        sqlx::Executor::execute(
            &mut connection,
            sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            )),
        )
        .await
        .expect("create test schema");
        let separator = if server_url.contains('?') { '&' } else { '?' };
        let url = format!("{server_url}{separator}options[search_path]={name}");
        Self {
            server_url,
            name,
            url,
        }
    }
}

async fn sqlx_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("connect to VALET_TEST_POSTGRES_URL")
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.server_url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        // Drop runs outside async code, so the cleanup gets a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                let mut connection = sqlx_connect(&url).await;
                sqlx::Executor::execute(&mut connection, sqlx::AssertSqlSafe(sql))
                    .await
                    .expect("drop test schema");
            });
        });
        let _ = cleanup.join();
    }
}

/// A fresh store of either backend, kept alive as long as this value.
pub enum TestStore {
    Sqlite(TempDir),
    Postgres(TestSchema),
}

impl TestStore {
    /// Creates an empty store location for `backend`.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite(tempfile::tempdir().expect("temporary directory")),
            Backend::Postgres => Self::Postgres(TestSchema::create().await),
        }
    }

    /// Returns the `--database-url` of this store.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("valet.db").display()),
            Self::Postgres(schema) => schema.url.clone(),
        }
    }
}

/// A running server with its own store and an admin key.
pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub admin_key: String,
    pub service: Arc<KeyService>,
    pub oauth: Arc<OAuthService>,
    /// Keeps the store; it is removed when the app is dropped.
    store: TestStore,
    /// Stops the change feed when dropped.
    _server: EmbeddedServer,
}

/// Starts a server on a fresh store of `backend` with one `admin` key, and waits until
/// its cache follows the store's change feed.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let store = TestStore::create(backend).await;
    let url = store.url();
    spawn_app_at(store, &url, CacheConfig::default()).await
}

/// Starts a server on `url`, which must reach the empty store that `store` keeps alive.
pub async fn spawn_app_at(test_store: TestStore, url: &str, cache: CacheConfig) -> TestApp {
    let server = EmbeddedServer::start(url, cache)
        .await
        .expect("start embedded server");
    TestApp {
        address: server.url.clone(),
        client: Client::new(),
        admin_key: server.admin_key.clone(),
        service: server.service.clone(),
        oauth: server.oauth.clone(),
        store: test_store,
        _server: server,
    }
}

/// Waits until the service's cache follows the change feed, failing after `limit`.
pub async fn wait_until_trusted(service: &KeyService, limit: std::time::Duration) {
    valet::testing::wait_until_trusted(service, limit)
        .await
        .expect("change feed connects");
}

/// Operations that run on a timer, whatever the requests: the SQLite change poller and
/// the batched `last_used_at` write.
pub const TIMED_OPERATIONS: &[&str] = &["poll_changes", "prune_changes", "record_usage"];

/// Sums `valet_store_queries_total` in a metrics text over operations not in `except`.
pub fn store_queries(metrics: &str, except: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("valet_store_queries_total{"))
        .filter(|line| {
            !except
                .iter()
                .any(|op| line.contains(&format!("operation=\"{op}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

impl TestApp {
    /// Returns the `--database-url` of this app's store.
    pub fn store_url(&self) -> String {
        self.store.url()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Sends a JSON request authenticated with the admin key.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// Sends a request authenticated with the admin key and parses the JSON response.
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let response = self.admin(method, path, body).await;
        response.json().await.expect("response body is JSON")
    }

    /// Creates a key through the API and returns the answer's JSON.
    pub async fn create_key(&self, body: Value) -> Value {
        let response = self
            .admin(reqwest::Method::POST, "/v1/keys", Some(body))
            .await;
        assert_eq!(response.status(), 201, "create key");
        response.json().await.unwrap()
    }

    /// Creates a key named `name` with `scopes` and returns the answer's JSON.
    pub async fn create_simple(&self, name: &str, scopes: &[&str]) -> Value {
        self.create_key(json!({ "name": name, "scopes": scopes }))
            .await
    }

    /// Gets an access token for a client with `client_secret_basic` and every scope of the
    /// client.
    pub async fn access_token(&self, client_id: &str, client_secret: &str) -> String {
        let response = self
            .client
            .post(self.url("/oauth/token"))
            .basic_auth(client_id, Some(client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request sent");
        assert_eq!(response.status(), 200, "token request");
        let body: Value = response.json().await.expect("token response is JSON");
        body["access_token"]
            .as_str()
            .expect("token response has access_token")
            .to_owned()
    }

    /// Verifies `key` through the API, with the admin key, and returns the JSON response.
    pub async fn verify(&self, key: &str, scopes: &[&str]) -> Value {
        let response = self
            .admin(
                reqwest::Method::POST,
                "/v1/keys/verify",
                Some(json!({ "key": key, "scopes": scopes })),
            )
            .await;
        assert_eq!(response.status(), 200, "verify");
        response.json().await.unwrap()
    }
}

/// Reads a problem-details response and checks its status, content type and `code`.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status for code {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "problem {body}");
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// Path to the `valet` binary that cargo built for these tests.
pub fn valet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_valet")
}
