//! First start on an empty store: the schema is migrated once and exactly one bootstrap
//! admin key is created, however many nodes start at the same moment.

use std::sync::Arc;

use valet::key::KeyFormat;
use valet::model::Scopes;
use valet::service::{KeyService, VerifyCode};

use crate::helpers::{Backend, TestStore, on_each_backend};

/// How many nodes start at once in these tests.
const NODES: usize = 6;

on_each_backend!(
    concurrent_starts_migrate_once,
    concurrent_starts_bootstrap_once
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

async fn concurrent_starts_bootstrap_once(backend: Backend) {
    let store = TestStore::create(backend).await;
    let url = store.url();
    valet::store::connect(&url, true)
        .await
        .expect("create and migrate the store");

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
