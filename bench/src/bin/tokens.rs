//! Token issuance throughput: Valet's `POST /oauth/token` against node-oidc-provider's token
//! endpoint, both issuing ES256-signed JWT access tokens for the OAuth 2.0 client credentials
//! grant.
//!
//! Usage: `tokens VALET_BINARY NODE OIDC_SERVER_SCRIPT [--seconds N] [--concurrency N]
//! [--server-cpus LIST] [--only valet|oidc-provider]`.
//!
//! Both servers listen on 127.0.0.1, but only one is under load at a time. Each gets the same
//! closed-loop load: `--concurrency` keep-alive connections, each with one request in flight.
//! Each server is warmed up, then the `--seconds` of measurement are split into windows of
//! at most 2 s that the servers take in turn. Every response is checked, and only a 200 whose
//! JSON body contains a Bearer JWT counts. With `--server-cpus`, each server runs under
//! `taskset -c LIST`. Pin this program to other CPUs (bench/run uses `taskset -c 0`), so that
//! the load generator does not compete with the servers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use valet_bench::{free_port, loopback_client, machine_summary, pinned_command, quantile};

/// Load on each server before any measurement, so that caches, connection pools and Node's
/// JIT compiler are warm.
const WARM_UP: Duration = Duration::from_secs(3);
/// The longest measured time per server. With the warm-up, no server gets more than 20 s of
/// load.
const MAX_SECONDS: u64 = 17;
/// The longest measured window. The measured time is split into windows of at most this
/// length, taken by the servers in turn.
const WINDOW_SECONDS: u64 = 2;
/// Requests per window or warm-up at most, whatever its length, so that a run stays bounded
/// in count too.
const MAX_REQUESTS: u64 = 400_000;
/// The same form body for both servers (RFC 6749, section 4.4.2).
const FORM_BODY: &str = "grant_type=client_credentials&scope=orders%3Aread";
const CLIENT_SCOPES: [&str; 2] = ["orders:read", "orders:write"];
/// Must match `CLIENT_ID` in bench/oidc-provider/server.js.
const OIDC_CLIENT_ID: &str = "bench-client";
/// The audience of every token. It must match `RESOURCE` in bench/oidc-provider/server.js.
/// Each server's client has it as its default, so the token request need not name it.
const AUDIENCE: &str = "urn:valet:bench:orders";
/// The lifetime of every token. It must match `TOKEN_TTL_SECONDS` in
/// bench/oidc-provider/server.js.
const TOKEN_LIFETIME_SECONDS: u64 = 3600;
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
    let mut servers = Vec::new();
    if options.only.as_deref() != Some("oidc-provider") {
        servers.push(start_valet(options, work_dir).await?);
    }
    if options.only.as_deref() != Some("valet") {
        servers.push(start_oidc_provider(options, work_dir).await?);
    }
    let mut contenders = Vec::new();
    for (server, target) in servers {
        contenders.push(Contender::prepare(options, server, target).await?);
    }

    // Short windows taken in turn spread the machine's other load over both servers alike.
    // They also keep each server's idle gap below its keep-alive timeout (5 s in Node.js).
    let rounds = options.seconds.div_ceil(WINDOW_SECONDS);
    let window = Duration::from_secs(options.seconds) / rounds as u32;
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}: {window:?} per server");
        for contender in &mut contenders {
            contender.measure_window(window).await?;
        }
    }
    for contender in &mut contenders {
        contender.finish().await;
    }

    print_report(options, &contenders);
    let failed: u64 = contenders
        .iter()
        .map(|contender| contender.load.failures())
        .sum();
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

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `valet serve` on a new SQLite store and registers one client through the admin API.
async fn start_valet(options: &Options, work_dir: &Path) -> anyhow::Result<(Server, Target)> {
    let port = free_port()?;
    let database_url = format!("sqlite://{}", work_dir.join("valet.db").display());
    let mut command = pinned_command(&options.valet, options.server_cpus.as_deref());
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
        .json(&json!({
            "name": "token benchmark",
            "scopes": CLIENT_SCOPES,
            "audiences": [AUDIENCE],
            "default_audience": AUDIENCE,
            "token_lifetime_seconds": TOKEN_LIFETIME_SECONDS,
        }))
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
    let mut command = pinned_command(&options.node, options.server_cpus.as_deref());
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

/// One server under test: its process, its request, its load generator connections and
/// the sum of its measured windows.
struct Contender {
    server: Server,
    target: Arc<Target>,
    /// One client per connection, each keeping a single keep-alive connection, so every
    /// worker reuses its own connection for the whole run.
    clients: Vec<reqwest::Client>,
    token_summary: String,
    /// The CPUs that the server may run on.
    server_cpus: Vec<usize>,
    load: Load,
    cpu: CpuUse,
    /// Requests per second in each window, in order.
    window_rates: Vec<f64>,
}

impl Contender {
    /// Checks one token from the server, opens the connections and warms the server up.
    async fn prepare(options: &Options, server: Server, target: Target) -> anyhow::Result<Self> {
        let target = Arc::new(target);
        let token_summary = check_one_token(&target).await?;
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

        let server_cpus = parse_cpu_list(&allowed_cpus(&format!("/proc/{}/status", server.pid)))?;
        Ok(Self {
            server,
            target,
            clients,
            token_summary,
            server_cpus,
            load: Load::default(),
            cpu: CpuUse::default(),
            window_rates: Vec::new(),
        })
    }

    /// Loads the server for `window` and adds the outcome and the CPU time used to the sums.
    async fn measure_window(&mut self, window: Duration) -> anyhow::Result<()> {
        let before = self.sample_cpu()?;
        let load = drive(&self.clients, &self.target, window).await;
        let after = self.sample_cpu()?;

        self.cpu.server += after.server.saturating_sub(before.server);
        self.cpu.generator += after.generator.saturating_sub(before.generator);
        self.cpu.server_cpus_busy += after
            .server_cpus_busy
            .saturating_sub(before.server_cpus_busy);
        self.window_rates.push(throughput(&load));
        self.load.merge(load);
        Ok(())
    }

    fn sample_cpu(&self) -> anyhow::Result<CpuUse> {
        Ok(CpuUse {
            server: process_cpu_time(&format!("/proc/{}/stat", self.server.pid))?,
            generator: process_cpu_time("/proc/self/stat")?,
            server_cpus_busy: busy_time("/proc/stat", &self.server_cpus)?,
        })
    }

    /// Stops the server and sorts the latencies for the percentiles.
    async fn finish(&mut self) {
        self.server.kill().await;
        self.load.latencies.sort_unstable();
    }

    /// Returns the CPU time used on the server's CPUs during the windows by processes other
    /// than the server and, where it shares those CPUs, the load generator.
    fn others_cpu(&self) -> Duration {
        let generator_cpus = parse_cpu_list(&allowed_cpus("/proc/self/status")).unwrap_or_default();
        let shared = generator_cpus
            .iter()
            .any(|cpu| self.server_cpus.contains(cpu));
        let mut others = self.cpu.server_cpus_busy.saturating_sub(self.cpu.server);
        if shared {
            others = others.saturating_sub(self.cpu.generator);
        }
        others
    }
}

/// CPU time, either at one moment (since boot or process start) or summed over windows.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    /// User and system time of the server process, all threads.
    server: Duration,
    /// The same for this program, the load generator.
    generator: Duration,
    /// Time that the server's CPUs were not idle, whatever ran on them.
    server_cpus_busy: Duration,
}

/// Requests one token and checks that it is an ES256-signed JWT for `AUDIENCE` with the
/// requested scope and lifetime. Returns its header and scope for the report.
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
        claims["aud"] == AUDIENCE || claims["aud"] == json!([AUDIENCE]),
        "{}: the token's audience is {}, not {AUDIENCE}",
        target.name,
        claims["aud"]
    );
    ensure!(
        body["expires_in"] == TOKEN_LIFETIME_SECONDS,
        "{}: the token expires in {} s, not {TOKEN_LIFETIME_SECONDS} s",
        target.name,
        body["expires_in"]
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
    /// 200 responses whose body contained no Bearer JWT.
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
        self.elapsed += other.elapsed;
    }
}

/// Runs one worker per client for `duration`, or until `MAX_REQUESTS` have been sent.
/// Requests still in flight at the deadline finish, and `elapsed` includes them.
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

fn print_report(options: &Options, contenders: &[Contender]) {
    let ms = |duration: Duration| format!("{:.2} ms", duration.as_secs_f64() * 1_000.0);
    let share = |cpu: Duration, load: &Load| {
        format!("{:.2}", cpu.as_secs_f64() / load.elapsed.as_secs_f64())
    };
    println!(
        "| server | requests/s | p50 | p99 | requests | non-200 or no token | server CPU \
         (cores) | others on server CPU (cores) | load generator CPU (cores) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for contender in contenders {
        let load = &contender.load;
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            contender.target.name,
            throughput(load),
            ms(quantile(&load.latencies, 0.5)),
            ms(quantile(&load.latencies, 0.99)),
            load.issued + load.failures(),
            load.failures(),
            share(contender.cpu.server, load),
            share(contender.others_cpu(), load),
            share(contender.cpu.generator, load),
        );
    }
    println!();

    if let [valet, oidc_provider] = contenders {
        let ratio = throughput(&valet.load) / throughput(&oidc_provider.load);
        let window_ratios: Vec<f64> = valet
            .window_rates
            .iter()
            .zip(&oidc_provider.window_rates)
            .map(|(valet, oidc_provider)| valet / oidc_provider)
            .collect();
        let lowest = window_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = window_ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "Ratio of requests/s, Valet to oidc-provider: {ratio:.2} (target: at least 5). \
             Per round: {lowest:.2} to {highest:.2}."
        );
        println!();
    }

    let rounds = contenders
        .first()
        .map_or(0, |contender| contender.window_rates.len());
    println!(
        "Load: {} keep-alive connections with one request in flight on each. Each server is \
         warmed up for {WARM_UP:?}, then measured for {} s in {rounds} windows, the servers \
         taking turns. At most {MAX_REQUESTS} requests per window.",
        options.concurrency, options.seconds
    );
    println!(
        "Request: `POST /oauth/token` (Valet) or `POST /token` (oidc-provider) with client \
         credentials in `Authorization: Basic` and the body `{FORM_BODY}`. A request counts \
         only if the response is a 200 whose JSON contains a Bearer JWT. The column \
         `non-200 or no token` also counts requests that got no response."
    );
    for contender in contenders {
        println!(
            "{}: on CPUs {}. First token: {}.",
            contender.target.name,
            format_cpu_list(&contender.server_cpus),
            contender.token_summary
        );
    }
    println!(
        "Load generator: this program, on CPUs {}.",
        allowed_cpus("/proc/self/status")
    );
    for contender in contenders {
        let name = &contender.target.name;
        let load = &contender.load;
        for (status, count) in &load.other_status {
            println!("{name}: {count} responses with status {status}.");
        }
        if load.invalid_body > 0 {
            println!(
                "{name}: {} responses were 200 without a token.",
                load.invalid_body
            );
        }
        if load.transport_errors > 0 {
            println!(
                "{name}: {} requests failed without a response.",
                load.transport_errors
            );
        }
    }
    println!("Machine: {}.", machine_summary());
}

fn throughput(load: &Load) -> f64 {
    load.issued as f64 / load.elapsed.as_secs_f64()
}

/// Reads user plus system CPU time, all threads, from a `/proc/PID/stat` file (fields 14
/// and 15, in clock ticks).
fn process_cpu_time(stat_path: &str) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(stat_path)
        .with_context(|| format!("could not read {stat_path}"))?;
    // The command name in field 2 may contain spaces and brackets, so count the fields
    // after its last `)`.
    let after_name = text
        .rfind(')')
        .map(|end| &text[end + 1..])
        .with_context(|| format!("invalid {stat_path}: no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        let field = fields
            .get(index)
            .with_context(|| format!("invalid {stat_path}: too few fields"))?;
        Ok(field.parse()?)
    };
    // Fields 14 and 15 of the file are at 11 and 12 here, after the pid, name and state.
    Ok(ticks_to_duration(ticks(11)? + ticks(12)?))
}

/// Sums, over `cpus`, the time that each CPU was not idle, from the per-CPU lines of
/// `/proc/stat` (everything but the `idle` and `iowait` columns, in clock ticks).
fn busy_time(stat_path: &str, cpus: &[usize]) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(stat_path)
        .with_context(|| format!("could not read {stat_path}"))?;
    let mut ticks = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<usize>() else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        // Columns: user nice system idle iowait irq softirq steal guest guest_nice. Guest
        // time is also counted in user and nice, so it is left out here.
        let columns: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>()?;
        ensure!(
            columns.len() == 8,
            "invalid {stat_path}: short line for cpu{cpu}"
        );
        ticks += columns.iter().sum::<u64>() - columns[3] - columns[4];
    }
    Ok(ticks_to_duration(ticks))
}

/// Converts clock ticks, the unit of `/proc` CPU times, to a duration.
fn ticks_to_duration(ticks: u64) -> Duration {
    static TICKS_PER_SECOND: OnceLock<u64> = OnceLock::new();
    let per_second = *TICKS_PER_SECOND.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            // NOTE: 100 is the value on x86 and ARM Linux, for a machine without getconf.
            .unwrap_or(100)
    });
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// Returns `Cpus_allowed_list` from a `/proc/PID/status` file, such as `0-1,4`.
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

/// Parses a CPU list in the kernel's format, such as `0-1,4`.
fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: usize = first
            .trim()
            .parse()
            .with_context(|| format!("invalid CPU list {list}"))?;
        let last: usize = last
            .trim()
            .parse()
            .with_context(|| format!("invalid CPU list {list}"))?;
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

fn format_cpu_list(cpus: &[usize]) -> String {
    let names: Vec<String> = cpus.iter().map(usize::to_string).collect();
    names.join(",")
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
        assert!(process_cpu_time("/proc/self/stat").is_ok());
        assert!(process_cpu_time("/proc/self/no-such-file").is_err());
    }

    #[test]
    fn busy_time_reads_listed_cpus() {
        assert!(busy_time("/proc/stat", &[0]).is_ok());
        assert_eq!(busy_time("/proc/stat", &[]).unwrap(), Duration::ZERO);
    }

    #[test]
    fn parse_cpu_list_expands_ranges() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("unknown").is_err());
    }
}
