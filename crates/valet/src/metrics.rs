//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Labels carry route patterns, status codes, verification codes and store operation
//! names only: never key material and never a raw key id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::service::VerifyCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

/// Every metric the server exports, registered once at start.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Counters of `requests` by route and status, so that counting a request needs no
    /// allocation once its pair has been seen.
    request_counters: RwLock<HashMap<String, HashMap<u16, Counter>>>,
    verifications: [Counter; VerifyCode::ALL.len()],
    store_queries: Family<OperationLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    id_filter_rejections: Counter,
    notification_lag: Histogram,
    cache_trusted: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();

        registry.register(
            "valet_build",
            "Build of this server",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );

        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "valet_http_requests",
            "HTTP requests by matched route pattern and status",
            requests.clone(),
        );

        let verification_family = Family::<CodeLabels, Counter>::default();
        registry.register(
            "valet_verifications",
            "Key verifications by result code",
            verification_family.clone(),
        );
        let verifications = VerifyCode::ALL.map(|code| {
            verification_family
                .get_or_create(&CodeLabels {
                    code: code.as_str().to_owned(),
                })
                .clone()
        });

        let store_queries = Family::<OperationLabels, Counter>::default();
        registry.register(
            "valet_store_queries",
            "Queries sent to the store, by operation",
            store_queries.clone(),
        );

        let cache_hits = Counter::default();
        registry.register(
            "valet_cache_hits",
            "Verifications answered from the in-memory cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "valet_cache_misses",
            "Verifications of an issued id that had to load the key from the store",
            cache_misses.clone(),
        );
        let id_filter_rejections = Counter::default();
        registry.register(
            "valet_id_filter_rejections",
            "Verifications of ids that were never issued, rejected without a store query",
            id_filter_rejections.clone(),
        );

        let notification_lag = Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        registry.register(
            "valet_notification_lag_seconds",
            "Time from a key change in the store to this node applying it",
            notification_lag.clone(),
        );

        let cache_trusted = Gauge::default();
        registry.register(
            "valet_cache_trusted",
            "1 while the change feed is connected and the cache may answer, else 0",
            cache_trusted.clone(),
        );

        Arc::new(Self {
            registry,
            requests,
            request_counters: RwLock::new(HashMap::new()),
            verifications,
            store_queries,
            cache_hits,
            cache_misses,
            id_filter_rejections,
            notification_lag,
            cache_trusted,
        })
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &str, status: u16) {
        let known = self
            .request_counters
            .read()
            .expect("request counter lock")
            .get(route)
            .and_then(|by_status| by_status.get(&status))
            .cloned();
        if let Some(counter) = known {
            counter.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .clone();
        counter.inc();
        self.request_counters
            .write()
            .expect("request counter lock")
            .entry(route.to_owned())
            .or_default()
            .insert(status, counter);
    }

    /// Counts one verification.
    pub fn verification(&self, code: VerifyCode) {
        self.verifications[code.index()].inc();
    }

    /// Returns the verification count for `code` since start.
    pub fn verification_count(&self, code: VerifyCode) -> u64 {
        self.verifications[code.index()].get()
    }

    /// Counts one query sent to the store.
    pub fn store_query(&self, operation: &str) {
        self.store_queries
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn id_filter_rejection(&self) {
        self.id_filter_rejections.inc();
    }

    /// Records how long a change took to reach this node, in seconds.
    pub fn notification_lag(&self, seconds: f64) {
        self.notification_lag.observe(seconds.max(0.0));
    }

    /// Records whether the cache may serve verifications.
    pub fn set_cache_trusted(&self, trusted: bool) {
        self.cache_trusted.set(i64::from(trusted));
    }

    /// Writes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
