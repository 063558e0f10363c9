//! First start on an empty store: the schema is migrated once, and exactly one bootstrap
//! admin key and one signing key are created, however many nodes start at the same moment.

use std::sync::Arc;

use valet::key::KeyFormat;
use valet::model::Scopes;
use valet::oauth::service::OAuthService;
use valet::oauth::signing::SigningAlgorithm;
use valet::service::{KeyService, VerifyCode};

use crate::helpers::{Backend, TestStore, on_each_backend};

/// How many nodes start at once in these tests.
const NODES: usize = 6;

on_each_backend!(
    concurrent_starts_migrate_once,
    concurrent_starts_bootstrap_once,
    concurrent_starts_create_one_signing_key,
);

async fn concurrent_starts_migrate_once(backend: Backend) {
    let store = TestStore::create(backend).await;
    let url = store.url();
    let starts = (0..NODES).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { valet::store::connect(&url, true).await })
    });
    for start in starts.collect::<Vec<_>>() {
        let connected = start.await.unwrap();
        assert!(
            connected.is_ok(),
            "a concurrent start failed: {:?}",
            connected.err()
        );
    }
}

/// Creates and migrates an empty store, and returns it with its URL. The store is removed
/// when the returned value is dropped.
async fn migrated_store(backend: Backend) -> (TestStore, String) {
    let store = TestStore::create(backend).await;
    let url = store.url();
    valet::store::connect(&url, true)
        .await
        .expect("create and migrate the store");
    (store, url)
}

async fn concurrent_starts_bootstrap_once(backend: Backend) {
    let (_store, url) = migrated_store(backend).await;

    // Each node has its own connection pool, as separate processes would.
    let mut services = Vec::new();
    for _ in 0..NODES {
        let pool = valet::store::connect(&url, false).await.expect("connect");
        services.push(Arc::new(KeyService::new(pool, KeyFormat::default())));
    }
    let starts: Vec<_> = services
        .iter()
        .map(|service| {
            let service = service.clone();
            tokio::spawn(async move { service.bootstrap_admin().await })
        })
        .collect();
    let mut created = Vec::new();
    for start in starts {
        if let Some(key) = start.await.unwrap().expect("bootstrap without error") {
            created.push(key);
        }
    }

    assert_eq!(created.len(), 1, "one node creates the bootstrap key");
    let keys = services[0].store().count_keys().await.unwrap();
    assert_eq!(keys, 1, "the store contains one key");
    let admin = Scopes::parse("scopes", &["admin"]).unwrap();
    for service in &services {
        let verification = service
            .verify(created[0].raw.expose(), &admin)
            .await
            .unwrap();
        assert_eq!(verification.code, VerifyCode::Valid, "every node admits it");
    }
}

async fn concurrent_starts_create_one_signing_key(backend: Backend) {
    let (_store, url) = migrated_store(backend).await;

    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let pool = valet::store::connect(&url, false).await.expect("connect");
        let keys = Arc::new(KeyService::new(pool, KeyFormat::default()));
        let issuer = "http://127.0.0.1:8080".to_owned();
        nodes.push(Arc::new(OAuthService::new(keys, issuer)));
    }
    let starts: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move { node.ensure_signing_key(SigningAlgorithm::Es256).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("signing key ready");
    }

    let check = valet::store::connect(&url, false).await.expect("connect");
    let stored = check.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 1, "one signing key for all nodes");
    let kid = stored[0].kid.as_str();
    for node in &nodes {
        let jwks = node.jwks();
        assert_eq!(
            jwks["keys"][0]["kid"], kid,
            "every node publishes it: {jwks}"
        );
    }
}
