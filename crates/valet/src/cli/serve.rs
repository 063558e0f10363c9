//! `valet serve`: the HTTP server, with first-run bootstrap and graceful shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{self, AppState, PlainHttp};
use crate::oauth::sealing::SealingKey;
use crate::oauth::service::OAuthService;
use crate::oauth::signing::SigningAlgorithm;
use crate::service::{CacheConfig, CreatedKey, KeyService, VerifyCode};
use crate::throttle::{AddressThrottle, ThrottleConfig};

/// How often the signing keys are reread from the store. A rotation's delay should be
/// longer than this, so every node publishes the new key before any node signs with it.
const SIGNING_KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// How often failed verifications are summarised in the log.
const FAILURE_REPORT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on, as IP:PORT, for example 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, env = "VALET_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Issuer URL of access tokens (their `iss`), as clients and resource servers reach
    /// this server, without a trailing slash. Default: http:// and the listen address.
    #[arg(long, env = "VALET_ISSUER", value_parser = parse_issuer)]
    pub issuer: Option<String>,

    /// Algorithm of the token signing key created on the first start: ES256 or EdDSA.
    #[arg(long, env = "VALET_SIGNING_ALGORITHM", default_value = "ES256")]
    pub signing_algorithm: SigningAlgorithm,

    /// Maximum number of verified keys kept in memory.
    #[arg(long, env = "VALET_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: usize,

    /// Seconds during which cached keys may still be served while the store is
    /// unreachable. 0 fails closed with 503 at once.
    #[arg(long, env = "VALET_STALE_IF_ERROR_SECONDS", default_value_t = 0)]
    pub stale_if_error_seconds: u64,

    /// PEM file with the server certificate, then any intermediates, to serve HTTPS.
    /// Requires --tls-key.
    #[arg(
        long,
        env = "VALET_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert.
    #[arg(
        long,
        env = "VALET_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Declares that a proxy in front terminates TLS, so plain HTTP on a listener that is
    /// not on loopback may carry credentials.
    #[arg(long, env = "VALET_BEHIND_TLS_PROXY")]
    pub behind_tls_proxy: bool,

    /// Accepts credentials over plain HTTP on a listener that is not on loopback, for
    /// networks that the operator trusts. Anyone on the path can read them.
    #[arg(long, env = "VALET_ALLOW_PLAIN_HTTP")]
    pub allow_plain_http: bool,

    /// Failed attempts (rejected credentials) one client address may make per window before
    /// its requests get 429. 0 turns address throttling off.
    #[arg(long, env = "VALET_MAX_FAILURES_PER_ADDRESS", default_value_t = 30)]
    pub max_failures_per_address: u32,

    /// Failed attempts (a known key id with a wrong secret) per key id and window before
    /// verifications naming that id get 429. 0 turns key throttling off.
    #[arg(long, env = "VALET_MAX_FAILURES_PER_KEY", default_value_t = 20)]
    pub max_failures_per_key: u32,

    /// Length in seconds of the window in which failed attempts are counted.
    #[arg(long, env = "VALET_THROTTLE_WINDOW_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub throttle_window_seconds: u64,

    /// Proxies whose Forwarded or X-Forwarded-For header names the client address, as
    /// comma-separated IP addresses or CIDR networks, for example 127.0.0.1,10.0.0.0/8.
    #[arg(long, env = "VALET_TRUSTED_PROXIES", value_parser = parse_trusted_proxies, default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

/// The parsed `--trusted-proxies` list.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

fn parse_trusted_proxies(text: &str) -> Result<TrustedProxies, String> {
    crate::throttle::parse_trusted_proxies(text).map(TrustedProxies)
}

fn parse_issuer(text: &str) -> Result<String, String> {
    let valid = (text.starts_with("https://") || text.starts_with("http://"))
        && !text.ends_with('/')
        && !text.contains(['?', '#', ' ']);
    if !valid {
        return Err(
            "expected an http:// or https:// URL without a trailing slash, query or fragment"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        "expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080; host names are not resolved"
            .to_owned()
    })
}

impl ServeArgs {
    pub fn throttle_config(&self) -> ThrottleConfig {
        ThrottleConfig {
            window: Duration::from_secs(self.throttle_window_seconds),
            max_failures_per_address: self.max_failures_per_address,
            max_failures_per_key: self.max_failures_per_key,
            trusted_proxies: self.trusted_proxies.0.clone(),
        }
    }

    pub fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            capacity: self.cache_capacity,
            stale_if_error: Duration::from_secs(self.stale_if_error_seconds),
        }
    }
}

pub async fn run(
    service: Arc<KeyService>,
    args: &ServeArgs,
    database_url: &str,
    sealing_key: Option<SealingKey>,
) -> anyhow::Result<ExitCode> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        store = service.store().backend(),
        database_url = %crate::store::redact_url(database_url),
        key_prefix = %service.format().prefix(),
        cache_capacity = args.cache_capacity,
        stale_if_error_seconds = args.stale_if_error_seconds,
        max_failures_per_address = args.max_failures_per_address,
        max_failures_per_key = args.max_failures_per_key,
        trusted_proxies = args.trusted_proxies.0.len(),
        "starting valet"
    );

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
        _ => None,
    };
    let plain_http = PlainHttp::decide(args.listen, args.behind_tls_proxy, args.allow_plain_http);
    if tls.is_none() && plain_http == PlainHttp::Rejected {
        tracing::warn!(
            listen = %args.listen,
            "serving plain HTTP on an address other hosts can reach: requests with credentials \
             will be rejected; set --tls-cert and --tls-key, --behind-tls-proxy, or \
             --allow-plain-http"
        );
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let base_url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });

    // The port is bound first, so a start that cannot listen never spends the one
    // printing of the bootstrap key.
    if let Some(created) = service.bootstrap_admin().await? {
        print_bootstrap_key(&created, &base_url).context(
            "could not print the bootstrap admin key on standard output; \
             revoke it and create another with `valet keys create --name admin --scope admin`",
        )?;
    }
    tracing::info!(address = %local, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let feed = service.spawn_change_feed(stop_tx.subscribe());
    let flusher = tokio::spawn(
        service
            .usage()
            .clone()
            .run_flusher(service.store().clone(), stop_rx),
    );

    let reporter = tokio::spawn(report_failed_verifications(
        service.clone(),
        stop_tx.subscribe(),
    ));

    let issuer = args.issuer.clone().unwrap_or_else(|| base_url.clone());
    if sealing_key.is_none() {
        tracing::warn!(
            "token signing keys are stored unencrypted; set VALET_SIGNING_KEY_ENCRYPTION_KEY so \
             that a copy of the store cannot sign tokens"
        );
    }
    let oauth =
        Arc::new(OAuthService::new(service.clone(), issuer.clone()).with_sealing_key(sealing_key));
    oauth
        .ensure_signing_key(args.signing_algorithm)
        .await
        .context("could not load or create the token signing key")?;
    let reloader = tokio::spawn(reload_signing_keys(oauth.clone(), stop_tx.subscribe()));
    tracing::info!(issuer = %issuer, "OAuth issuer");
    let state = AppState {
        service: service.clone(),
        oauth,
        throttle: Arc::new(AddressThrottle::new(&args.throttle_config())),
    };
    tracing::info!(tls = tls.is_some(), plain_http = ?plain_http, "serving");
    http::serve_with(listener, state, tls, plain_http, shutdown_signal()).await;

    let _ = stop_tx.send(true);
    let _ = flusher.await;
    let _ = reporter.await;
    let _ = feed.await;
    let _ = reloader.await;
    tracing::info!("valet stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints the bootstrap admin key once on standard output, never through the log.
fn print_bootstrap_key(created: &CreatedKey, base: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "==================== VALET BOOTSTRAP ADMIN KEY ===================="
    )?;
    writeln!(
        out,
        "The store was empty, so Valet created a key with scope `admin`."
    )?;
    writeln!(
        out,
        "It is shown only this once and cannot be recovered. Store it now:"
    )?;
    writeln!(out)?;
    writeln!(out, "    {}", created.raw.expose())?;
    writeln!(out)?;
    writeln!(
        out,
        "Use it as a bearer token on the management API, for example:"
    )?;
    writeln!(out, "    export VALET_ADMIN_KEY='<the key above>'")?;
    writeln!(
        out,
        "    curl -H \"Authorization: Bearer $VALET_ADMIN_KEY\" {base}/v1/keys"
    )?;
    writeln!(out, "Key id: {}", created.record.id)?;
    writeln!(
        out,
        "Lost it? Create another on the same store: valet keys create --name admin --scope admin"
    )?;
    writeln!(
        out,
        "==================================================================="
    )?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Logs one summary line per [`FAILURE_REPORT_INTERVAL`] in which verifications failed,
/// so that a flood of bad keys is visible without a log line per request.
async fn report_failed_verifications(service: Arc<KeyService>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(FAILURE_REPORT_INTERVAL);
    let snapshot =
        || VerifyCode::ALL.map(|code| (code, service.metrics().verification_count(code)));
    let mut previous = snapshot();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let current = snapshot();
        let failed: Vec<String> = current
            .iter()
            .zip(&previous)
            .filter(|((code, _), _)| *code != VerifyCode::Valid)
            .filter(|((_, now), (_, before))| now > before)
            .map(|((code, now), (_, before))| format!("{}={}", code.as_str(), now - before))
            .collect();
        if !failed.is_empty() {
            tracing::info!(
                failures = %failed.join(" "),
                interval_seconds = FAILURE_REPORT_INTERVAL.as_secs(),
                "verifications failed"
            );
        }
        previous = current;
    }
}

/// Rereads the signing keys every [`SIGNING_KEY_RELOAD_INTERVAL`], so a rotation made on
/// another node or with the CLI is published and used here too.
async fn reload_signing_keys(oauth: Arc<OAuthService>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(SIGNING_KEY_RELOAD_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(err) = oauth.reload_signing_keys().await {
            tracing::warn!(error = %err, "could not reload signing keys; keeping the loaded ones");
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "could not listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "could not listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received; draining requests");
}
