//! An in-process Valet server on `127.0.0.1:0` for integration tests, Valet's own and those
//! of services that enforce its keys and tokens.
//!
//! It runs the same router, store, cache and change feed as `valet serve`, so a test talks
//! real HTTP to the real server. Only the bootstrap differs: the admin key is handed to
//! the caller instead of being printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::http::{self, AppState, PlainHttp};
use crate::key::KeyFormat;
use crate::oauth::service::OAuthService;
use crate::oauth::signing::SigningAlgorithm;
use crate::service::{CacheConfig, KeyService};
use crate::store;
use crate::throttle::{AddressThrottle, ThrottleConfig};

/// How long [`EmbeddedServer::start`] waits for the cache to follow the change feed.
const FEED_CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Settings of an [`EmbeddedServer`]. The default serves plain HTTP on loopback with the
/// default cache and no failed-attempt throttling.
pub struct ServerOptions {
    pub cache: CacheConfig,
    /// Serves HTTPS with this acceptor when set.
    pub tls: Option<TlsAcceptor>,
    /// The treatment of credentials over plain HTTP; `PlainHttp::Rejected` acts as on a
    /// listener that other hosts can reach.
    pub plain_http: PlainHttp,
    pub throttle: ThrottleConfig,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            tls: None,
            plain_http: PlainHttp::Loopback,
            throttle: ThrottleConfig::disabled(),
        }
    }
}

/// A running server with an `admin` key. Serving stops when the runtime that started it
/// shuts down; the change feed stops when this value is dropped.
pub struct EmbeddedServer {
    /// Base URL, `http://127.0.0.1:<port>` or `https://...`, which is also the token issuer.
    pub url: String,
    /// Raw key with scope `admin`. Deliberately not in any `Debug` output.
    pub admin_key: String,
    pub service: Arc<KeyService>,
    pub oauth: Arc<OAuthService>,
    _stop: watch::Sender<bool>,
}

impl std::fmt::Debug for EmbeddedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EmbeddedServer {
    /// Opens (and migrates) the store at `database_url`, which should be empty, creates an
    /// admin key, and serves on a free loopback port once the cache follows the store.
    /// Failed-attempt throttling is off.
    pub async fn start(database_url: &str, cache: CacheConfig) -> anyhow::Result<Self> {
        let options = ServerOptions {
            cache,
            ..ServerOptions::default()
        };
        Self::start_with(database_url, options).await
    }

    /// Starts like [`EmbeddedServer::start`], with the settings in `options`.
    pub async fn start_with(database_url: &str, options: ServerOptions) -> anyhow::Result<Self> {
        let ServerOptions {
            cache,
            tls,
            plain_http,
            throttle,
        } = options;
        let store = store::connect(database_url, true)
            .await
            .with_context(|| format!("could not open the store at {database_url}"))?;
        let service = Arc::new(
            KeyService::with_cache(store, KeyFormat::default(), cache).with_key_throttle(&throttle),
        );
        let (stop, stop_rx) = watch::channel(false);
        service.spawn_change_feed(stop_rx);
        wait_until_trusted(&service, FEED_CONNECT_LIMIT).await?;

        let admin = service
            .bootstrap_admin()
            .await
            .context("could not create the admin key")?
            .context(
                "the store already contains keys; start the embedded server on an empty one",
            )?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let oauth = Arc::new(OAuthService::new(service.clone(), url.clone()));
        oauth
            .ensure_signing_key(SigningAlgorithm::Es256)
            .await
            .context("could not create the token signing key")?;
        let state = AppState {
            service: service.clone(),
            oauth: oauth.clone(),
            throttle: Arc::new(AddressThrottle::new(&throttle)),
        };
        tokio::spawn(http::serve_with(
            listener,
            state,
            tls,
            plain_http,
            std::future::pending(),
        ));

        Ok(Self {
            url,
            admin_key: admin.raw.expose().to_owned(),
            service,
            oauth,
            _stop: stop,
        })
    }
}

/// Waits until the service's cache follows the change feed, failing after `limit`.
pub async fn wait_until_trusted(service: &KeyService, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !service.cache().is_trusted() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the change feed did not connect within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
