//! HTTPS from certificate files, and credentials kept off plain HTTP on listeners that
//! other hosts can reach.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use valet::http::{PlainHttp, tls_acceptor};
use valet::testing::{EmbeddedServer, ServerOptions};

use crate::helpers::{TIMED_OPERATIONS, store_queries};
use crate::process::{Server, Store, stderr_of};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
struct Certificate {
    dir: tempfile::TempDir,
    pem: String,
}

impl Certificate {
    fn generate() -> Self {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let issued = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let pem = issued.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &pem).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            issued.signing_key.serialize_pem(),
        )
        .unwrap();
        Self { dir, pem }
    }

    fn cert_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Builds a client that trusts only this certificate.
    fn client(&self) -> Client {
        let root = reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap();
        Client::builder()
            .tls_certs_only([root])
            .build()
            .expect("HTTPS client")
    }
}

/// Reads `valet_store_queries_total`, summed over operations, from the server's metrics.
async fn total_store_queries(http: &Client, base_url: &str) -> u64 {
    let metrics = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    store_queries(&metrics, TIMED_OPERATIONS)
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("valet.db").display())
}

#[tokio::test]
async fn https_serves_the_api_with_the_given_certificate() {
    let certificate = Certificate::generate();
    let acceptor = tls_acceptor(&certificate.cert_path(), &certificate.key_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        tls: Some(acceptor),
        plain_http: PlainHttp::Rejected,
        ..ServerOptions::default()
    };
    let server = EmbeddedServer::start_with(&sqlite_url(&dir), options)
        .await
        .unwrap();
    assert!(server.url.starts_with("https://127.0.0.1:"));

    let https = certificate.client();
    let listed = https
        .get(format!("{}/v1/keys", server.url))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(listed.status(), StatusCode::OK);
    let metadata: Value = https
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            server.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metadata["issuer"].as_str().unwrap().starts_with("https://"));

    // Plain HTTP to the TLS port gets no HTTP response at all.
    let plain = server.url.replacen("https://", "http://", 1);
    let answer = Client::new().get(format!("{plain}/healthz")).send().await;
    assert!(answer.is_err(), "plain HTTP got an answer: {answer:?}");
}

#[tokio::test]
async fn plain_http_off_loopback_rejects_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        plain_http: PlainHttp::Rejected,
        ..ServerOptions::default()
    };
    let server = EmbeddedServer::start_with(&sqlite_url(&dir), options)
        .await
        .unwrap();
    let http = Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    let queries_before = total_store_queries(&http, &server.url).await;

    // Endpoints without credentials keep working.
    let health = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let jwks = http
        .get(url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);

    let created = http
        .post(url("/v1/keys"))
        .bearer_auth(&server.admin_key)
        .json(&json!({"name": "sent in clear", "scopes": ["orders:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::FORBIDDEN);
    let problem: Value = created.json().await.unwrap();
    assert_eq!(problem["code"], "https_required");
    assert!(problem["detail"].as_str().unwrap().contains("--tls-cert"));

    let forward = http
        .get(url("/v1/forward-auth"))
        .header("x-api-key", &server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(forward.status(), StatusCode::FORBIDDEN);

    let token = http
        .post(url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "any"),
            ("client_secret", "any"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::BAD_REQUEST);
    let error: Value = token.json().await.unwrap();
    assert_eq!(error["error"], "invalid_request");

    // The rejected create reached neither the store nor the key list.
    let queries_after = total_store_queries(&http, &server.url).await;
    assert_eq!(queries_after, queries_before);
    let keys = server.service.store().count_keys().await.unwrap();
    assert_eq!(keys, 1, "only the admin key exists");
}

#[tokio::test]
async fn serve_on_all_interfaces_rejects_plain_credentials() {
    let store = Store::new();
    let mut open = Server::start_on(&store, "info", "0.0.0.0", &[]).await;
    let admin = crate::serving::bootstrap_key(&open.stdout());
    let http = Client::new();
    let rejected = http
        .get(format!("{}/v1/keys", open.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert!(
        open.stderr()
            .contains("requests with credentials will be rejected")
    );
    open.stop().await;

    let behind = Server::start_on(&store, "info", "0.0.0.0", &["--behind-tls-proxy"]).await;
    let accepted = http
        .get(format!("{}/v1/keys", behind.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
}

#[tokio::test]
async fn serve_names_an_unreadable_certificate_file() {
    let store = Store::new();
    let missing = store.file("missing-cert.pem");
    let missing = missing.to_str().unwrap();
    let output = store.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("missing-cert.pem"), "{stderr}");
    assert!(stderr.contains("could not read certificates"), "{stderr}");

    let half = store.run(&["serve", "--tls-cert", missing]);
    assert!(!half.status.success());
    assert!(
        stderr_of(&half).contains("--tls-key"),
        "{}",
        stderr_of(&half)
    );
}
