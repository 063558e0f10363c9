//! Token issuance throughput: Valet's `POST /oauth/token` against node-oidc-provider's token
//! endpoint, both issuing ES256-signed JWT access tokens for the OAuth 2.0 client credentials
//! grant.
//!
//! Usage: `tokens VALET_BINARY NODE OIDC_SERVER_SCRIPT [--seconds N] [--concurrency N]
//! [--server-cpus LIST] [--only valet|oidc-provider]`.
//!
//! The servers run one after the other on 127.0.0.1, each alone. Each gets the same
//! closed-loop load: `--concurrency` keep-alive connections, each with one request in flight,
//! first for a warm-up and then for a measured window of `--seconds`. Every response is
//! checked: only a 200 whose JSON body holds a Bearer JWT counts as issued. With
//! `--server-cpus`, each server runs under `taskset -c LIST`; pin this program elsewhere
//! (bench/run uses `taskset -c 0`) so that the load generator does not compete with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use valet_bench::{free_port, machine, quantile};

/// Load before each measured window, so that caches, connection pools and Node's JIT are warm.
const WARM_UP: Duration = Duration::from_secs(3);
/// The longest measured window; with the warm-up, no server gets more than 20 s of load.
const MAX_SECONDS: u64 = 17;
/// Requests per phase at most, whatever the duration, so a run stays bounded in count too.
const MAX_REQUESTS: u64 = 2_000_000;
/// The same form body for both servers (RFC 6749, section 4.4.2).
const FORM_BODY: &str = "grant_type=client_credentials&scope=orders%3Aread";
const CLIENT_SCOPES: [&str; 2] = ["orders:read", "orders:write"];
/// Must match `CLIENT_ID` in bench/oidc-provider/server.js.
const OIDC_CLIENT_ID: &str = "bench-client";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let work_dir = std::env::temp_dir().join(format!("valet_bench_tokens_{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;

    let result = run(&options, &work_dir).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        eprintln!("server logs kept in {}", work_dir.display());
    }
    result
}

async fn run(options: &Options, work_dir: &Path) -> anyhow::Result<()> {
    let mut results = Vec::new();
    if options.only.as_deref() != Some("oidc-provider") {
        let (server, target) = start_valet(options, work_dir).await?;
        results.push(measure(options, server, target).await?);
    }
    if options.only.as_deref() != Some("valet") {
        let (server, target) = start_oidc_provider(options, work_dir).await?;
        results.push(measure(options, server, target).await?);
    }

    print_report(options, &results);
    let failed: u64 = results.iter().map(|result| result.load.failures()).sum();
    if failed > 0 {
        bail!("{failed} responses were not a 200 with a token; the figures above are not valid");
    }
    Ok(())
}

/// The command line.
struct Options {
    valet: PathBuf,
    node: PathBuf,
    oidc_script: PathBuf,
    seconds: u64,
    concurrency: usize,
    server_cpus: Option<String>,
    only: Option<String>,
}

impl Options {
    /// Parses positional paths and `--name value` flags.
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let usage = "usage: tokens VALET_BINARY NODE OIDC_SERVER_SCRIPT [--seconds N] \
                     [--concurrency N] [--server-cpus LIST] [--only valet|oidc-provider]";
        let mut options = Self {
            valet: args.next().context(usage)?.into(),
            node: args.next().context(usage)?.into(),
            oidc_script: args.next().context(usage)?.into(),
            seconds: 10,
            concurrency: 32,
            server_cpus: None,
            only: None,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("missing value after {flag}\n{usage}"))?;
            match flag.as_str() {
                "--seconds" => options.seconds = value.parse().context("invalid --seconds")?,
                "--concurrency" => {
                    options.concurrency = value.parse().context("invalid --concurrency")?;
                }
                "--server-cpus" => options.server_cpus = Some(value),
                "--only" if value == "valet" || value == "oidc-provider" => {
                    options.only = Some(value);
                }
                _ => bail!("invalid argument {flag} {value}\n{usage}"),
            }
        }
        ensure!(
            (1..=MAX_SECONDS).contains(&options.seconds),
            "invalid --seconds {}: use 1 to {MAX_SECONDS}, so that no server gets more than \
             20 s of load with the {WARM_UP:?} warm-up",
            options.seconds
        );
        ensure!(
            (1..=1024).contains(&options.concurrency),
            "invalid --concurrency {}: use 1 to 1024",
            options.concurrency
        );
        Ok(options)
    }
}

/// A token endpoint under test, with the one token request that every worker sends to it.
struct Target {
    name: String,
    /// Built once and cloned for each request, so the load generator spends no time on
    /// parsing the URL or encoding credentials.
    request: reqwest::Request,
}

impl Target {
    /// Builds the token request with `Basic` credentials as RFC 6749, section 2.3.1 requires:
    /// the id and the secret are each form-urlencoded, then joined with a colon and
    /// Base64-encoded.
    fn new(
        name: String,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> anyhow::Result<Self> {
        let mut request = loopback_client()?
            .post(token_url)
            .basic_auth(
                form_urlencode(client_id),
                Some(form_urlencode(client_secret)),
            )
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(FORM_BODY)
            .build()?;
        if let Some(authorization) = request.headers_mut().get_mut(AUTHORIZATION) {
            authorization.set_sensitive(true);
        }
        Ok(Self { name, request })
    }

    /// Sends one copy of the token request on `client`.
    async fn send(&self, client: &reqwest::Client) -> reqwest::Result<reqwest::Response> {
        let request = self
            .request
            .try_clone()
            .expect("a request with a fixed text body can be cloned");
        client.execute(request).await
    }
}

/// A server process on a loopback port, killed when dropped.
struct Server {
    child: Child,
    pid: u32,
    base_url: String,
    stdout: PathBuf,
}

impl Server {
    /// Starts `command` with its output in `work_dir` and waits until `ready_path` on
    /// 127.0.0.1:`port` returns 200.
    async fn start(
        name: &str,
        mut command: Command,
        port: u16,
        ready_path: &str,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        let stdout = work_dir.join(format!("{name}.stdout"));
        let stderr = work_dir.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        let pid = child.id().context("the server exited at once")?;
        let server = Self {
            child,
            pid,
            base_url: format!("http://127.0.0.1:{port}"),
            stdout,
        };

        let client = loopback_client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = client
                .get(format!("{}{ready_path}", server.base_url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not return 200 for {ready_path} on {} within {READY_TIMEOUT:?}; see {}",
                    server.base_url,
                    stderr.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the CPU time, user and system, that the process has used so far.
    fn cpu_time(&self) -> Option<Duration> {
        process_cpu_time(&format!("/proc/{}/stat", self.pid))
    }

    /// Returns the CPUs that the process may run on, as `/proc` lists them.
    fn allowed_cpus(&self) -> String {
        allowed_cpus(&format!("/proc/{}/status", self.pid))
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Builds the command that runs `program`, under `taskset -c CPUS` when `cpus` is set.
fn server_command(program: &Path, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else {
        return Command::new(program);
    };
    let mut command = Command::new("taskset");
    command.args(["-c", cpus]).arg(program);
    command
}

/// Starts `valet serve` on a new SQLite store and registers one client through the admin API.
async fn start_valet(options: &Options, work_dir: &Path) -> anyhow::Result<(Server, Target)> {
    let port = free_port()?;
    let database_url = format!("sqlite://{}", work_dir.join("valet.db").display());
    let mut command = server_command(&options.valet, options.server_cpus.as_deref());
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("VALET_DATABASE_URL", database_url)
        .env("VALET_LOG", "warn");
    let server = Server::start("valet", command, port, "/healthz", work_dir).await?;

    let stdout = std::fs::read_to_string(&server.stdout)?;
    let admin_key = stdout
        .split_whitespace()
        .find(|word| word.starts_with("vk_live_"))
        .context("valet printed no bootstrap admin key")?;
    let response = loopback_client()?
        .post(format!("{}/v1/clients", server.base_url))
        .bearer_auth(admin_key)
        .json(&json!({"name": "token benchmark", "scopes": CLIENT_SCOPES}))
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(
        status == reqwest::StatusCode::CREATED,
        "POST /v1/clients returned {status}: {body}"
    );
    let created: Value =
        serde_json::from_str(&body).context("POST /v1/clients returned no JSON")?;
    let client_id = created["client_id"]
        .as_str()
        .context("POST /v1/clients returned no client_id")?;
    let client_secret = created["client_secret"]
        .as_str()
        .context("POST /v1/clients returned no client_secret")?;

    let version = command_output(&options.valet, "--version").await;
    let target = Target::new(
        version.unwrap_or_else(|| "valet".to_owned()),
        &format!("{}/oauth/token", server.base_url),
        client_id,
        client_secret,
    )?;
    Ok((server, target))
}

/// Starts bench/oidc-provider/server.js with a fresh client secret.
async fn start_oidc_provider(
    options: &Options,
    work_dir: &Path,
) -> anyhow::Result<(Server, Target)> {
    let port = free_port()?;
    let client_secret = valet::key::base62::random(43)?;
    let mut command = server_command(&options.node, options.server_cpus.as_deref());
    command
        .arg(&options.oidc_script)
        .arg(port.to_string())
        .env("OIDC_BENCH_CLIENT_SECRET", &client_secret)
        .env("NODE_ENV", "production");
    let discovery = "/.well-known/openid-configuration";
    let server = Server::start("oidc-provider", command, port, discovery, work_dir).await?;

    let package = options
        .oidc_script
        .parent()
        .context("the oidc-provider script has no folder")?
        .join("node_modules/oidc-provider/package.json");
    let version = std::fs::read_to_string(&package)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|package| package["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let node_version = command_output(&options.node, "--version")
        .await
        .unwrap_or_else(|| "unknown".to_owned());
    let target = Target::new(
        format!("oidc-provider {version} on Node.js {node_version}"),
        &format!("{}/token", server.base_url),
        OIDC_CLIENT_ID,
        &client_secret,
    )?;
    Ok((server, target))
}

/// Figures from one server's measured window.
struct Measurement {
    name: String,
    load: Load,
    /// CPU time the server used per second of the window: 1.0 is one core fully busy.
    server_cores: Option<f64>,
    /// The same for this program, the load generator.
    generator_cores: Option<f64>,
    server_cpus: String,
    token_summary: String,
}

/// Checks one token, warms the server up, measures it and stops it.
async fn measure(options: &Options, server: Server, target: Target) -> anyhow::Result<Measurement> {
    let target = Arc::new(target);
    let token_summary = check_one_token(&target).await?;

    // One client per connection, each keeping a single keep-alive connection, so every
    // worker reuses its own connection for the whole run.
    let clients = (0..options.concurrency)
        .map(|_| loopback_client())
        .collect::<anyhow::Result<Vec<_>>>()?;

    eprintln!("{}: warming up for {WARM_UP:?}", target.name);
    let warm_up = drive(&clients, &target, WARM_UP).await;
    ensure!(
        warm_up.issued > 0,
        "{} issued no token during the warm-up ({} failures)",
        target.name,
        warm_up.failures()
    );

    eprintln!("{}: measuring for {} s", target.name, options.seconds);
    let server_before = server.cpu_time();
    let generator_before = process_cpu_time("/proc/self/stat");
    let load = drive(&clients, &target, Duration::from_secs(options.seconds)).await;
    let server_after = server.cpu_time();
    let generator_after = process_cpu_time("/proc/self/stat");
    let server_cpus = server.allowed_cpus();
    server.kill().await;

    let cores = |before: Option<Duration>, after: Option<Duration>| {
        Some((after? - before?).as_secs_f64() / load.elapsed.as_secs_f64())
    };
    Ok(Measurement {
        name: target.name.clone(),
        server_cores: cores(server_before, server_after),
        generator_cores: cores(generator_before, generator_after),
        load,
        server_cpus,
        token_summary,
    })
}

/// Requests one token and checks that it is an ES256-signed JWT carrying the requested
/// scope; returns its header and scope for the report.
async fn check_one_token(target: &Target) -> anyhow::Result<String> {
    let response = target.send(&loopback_client()?).await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(
        status == reqwest::StatusCode::OK,
        "{} returned {status} for a token request: {body}",
        target.name
    );
    let body: Value = serde_json::from_str(&body)?;
    let token = body["access_token"]
        .as_str()
        .with_context(|| format!("{} returned no access_token: {body}", target.name))?;
    let segments: Vec<&str> = token.split('.').collect();
    ensure!(
        segments.len() == 3,
        "{}: the access token is not a compact JWS",
        target.name
    );
    let decode = |segment: &str| -> anyhow::Result<Value> {
        let bytes = decode_base64url(segment).context("invalid base64url in the token")?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let header = decode(segments[0])?;
    let claims = decode(segments[1])?;
    ensure!(
        header["alg"] == "ES256",
        "{}: the token is signed with {}, not ES256",
        target.name,
        header["alg"]
    );
    ensure!(
        claims["scope"] == "orders:read",
        "{}: the token's scope is {}, not orders:read",
        target.name,
        claims["scope"]
    );
    Ok(format!(
        "header {header}, scope {}, expires_in {}",
        claims["scope"], body["expires_in"]
    ))
}

/// Outcome counts and latencies of one phase of load.
#[derive(Default)]
struct Load {
    /// Responses that were 200 with a Bearer JWT in the body.
    issued: u64,
    /// Responses with another status, by status code.
    other_status: BTreeMap<u16, u64>,
    /// 200 responses whose body held no Bearer JWT.
    invalid_body: u64,
    /// Requests that failed before a complete response arrived.
    transport_errors: u64,
    /// Time from sending each issued token's request to the end of its response body.
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Load {
    fn failures(&self) -> u64 {
        self.other_status.values().sum::<u64>() + self.invalid_body + self.transport_errors
    }

    fn merge(&mut self, other: Load) {
        self.issued += other.issued;
        for (status, count) in other.other_status {
            *self.other_status.entry(status).or_default() += count;
        }
        self.invalid_body += other.invalid_body;
        self.transport_errors += other.transport_errors;
        self.latencies.extend(other.latencies);
    }
}

/// Runs one worker per client for `duration`, or until `MAX_REQUESTS` have been sent.
async fn drive(clients: &[reqwest::Client], target: &Arc<Target>, duration: Duration) -> Load {
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let client = client.clone();
            let target = Arc::clone(target);
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut load = Load::default();
                loop {
                    let out_of_time = Instant::now() >= deadline;
                    if out_of_time || sent.fetch_add(1, Ordering::Relaxed) >= MAX_REQUESTS {
                        break;
                    }
                    let request_started = Instant::now();
                    let outcome = match target.send(&client).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            response.bytes().await.map(|body| (status, body))
                        }
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok((200, body)) if is_token_response(&body) => {
                            load.issued += 1;
                            load.latencies.push(request_started.elapsed());
                        }
                        Ok((200, _)) => load.invalid_body += 1,
                        Ok((status, _)) => *load.other_status.entry(status).or_default() += 1,
                        Err(_) => load.transport_errors += 1,
                    }
                }
                load
            })
        })
        .collect();

    let mut total = Load::default();
    for worker in workers {
        match worker.await {
            Ok(load) => total.merge(load),
            Err(_) => total.transport_errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    total
}

/// Returns whether `body` is a token response with a Bearer token in compact JWS form.
fn is_token_response(body: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let is_bearer = body["token_type"]
        .as_str()
        .is_some_and(|kind| kind.eq_ignore_ascii_case("bearer"));
    let is_jws = body["access_token"].as_str().is_some_and(|token| {
        let segments: Vec<&str> = token.split('.').collect();
        segments.len() == 3 && segments.iter().all(|segment| !segment.is_empty())
    });
    is_bearer && is_jws
}

/// Builds an HTTP/1.1 client that keeps one idle connection and never uses a proxy, so
/// requests go straight to the loopback server whatever the environment's proxy settings.
fn loopback_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn print_report(options: &Options, results: &[Measurement]) {
    let ms = |duration: Duration| duration.as_secs_f64() * 1_000.0;
    let cores = |value: Option<f64>| value.map_or("unknown".to_owned(), |v| format!("{v:.2}"));
    println!(
        "| server | tokens/s | p50 | p99 | tokens issued | other responses | server CPU | \
         load generator CPU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for result in results {
        let load = &result.load;
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} cores | {} cores |",
            result.name,
            throughput(load),
            ms(quantile(&load.latencies, 0.5)),
            ms(quantile(&load.latencies, 0.99)),
            load.issued,
            load.failures(),
            cores(result.server_cores),
            cores(result.generator_cores),
        );
    }
    println!();
    if let [valet, oidc_provider] = results {
        let ratio = throughput(&valet.load) / throughput(&oidc_provider.load);
        println!("Ratio of tokens/s, Valet to oidc-provider: {ratio:.2} (target: at least 5).");
        println!();
    }

    println!(
        "Load: {} keep-alive connections, one request in flight on each, {WARM_UP:?} of \
         warm-up and then {} s measured per server, at most {MAX_REQUESTS} requests per phase; \
         the servers run one after the other.",
        options.concurrency, options.seconds
    );
    println!(
        "Request: `POST /oauth/token` (`/token` for oidc-provider), Basic client \
              credentials, body `{FORM_BODY}`."
    );
    for result in results {
        println!(
            "{}: runs on CPUs {}; token {}.",
            result.name, result.server_cpus, result.token_summary
        );
    }
    println!(
        "Load generator: runs on CPUs {}.",
        allowed_cpus("/proc/self/status")
    );
    for result in results {
        for (status, count) in &result.load.other_status {
            println!("{}: {count} responses with status {status}.", result.name);
        }
        if result.load.invalid_body > 0 {
            println!(
                "{}: {} 200 responses without a token.",
                result.name, result.load.invalid_body
            );
        }
        if result.load.transport_errors > 0 {
            println!(
                "{}: {} failed requests.",
                result.name, result.load.transport_errors
            );
        }
    }
    println!("Machine: {}.", machine_summary());
}

fn throughput(load: &Load) -> f64 {
    load.issued as f64 / load.elapsed.as_secs_f64()
}

/// Reads user plus system CPU time from a `/proc/PID/stat` file (fields 14 and 15, in clock
/// ticks of 1/100 s, the `USER_HZ` that Linux reports on every architecture it supports).
fn process_cpu_time(stat_path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // The command name in field 2 may contain spaces, so count fields after its `)`.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// Returns `Cpus_allowed_list` from a `/proc/PID/status` file.
fn allowed_cpus(status_path: &str) -> String {
    std::fs::read_to_string(status_path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .map(|cpus| cpus.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Describes the machine: logical cores, memory and CPU model.
///
/// `valet_bench::machine` counts the cores this process may use, which under `taskset -c 0`
/// is one, so the cores here are counted in `/proc/cpuinfo` and only the memory is taken
/// from `machine`.
fn machine_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown CPU model", |(_, model)| model.trim());
    let memory = machine();
    let memory = memory
        .split_once(", ")
        .map_or(memory.as_str(), |(_, memory)| memory);
    format!("{cores} cores, {memory}, {model}")
}

/// Runs `program flag` and returns its first line of output.
async fn command_output(program: &Path, flag: &str) -> Option<String> {
    let output = Command::new(program).arg(flag).output().await.ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.lines().next().map(|line| line.trim().to_owned())
}

/// Encodes `text` as `application/x-www-form-urlencoded` does: letters, digits and `*-._`
/// stay, a space becomes `+`, and every other byte becomes `%XX`.
fn form_urlencode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// Decodes unpadded base64url (RFC 4648, section 5), the encoding of JWT segments.
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            decoded.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_urlencode_keeps_unreserved_bytes() {
        assert_eq!(form_urlencode("Az09*-._"), "Az09*-._");
        assert_eq!(form_urlencode("a b"), "a+b");
        assert_eq!(form_urlencode("a:b/c%"), "a%3Ab%2Fc%25");
        assert_eq!(form_urlencode("é"), "%C3%A9");
    }

    #[test]
    fn decode_base64url_without_padding() {
        assert_eq!(
            decode_base64url("eyJhIjoxfQ").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(decode_base64url("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64url("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64url("a+b"), None);
    }

    #[test]
    fn token_response_needs_bearer_jws() {
        assert!(is_token_response(
            br#"{"access_token":"a.b.c","token_type":"Bearer"}"#
        ));
        assert!(is_token_response(
            br#"{"access_token":"a.b.c","token_type":"bearer"}"#
        ));
        assert!(!is_token_response(
            br#"{"access_token":"a.b","token_type":"Bearer"}"#
        ));
        assert!(!is_token_response(
            br#"{"access_token":"a..c","token_type":"Bearer"}"#
        ));
        assert!(!is_token_response(
            br#"{"access_token":"a.b.c","token_type":"DPoP"}"#
        ));
        assert!(!is_token_response(br#"{"error":"invalid_client"}"#));
        assert!(!is_token_response(b"not json"));
    }

    #[test]
    fn process_cpu_time_reads_own_stat() {
        assert!(process_cpu_time("/proc/self/stat").is_some());
        assert_eq!(process_cpu_time("/proc/self/no-such-file"), None);
    }
}
