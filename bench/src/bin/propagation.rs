//! Revocation propagation between two nodes on one PostgreSQL: revoke a cached key through
//! node A and time until node B rejects it.
//!
//! Usage: `propagation VALET_BINARY POSTGRES_URL [REVOCATIONS]`. The database must exist;
//! the benchmark works in a schema of its own and drops it at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::Connection;
use valet_bench::{ServerProcess, free_port, machine, quantile};

/// Give up on one revocation after this long; it then counts as a failure.
const GIVE_UP: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(args.next().context("missing VALET_BINARY")?);
    let postgres_url = args.next().context("missing POSTGRES_URL")?;
    let revocations: usize = args.next().map_or(Ok(500), |n| n.parse())?;

    let schema = format!("valet_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&postgres_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await?;
    let separator = if postgres_url.contains('?') { '&' } else { '?' };
    let url = format!("{postgres_url}{separator}options[search_path]={schema}");

    let work_dir = std::env::temp_dir().join(&schema);
    std::fs::create_dir_all(&work_dir)?;
    let result = run(&binary, &url, &work_dir, revocations).await;

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await?;
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

async fn run(
    binary: &std::path::Path,
    url: &str,
    work_dir: &std::path::Path,
    revocations: usize,
) -> anyhow::Result<()> {
    let node_a = ServerProcess::start(binary, url, free_port()?, work_dir).await?;
    let node_b = ServerProcess::start(binary, url, free_port()?, work_dir).await?;
    let admin_key = node_a
        .bootstrap_key()
        .context("node A printed no bootstrap key")?;
    let client = reqwest::Client::new();
    let post = |base: &str, path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&admin_key)
            .json(&body)
            .send()
    };

    let mut samples = Vec::with_capacity(revocations);
    let mut failures = 0;
    for _ in 0..revocations {
        let created: Value = post(
            &node_a.address,
            "/v1/keys",
            json!({"name": "bench", "scopes": []}),
        )
        .await?
        .json()
        .await?;
        let raw = created["key"].as_str().context("create returned no key")?;
        let id = created["id"].as_str().context("create returned no id")?;

        // Wait until B accepts the key and has it cached.
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let answer: Value = post(&node_b.address, "/v1/keys/verify", json!({"key": raw}))
                .await?
                .json()
                .await?;
            if answer["code"] == "VALID" {
                break;
            }
            if Instant::now() > deadline {
                bail!("node B never accepted a new key");
            }
        }

        let started = Instant::now();
        post(&node_a.address, &format!("/v1/keys/{id}/revoke"), json!({}))
            .await?
            .error_for_status()?;
        loop {
            let answer: Value = post(&node_b.address, "/v1/keys/verify", json!({"key": raw}))
                .await?
                .json()
                .await?;
            if answer["code"] == "REVOKED" {
                samples.push(started.elapsed());
                break;
            }
            if started.elapsed() > GIVE_UP {
                failures += 1;
                break;
            }
        }
    }
    node_a.kill().await;
    node_b.kill().await;

    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!("| revocations | median | p99 | max | not seen within {GIVE_UP:?} |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {failures} |",
        samples.len(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.99)),
        ms(quantile(&samples, 1.0)),
    );
    println!("machine: {}", machine());
    Ok(())
}
