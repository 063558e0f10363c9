//! The in-process cost of verifying a cached key, against one SHA-256 of the same key.
//!
//! Run with `cargo bench -p valet --bench verify`. `bench/run criterion` runs it and reads
//! criterion's estimates to print the ratio of the two.
//!
//! `KeyService::verify` runs on a current-thread tokio runtime, entered once per batch of
//! iterations, so that entering the runtime is not counted as verification. The service
//! uses a SQLite store in a temporary directory with its change feed connected, and the
//! key is verified once before the measurement, so every measured call is a cache hit.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use valet::key::{KeyEnv, KeyFormat, KeyHash};
use valet::model::{KeyName, Metadata, Scopes};
use valet::service::{KeyService, NewKey, VerifyCode};

fn verify_cached_key(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("valet.db").display());
    let (service, raw, _stop) = runtime.block_on(async {
        let store = valet::store::connect(&url, true).await.expect("open store");
        let service = Arc::new(KeyService::new(store, KeyFormat::default()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        service.spawn_change_feed(stop_rx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !service.cache().is_trusted() {
            assert!(Instant::now() < deadline, "the change feed did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let created = service
            .create(NewKey {
                name: KeyName::parse("criterion").unwrap(),
                owner: Some(valet::model::Owner::parse("acme").unwrap()),
                scopes: Scopes::parse("scopes", &["orders:read", "orders:write"]).unwrap(),
                env: KeyEnv::Live,
                metadata: Metadata::default(),
                expires_at: None,
                client_id: None,
            })
            .await
            .expect("create key");
        (service, created.raw, stop)
    });
    let key = raw.expose();
    let required = Scopes::parse("scopes", &["orders:read"]).unwrap();
    let warm = runtime.block_on(service.verify(key, &required)).unwrap();
    assert_eq!(warm.code, VerifyCode::Valid);
    assert_eq!(service.metrics().verification_count(VerifyCode::Valid), 1);

    let mut group = c.benchmark_group("verify");
    group.bench_function("cached_key", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let verification = service.verify(black_box(key), &required).await;
                    black_box(verification.unwrap());
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("sha256_of_key", |b| b.iter(|| KeyHash::of(black_box(key))));
    group.finish();

    let misses = service
        .metrics()
        .encode()
        .lines()
        .find(|line| line.starts_with("valet_cache_misses_total"))
        .map(str::to_owned);
    assert_eq!(
        misses.as_deref(),
        Some("valet_cache_misses_total 1"),
        "only the first verification may miss the cache"
    );
}

criterion_group!(benches, verify_cached_key);
criterion_main!(benches);
