//! Two `valet serve` processes on one PostgreSQL schema: a change made through either node
//! reaches the other through `LISTEN`/`NOTIFY`.

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};

use crate::helpers::{postgres_available, store_queries};
use crate::process::{Server, Store, find_keys};

/// Maximum time a change may take to reach the other node in these tests; the benchmark
/// measures the real figure.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(2);

struct Node<'a> {
    server: &'a Server,
    client: &'a Client,
    admin_key: &'a str,
}

impl Node<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.server.address))
            .bearer_auth(self.admin_key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        assert!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON response")
    }

    async fn verify(&self, key: &str) -> Value {
        self.post("/v1/keys/verify", json!({ "key": key })).await
    }

    /// Verifies `key` until its code is `code`, failing after [`PROPAGATION_LIMIT`].
    async fn wait_for_code(&self, key: &str, code: &str) -> Value {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            let answer = self.verify(key).await;
            if answer["code"] == code {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "{code} not seen within {PROPAGATION_LIMIT:?}; last answer {answer}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `valet_cache_trusted` is 1, failing after [`PROPAGATION_LIMIT`].
    async fn wait_until_trusted(&self) {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        while !self.metrics().await.contains("\nvalet_cache_trusted 1\n") {
            assert!(Instant::now() < deadline, "change feed did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.server.address))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    async fn store_queries(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.server.address))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        store_queries(&text, &["record_usage"])
    }
}

#[tokio::test]
async fn two_nodes_share_changes() {
    if !postgres_available("two_nodes_share_changes") {
        return;
    }
    let store = Store::postgres().await;
    let server_a = Server::start(&store, "info").await;
    let server_b = Server::start(&store, "info").await;
    let keys = find_keys(&server_a.stdout(), "vk_live_");
    assert_eq!(keys.len(), 1, "node A printed the bootstrap key");
    assert!(
        find_keys(&server_b.stdout(), "vk_live_").is_empty(),
        "node B printed none"
    );

    let client = Client::new();
    let a = Node {
        server: &server_a,
        client: &client,
        admin_key: &keys[0],
    };
    let b = Node {
        server: &server_b,
        client: &client,
        admin_key: &keys[0],
    };

    // Create on A, verify on B.
    let created = a
        .post(
            "/v1/keys",
            json!({"name": "worker", "scopes": ["orders:read"]}),
        )
        .await;
    let raw = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    b.wait_for_code(raw, "VALID").await;

    // Revoke on A: B, which has the key cached, rejects it.
    assert_eq!(b.verify(raw).await["code"], "VALID", "B has the key cached");
    a.post(&format!("/v1/keys/{id}/revoke"), json!({})).await;
    b.wait_for_code(raw, "REVOKED").await;

    // Roll on B: A accepts the new key and reports and the old key's grace expiry.
    let old = a
        .post("/v1/keys", json!({"name": "partner", "scopes": []}))
        .await;
    let old_raw = old["key"].as_str().unwrap();
    b.wait_for_code(old_raw, "VALID").await;
    a.wait_for_code(old_raw, "VALID").await;
    let rolled = b
        .post(
            &format!("/v1/keys/{}/roll", old["id"].as_str().unwrap()),
            json!({"grace_period_seconds": 600}),
        )
        .await;
    let new_raw = rolled["key"].as_str().unwrap();
    a.wait_for_code(new_raw, "VALID").await;
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    let old_on_a = loop {
        let answer = a.verify(old_raw).await;
        if answer["key"]["successor_id"] == rolled["id"] || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        old_on_a["code"], "VALID",
        "old key lives through its grace period"
    );
    assert_eq!(old_on_a["key"]["successor_id"], rolled["id"]);
    assert_eq!(
        old_on_a["key"]["expires_at"],
        rolled["previous"]["expires_at"]
    );
}

#[tokio::test]
async fn forged_keys_leave_store_queries_unchanged() {
    if !postgres_available("forged_keys_leave_store_queries_unchanged") {
        return;
    }
    let store = Store::postgres().await;
    let server = Server::start(&store, "info").await;
    let keys = find_keys(&server.stdout(), "vk_live_");
    let client = Client::new();
    let node = Node {
        server: &server,
        client: &client,
        admin_key: &keys[0],
    };
    // Once the feed is connected, the first request caches the admin key that
    // authenticates the rest.
    node.wait_until_trusted().await;
    node.verify("warm-up").await;

    let format = valet::key::KeyFormat::default();
    let before = node.store_queries().await;
    for _ in 0..1_000 {
        let id = valet::key::KeyId::generate().unwrap();
        let forged = format.generate(valet::key::KeyEnv::Live, &id).unwrap();
        assert_eq!(node.verify(forged.expose()).await["code"], "NOT_FOUND");
    }
    let after = node.store_queries().await;
    assert_eq!(after, before, "valet_store_queries_total changed");
}
