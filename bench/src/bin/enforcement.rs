//! The cost of enforcement: forward auth and the verify endpoint, with a valid key and with
//! forged keys, each side by side with `GET /healthz` of the same server.
//!
//! Usage: `enforcement VALET_BINARY [--rounds N] [--seconds N] [--connections N]
//! [--server-cpus LIST] [--load-cpus LIST]`.
//!
//! One `valet serve` on a new SQLite store, with the default log filter, serves every
//! target. wrk loads one target at a time, the targets taking turns in short windows. Every
//! response is checked through the server's own counters: the status per route and the
//! verification codes must be exactly the expected ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use valet::key::{KeyEnv, KeyFormat, KeyId};
use valet_bench::rounds::{self, Expectation, LoadOptions, Target};
use valet_bench::wrk::{self, Request};
use valet_bench::{
    ServeOptions, ServerProcess, create_private_dir, free_port, loopback_client, machine_summary,
    remove_work_dir,
};

const FORWARD_AUTH: &str = "/v1/forward-auth";
const VERIFY: &str = "/v1/keys/verify";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (binary, options) = parse_args()?;
    let work_dir =
        std::env::temp_dir().join(format!("valet_bench_enforcement_{}", std::process::id()));
    create_private_dir(&work_dir)?;

    let result = run(&binary, &options, &work_dir).await;
    remove_work_dir(&work_dir, result.is_err());
    result
}

fn parse_args() -> anyhow::Result<(PathBuf, LoadOptions)> {
    let usage = format!("usage: enforcement VALET_BINARY {}", LoadOptions::USAGE);
    let mut args = std::env::args().skip(1);
    let binary = args.next().context(usage.clone())?.into();
    let mut options = LoadOptions::default();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("missing value after {flag}\n{usage}"))?;
        if !options.apply(&flag, &value)? {
            bail!("invalid argument {flag}\n{usage}");
        }
    }
    Ok((binary, options))
}

/// The keys of the benchmark. Only `valid` and `verifier` exist in the store.
struct Keys {
    valid: String,
    verifier: String,
    bad_checksum: String,
    unknown_id: String,
}

async fn run(binary: &Path, options: &LoadOptions, work_dir: &Path) -> anyhow::Result<()> {
    let database_url = format!("sqlite://{}", work_dir.join("valet.db").display());
    let serve = ServeOptions {
        cpus: options.server_cpus.clone(),
        log_filter: None,
    };
    let server =
        ServerProcess::start_with(binary, &database_url, free_port()?, work_dir, &serve).await?;
    let client = loopback_client()?;
    server
        .wait_for_trusted_cache(&client, Duration::from_secs(10))
        .await?;
    let keys = create_keys(&server, &client).await?;
    check_answers(&server, &client, &keys).await?;

    let mut targets = targets(&server.address, &keys, work_dir)?;
    rounds::measure(&mut targets, &options.wrk, &options.schedule).await?;
    let memory = server.resident_memory_kib()?;
    server.kill().await;

    print_report(options, &targets, memory);
    rounds::check_responses(&targets)
}

/// Creates the key under test and a verifier key through the admin API, and derives two
/// forged keys from the format: one with a wrong checksum, and one with a correct checksum
/// whose id was never issued.
async fn create_keys(server: &ServerProcess, client: &reqwest::Client) -> anyhow::Result<Keys> {
    let admin = server
        .bootstrap_key()
        .context("valet printed no bootstrap admin key")?;
    let create = |body: Value| {
        let request = client
            .post(format!("{}/v1/keys", server.address))
            .bearer_auth(&admin)
            .json(&body);
        async move {
            let response = request.send().await?;
            let status = response.status();
            let created: Value = response.json().await?;
            ensure!(
                status == reqwest::StatusCode::CREATED,
                "POST /v1/keys returned {status}"
            );
            created["key"]
                .as_str()
                .map(str::to_owned)
                .context("POST /v1/keys returned no key")
        }
    };
    let valid = create(json!({
        "name": "enforcement benchmark",
        "owner": "acme",
        "scopes": ["orders:read", "orders:write"],
    }))
    .await?;
    let verifier = create(json!({"name": "benchmark verifier", "scopes": ["keys:verify"]})).await?;

    // Any other base62 digit in the last place breaks the checksum and nothing else.
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.pop().context("empty key")?;
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });

    let unknown = KeyFormat::default().generate(KeyEnv::Live, &KeyId::generate()?)?;
    Ok(Keys {
        valid,
        verifier,
        bad_checksum,
        unknown_id: unknown.expose().to_owned(),
    })
}

/// Sends each request once and checks its response, so that a wrong setup fails before
/// any load.
async fn check_answers(
    server: &ServerProcess,
    client: &reqwest::Client,
    keys: &Keys,
) -> anyhow::Result<()> {
    let cases = [
        (&keys.valid, 200, "VALID"),
        (&keys.bad_checksum, 401, "MALFORMED"),
        (&keys.unknown_id, 401, "NOT_FOUND"),
    ];
    for (key, forward_status, verify_code) in cases {
        let forward = client
            .get(format!("{}{FORWARD_AUTH}", server.address))
            .bearer_auth(key)
            .send()
            .await?;
        ensure!(
            forward.status().as_u16() == forward_status,
            "forward auth returned {} for a key that should get {forward_status}",
            forward.status()
        );
        let answer: Value = client
            .post(format!("{}{VERIFY}", server.address))
            .bearer_auth(&keys.verifier)
            .json(&json!({"key": key}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ensure!(
            answer["code"] == verify_code,
            "verify returned code {} for a key that should get {verify_code}",
            answer["code"]
        );
    }
    Ok(())
}

/// Writes one wrk script per target and describes the targets, `GET /healthz` first.
fn targets(base_url: &str, keys: &Keys, work_dir: &Path) -> anyhow::Result<Vec<Target>> {
    let bearer = |key: &str| vec![("Authorization", format!("Bearer {key}"))];
    let verify_body = |key: &str| json!({ "key": key }).to_string();
    let forward = |code| Expectation {
        route: FORWARD_AUTH,
        status: if code == "VALID" { 200 } else { 401 },
        codes: vec![(code, 1)],
    };
    // The verifier key is verified on every call, before the key in the body.
    let verify = |code| Expectation {
        route: VERIFY,
        status: 200,
        codes: if code == "VALID" {
            vec![("VALID", 2)]
        } else {
            vec![("VALID", 1), (code, 1)]
        },
    };
    let healthz = Expectation {
        route: "/healthz",
        status: 200,
        codes: Vec::new(),
    };
    let post = |key: &str| Request::post_json(bearer(&keys.verifier), verify_body(key));

    let specs = [
        (
            "GET /healthz",
            "/healthz",
            Request::get(Vec::new()),
            healthz,
        ),
        (
            "forward auth, valid key",
            FORWARD_AUTH,
            Request::get(bearer(&keys.valid)),
            forward("VALID"),
        ),
        (
            "verify, valid key",
            VERIFY,
            post(&keys.valid),
            verify("VALID"),
        ),
        (
            "forward auth, bad checksum",
            FORWARD_AUTH,
            Request::get(bearer(&keys.bad_checksum)),
            forward("MALFORMED"),
        ),
        (
            "forward auth, unknown id",
            FORWARD_AUTH,
            Request::get(bearer(&keys.unknown_id)),
            forward("NOT_FOUND"),
        ),
        (
            "verify, bad checksum",
            VERIFY,
            post(&keys.bad_checksum),
            verify("MALFORMED"),
        ),
        (
            "verify, unknown id",
            VERIFY,
            post(&keys.unknown_id),
            verify("NOT_FOUND"),
        ),
    ];
    let mut targets = Vec::new();
    for (index, (name, path, request, expected)) in specs.into_iter().enumerate() {
        let script = work_dir.join(format!("target-{index}.lua"));
        wrk::write_script(&script, &request)?;
        targets.push(Target::new(name, base_url, path, script, expected));
    }
    Ok(targets)
}

/// Returns the minimum share of healthz throughput that the target `name` should reach.
fn goal(name: &str) -> Option<f64> {
    match name {
        "forward auth, valid key" => Some(0.8),
        "verify, valid key" => Some(0.6),
        "forward auth, bad checksum" | "forward auth, unknown id" => Some(0.9),
        _ => None,
    }
}

fn print_report(options: &LoadOptions, targets: &[Target], memory_kib: u64) {
    let healthz = &targets[0];
    println!(
        "| request | requests/s | ratio to healthz | lowest and highest round | p50 | p99 \
         | requests | store queries | goal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for target in targets {
        let goal = goal(&target.name).map_or("".to_owned(), |goal| format!("≥ {goal}"));
        let cells = target.table_cells(healthz);
        println!("| {} | {cells} | {goal} |", target.name);
    }
    println!();

    let verify_valid = targets
        .iter()
        .find(|target| target.name == "verify, valid key");
    for target in targets
        .iter()
        .filter(|target| target.name.starts_with("verify, ") && target.name != "verify, valid key")
    {
        if let Some(valid) = verify_valid {
            println!(
                "{}: {:.3} of verify with a valid key.",
                target.name,
                target.ratio_to(valid).overall
            );
        }
    }
    let background: f64 = targets.iter().map(Target::background_store_queries).sum();
    println!(
        "Store queries: the difference of valet_store_queries_total across the measured \
         windows, without those of the change feed's polling, the last_used_at flusher and \
         the signing key reload, \
         which sent {background} queries over all windows."
    );
    println!("Load: {}", options.describe());
    println!(
        "Server resident memory after the run: {:.1} MiB.",
        memory_kib as f64 / 1024.0
    );
    println!("Machine: {}.", machine_summary());
}
