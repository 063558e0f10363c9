//! Soak: sustained load on key verification and token issuance for several minutes, with
//! every response checked and the server's resident memory sampled throughout.
//!
//! Usage: `soak VALET_BINARY [--minutes N] [--concurrency N]`.
//!
//! One `valet serve` process on a fresh SQLite file in a temporary directory, on 127.0.0.1.
//! `--concurrency` workers (default 8) send requests in a closed loop, half of them
//! `POST /v1/keys/verify` on a pool of 1,000 keys and half `POST /oauth/token`. The run
//! fails if any response is not the expected 200, and reports the resident memory
//! (VmRSS) sampled every 10 seconds, its growth after the first minute, and throughput.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use valet_bench::{ServerProcess, free_port, machine};

/// Keys the verify workers cycle through, so that the cache holds more than one entry.
const KEY_POOL: usize = 1_000;
/// Step between the keys one verify worker uses, so workers spread over the pool.
const KEY_STRIDE: usize = 7;
/// Interval between two memory samples.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Load before the memory baseline is taken, so that caches and pools are full.
const WARM_UP: Duration = Duration::from_secs(60);
/// The longest soak accepted, so that a run stays bounded.
const MAX_MINUTES: u64 = 30;

struct Options {
    binary: PathBuf,
    minutes: u64,
    concurrency: usize,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let binary = args
            .next()
            .context("usage: soak VALET_BINARY [--minutes N] [--concurrency N]")?;
        let mut options = Self {
            binary: PathBuf::from(binary),
            minutes: 5,
            concurrency: 8,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--minutes" => options.minutes = value.parse()?,
                "--concurrency" => options.concurrency = value.parse()?,
                _ => bail!("unknown option {flag}"),
            }
        }
        ensure!(
            (2..=MAX_MINUTES).contains(&options.minutes),
            "--minutes must be 2 to {MAX_MINUTES}, so that memory is measured after a minute of warm-up"
        );
        ensure!(options.concurrency >= 2, "--concurrency must be at least 2");
        Ok(options)
    }
}

/// Counts of checked responses.
#[derive(Default)]
struct Counts {
    verified: AtomicU64,
    tokens: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let work_dir = std::env::temp_dir().join(format!("valet_bench_soak_{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let result = run(&options, &work_dir).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

async fn run(options: &Options, work_dir: &std::path::Path) -> anyhow::Result<()> {
    let database = format!("sqlite://{}", work_dir.join("valet.db").display());
    let server = ServerProcess::start(&options.binary, &database, free_port()?, work_dir).await?;
    let admin = server
        .bootstrap_key()
        .context("the server printed no bootstrap key")?;
    let http = reqwest::Client::new();
    let base = server.address.clone();

    // Setup: a verifier key, a pool of keys to verify, and one client.
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let mut keys = Vec::with_capacity(KEY_POOL);
    for n in 0..KEY_POOL {
        let created: Value = post(
            "/v1/keys",
            json!({"name": format!("soak {n}"), "scopes": ["orders:read"]}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
        keys.push(created["key"].as_str().context("no key")?.to_owned());
    }
    let client: Value = post(
        "/v1/clients",
        json!({"name": "soak", "scopes": ["orders:read"], "audiences": ["orders"], "default_audience": "orders"}),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let client_id = client["client_id"]
        .as_str()
        .context("no client id")?
        .to_owned();
    let client_secret = client["client_secret"]
        .as_str()
        .context("no secret")?
        .to_owned();

    let keys = Arc::new(keys);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        let (keys, counts, stop) = (keys.clone(), counts.clone(), stop.clone());
        let (client_id, client_secret) = (client_id.clone(), client_secret.clone());
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let ok = if worker % 2 == 0 {
                    let key = &keys[n % keys.len()];
                    n += KEY_STRIDE;
                    verify(&http, &base, &admin, key).await
                } else {
                    token(&http, &base, &client_id, &client_secret).await
                };
                let counter = match (ok, worker % 2) {
                    (false, _) => &counts.errors,
                    (true, 0) => &counts.verified,
                    (true, _) => &counts.tokens,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let started = Instant::now();
    let total = Duration::from_secs(options.minutes * 60);
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while started.elapsed() < total {
        tokio::time::sleep(SAMPLE_INTERVAL).await;
        samples.push((started.elapsed(), server.resident_memory_kib()?));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    server.kill().await;

    report(options, &counts, &samples, elapsed);
    let errors = counts.errors.load(Ordering::Relaxed);
    ensure!(errors == 0, "{errors} requests failed during the soak");
    Ok(())
}

async fn verify(http: &reqwest::Client, base: &str, admin: &str, key: &str) -> bool {
    let request = http
        .post(format!("{base}/v1/keys/verify"))
        .bearer_auth(admin)
        .json(&json!({ "key": key }));
    succeeded(request, |body| body["code"] == "VALID").await
}

async fn token(http: &reqwest::Client, base: &str, client_id: &str, secret: &str) -> bool {
    let request = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials");
    succeeded(request, |body| {
        body["access_token"]
            .as_str()
            .is_some_and(|token| token.split('.').count() == 3)
    })
    .await
}

/// Sends `request` and returns whether it got 200 with a JSON body that passes `check`.
async fn succeeded(request: reqwest::RequestBuilder, check: impl Fn(&Value) -> bool) -> bool {
    let Ok(response) = request.send().await else {
        return false;
    };
    if response.status() != 200 {
        return false;
    }
    let body: Option<Value> = response.json().await.ok();
    body.is_some_and(|body| check(&body))
}

fn report(options: &Options, counts: &Counts, samples: &[(Duration, u64)], elapsed: Duration) {
    let verified = counts.verified.load(Ordering::Relaxed);
    let tokens = counts.tokens.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64();
    let baseline = samples
        .iter()
        .find(|(at, _)| *at >= WARM_UP)
        .map_or(0, |(_, kib)| *kib);
    let last = samples.last().map_or(0, |(_, kib)| *kib);
    let peak = samples.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    println!("machine: {}", machine());
    println!(
        "soak: {} minutes, {} workers (half verify, half token)",
        options.minutes, options.concurrency
    );
    println!(
        "| requests | errors | verify/s | token/s | RSS at 1 min | RSS at end | peak RSS | growth after 1 min |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {errors} | {:.0} | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} % |",
        verified + tokens + errors,
        verified as f64 / seconds,
        tokens as f64 / seconds,
        baseline as f64 / 1024.0,
        last as f64 / 1024.0,
        peak as f64 / 1024.0,
        if baseline == 0 {
            0.0
        } else {
            (last as f64 - baseline as f64) / baseline as f64 * 100.0
        }
    );
    println!("RSS samples (s, MiB):");
    for (at, kib) in samples {
        println!("  {:>5.0} {:>7.1}", at.as_secs_f64(), *kib as f64 / 1024.0);
    }
}
