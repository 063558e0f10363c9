//! Verification throughput against the size of the store: `POST /v1/keys/verify` on a
//! server whose SQLite store contains 1,000,000 keys, side by side with one whose store
//! contains 10,000, with the resident memory of both.
//!
//! Usage: `scale VALET_BINARY [--keys N] [--baseline-keys N] [--sample N] [--rounds N]
//! [--seconds N] [--connections N] [--server-cpus LIST] [--load-cpus LIST]`.
//!
//! Each store is filled in one transaction with keys made by Valet's own key format and
//! hash, so the servers read them as they read any key. Both servers verify the same number
//! of distinct keys (`--sample`, spread evenly over each store), one after the other in
//! turn, and with the same verifier key setup. The warm-up loads the sampled keys into each
//! server's cache, so the measured windows show what the store's size costs a cached
//! verification: the filter of issued ids and the cache's maps grow with it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use valet::key::{KeyEnv, KeyFormat, KeyHash, KeyId, RawKey, base62};
use valet::model::{KeyName, Metadata, NewKeyRecord, Scopes};
use valet::store::{KeyStore, SqliteStore};
use valet_bench::rounds::{self, Expectation, LoadOptions, Target};
use valet_bench::wrk::{self, Request};
use valet_bench::{
    ServeOptions, ServerProcess, create_private_dir, free_port, loopback_client, machine_summary,
    remove_work_dir,
};

const VERIFY: &str = "/v1/keys/verify";
/// How long a server with a large store may take to load its id filter before it counts
/// as failed.
const TRUSTED_TIMEOUT: Duration = Duration::from_secs(120);

/// The command line.
struct Options {
    binary: PathBuf,
    keys: usize,
    baseline_keys: usize,
    sample: usize,
    load: LoadOptions,
}

fn parse_args() -> anyhow::Result<Options> {
    let usage = format!(
        "usage: scale VALET_BINARY [--keys N] [--baseline-keys N] [--sample N] {}",
        LoadOptions::USAGE
    );
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        binary: args.next().context(usage.clone())?.into(),
        keys: 1_000_000,
        baseline_keys: 10_000,
        sample: 10_000,
        load: LoadOptions::default(),
    };
    options.load.schedule.warm_up = Duration::from_secs(3);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("missing value after {flag}\n{usage}"))?;
        let count = || -> anyhow::Result<usize> {
            let count: usize = value
                .parse()
                .with_context(|| format!("invalid {flag} {value}: expected a number"))?;
            ensure!(
                (1..=5_000_000).contains(&count),
                "invalid {flag} {value}: use 1 to 5000000"
            );
            Ok(count)
        };
        match flag.as_str() {
            "--keys" => options.keys = count()?,
            "--baseline-keys" => options.baseline_keys = count()?,
            "--sample" => options.sample = count()?,
            _ if options.load.apply(&flag, &value)? => {}
            _ => bail!("invalid argument {flag}\n{usage}"),
        }
    }
    ensure!(
        options.sample <= options.baseline_keys.min(options.keys),
        "invalid --sample {}: it must not exceed either store's number of keys",
        options.sample
    );
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let work_dir = std::env::temp_dir().join(format!("valet_bench_scale_{}", std::process::id()));
    create_private_dir(&work_dir)?;

    let result = run(&options, &work_dir).await;
    remove_work_dir(&work_dir, result.is_err());
    result
}

/// One server with its store, and how long the store took to fill.
struct Contender {
    keys: usize,
    server: ServerProcess,
    fill_time: Duration,
    start_time: Duration,
}

async fn run(options: &Options, work_dir: &Path) -> anyhow::Result<()> {
    let mut contenders = Vec::new();
    let mut targets = Vec::new();
    for keys in [options.keys, options.baseline_keys] {
        let (contender, target) = prepare(options, keys, work_dir).await?;
        contenders.push(contender);
        targets.push(target);
    }

    rounds::measure(&mut targets, &options.load.wrk, &options.load.schedule).await?;
    let mut memory = Vec::new();
    for contender in &contenders {
        memory.push(contender.server.resident_memory_kib()?);
    }
    print_report(options, &contenders, &targets, &memory);
    for contender in contenders {
        contender.server.kill().await;
    }

    rounds::check_responses(&targets)
}

/// Fills a store with `keys` keys, starts a server on it and writes its wrk script.
async fn prepare(
    options: &Options,
    keys: usize,
    work_dir: &Path,
) -> anyhow::Result<(Contender, Target)> {
    let dir = work_dir.join(format!("store-{keys}"));
    std::fs::create_dir(&dir)?;
    let database_url = format!("sqlite://{}", dir.join("valet.db").display());

    eprintln!("filling a store with {keys} keys");
    let started = Instant::now();
    let filled = fill_store(&database_url, keys, options.sample).await?;
    let fill_time = started.elapsed();

    let started = Instant::now();
    let serve = ServeOptions {
        cpus: options.load.server_cpus.clone(),
        log_filter: None,
    };
    let server =
        ServerProcess::start_with(&options.binary, &database_url, free_port()?, &dir, &serve)
            .await?;
    server
        .wait_for_trusted_cache(&loopback_client()?, TRUSTED_TIMEOUT)
        .await?;
    let start_time = started.elapsed();

    let mut bodies = String::new();
    for key in &filled.sample {
        writeln!(bodies, "{}", serde_json::json!({ "key": key.expose() }))?;
    }
    let bodies_path = dir.join("bodies.jsonl");
    std::fs::write(&bodies_path, bodies)?;
    let script = dir.join("verify.lua");
    let authorization = format!("Bearer {}", filled.verifier.expose());
    let request = Request::post_json(vec![("Authorization", authorization)], String::new());
    wrk::write_rotating_script(&script, &request, &bodies_path)?;

    let expected = Expectation {
        route: VERIFY,
        status: 200,
        codes: vec![("VALID", 2)],
    };
    let name = format!("verify, {keys} keys in the store");
    let target = Target::new(name, &server.address, VERIFY, script, expected);
    let contender = Contender {
        keys,
        server,
        fill_time,
        start_time,
    };
    Ok((contender, target))
}

/// The raw keys that the benchmark keeps from a store it filled.
struct FilledStore {
    verifier: RawKey,
    /// Keys spread evenly over the store, for the load to verify in turn.
    sample: Vec<RawKey>,
}

/// Creates the store at `url` and inserts a verifier key and `keys` keys with scope
/// `orders:read` in one transaction, keeping `sample` of the raw keys.
async fn fill_store(url: &str, keys: usize, sample: usize) -> anyhow::Result<FilledStore> {
    let store = SqliteStore::connect(url, true).await?;
    let format = KeyFormat::default();
    let now = valet::model::now();
    let name = KeyName::parse("scale benchmark")?;
    let scopes = Scopes::parse("scopes", &["orders:read"])?;
    let record = |id: KeyId, raw: &RawKey, scopes: &Scopes| NewKeyRecord {
        hash: KeyHash::of(raw.expose()),
        id,
        name: name.clone(),
        owner: None,
        scopes: scopes.clone(),
        env: KeyEnv::Live,
        metadata: Metadata::default(),
        created_at: now,
        expires_at: None,
        client_id: None,
    };

    let verifier_id = KeyId::generate()?;
    let verifier = format.generate(KeyEnv::Live, &verifier_id)?;
    let verifier_scopes = Scopes::parse("scopes", &["keys:verify"])?;
    let first = record(verifier_id.clone(), &verifier, &verifier_scopes);

    // Ids are random, so a million of them contain a repeat in about one run of 400.
    // A repeat is drawn again, because one duplicate would fail the whole transaction.
    let mut issued = HashSet::with_capacity(keys + 1);
    issued.insert(id_value(&verifier_id));
    let every = keys / sample;
    let mut kept = Vec::with_capacity(sample);
    let mut generated = 0;
    let mut failure = None;
    let rest = std::iter::from_fn(|| {
        if generated == keys {
            return None;
        }
        let drawn = KeyId::generate().and_then(|id| Ok((format.generate(KeyEnv::Live, &id)?, id)));
        let (raw, id) = match drawn {
            Ok(drawn) => drawn,
            Err(err) => {
                failure = Some(err);
                return None;
            }
        };
        if !issued.insert(id_value(&id)) {
            return Some(None);
        }
        let new = record(id, &raw, &scopes);
        if generated % every == 0 && kept.len() < sample {
            kept.push(raw);
        }
        generated += 1;
        Some(Some(new))
    })
    .flatten();
    let inserted = store
        .insert_keys(std::iter::once(first).chain(rest))
        .await?;
    if let Some(err) = failure {
        bail!("could not draw random bytes for a key: {err}");
    }
    ensure!(
        inserted == keys as u64 + 1,
        "inserted {inserted} keys, expected {}",
        keys + 1
    );
    // Closing the pool checkpoints the WAL into the database file before the server opens it.
    store.close().await;
    Ok(FilledStore {
        verifier,
        sample: kept,
    })
}

fn id_value(id: &KeyId) -> u64 {
    base62::decode(id.as_str()).expect("a key id is 8 base62 digits")
}

fn print_report(
    options: &Options,
    contenders: &[Contender],
    targets: &[Target],
    memory_kib: &[u64],
) {
    let baseline = &targets[targets.len() - 1];
    println!(
        "| keys in the store | requests/s | ratio to {} keys | lowest and highest round | p50 \
         | p99 | requests | store queries | resident memory | fill time | start until trusted |",
        options.baseline_keys
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((contender, target), memory) in contenders.iter().zip(targets).zip(memory_kib) {
        println!(
            "| {} | {} | {:.1} MiB | {:.1} s | {:.1} s |",
            contender.keys,
            target.table_cells(baseline),
            *memory as f64 / 1024.0,
            contender.fill_time.as_secs_f64(),
            contender.start_time.as_secs_f64(),
        );
    }
    println!();
    println!(
        "Request: `POST /v1/keys/verify` with a verifier key, the body naming one of {} keys \
         in turn, spread evenly over the store; every answer must be VALID. Resident memory: \
         VmRSS from /proc after the last round. Store queries: as for the enforcement \
         benchmark, without the background tasks' queries.",
        options.sample
    );
    println!("Load: {}", options.load.describe());
    println!("Machine: {}.", machine_summary());
}
