//! A real PostgreSQL restart under load: while its database is down, `valet serve` returns
//! 503 with `Retry-After`, most of them at once, and it serves reads and writes again once
//! the database is back, without a restart of its own.
//!
//! The shared PostgreSQL server of the other tests must stay up, so this test runs a
//! cluster of its own, made with `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin`, in a temporary directory and on a free port of
//! 127.0.0.1.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::skip_outside_ci;
use crate::process::{AdminClient, Server, Store, free_port};

/// Where Debian and Ubuntu install the programs of each PostgreSQL version, as
/// `<version>/bin`.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// Concurrent clients that verify a key throughout the test, beside one that writes.
const VERIFY_CLIENTS: usize = 5;
/// Pause between two requests of one client, which bounds the load on a shared machine.
const PAUSE: Duration = Duration::from_millis(20);
/// How long the load runs before the stop, while the database is down, and after the
/// recovery.
const PHASE: Duration = Duration::from_secs(2);
/// Maximum time for any response, while the database is down included. A request that
/// probes the database waits up to 3 seconds, the pool's acquire timeout, for its 503.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// Maximum median time of the 503s while the database is down. Between probes, requests
/// fail without waiting for a connection.
const FAST_FAIL_LIMIT: Duration = Duration::from_millis(200);
/// Time after the stop during which a cached key may still verify, because the cache
/// serves until the change feed has noticed the lost connection.
const NOTICE_LIMIT: Duration = Duration::from_secs(1);
/// Maximum time from the database accepting connections again until a verification
/// succeeds.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
/// Maximum time until the change feed has reconnected and the cache answers again. Its
/// wait between attempts doubles up to 5 seconds.
const FEED_LIMIT: Duration = Duration::from_secs(15);

/// A PostgreSQL cluster of this test's own on 127.0.0.1, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// Whether the PostgreSQL programs run as the `postgres` user, because the test runs
    /// as root and `initdb` rejects root.
    as_postgres: bool,
}

impl Cluster {
    /// Creates a cluster with trust authentication for the user `postgres`.
    fn create(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let as_postgres = running_as_root();
        if as_postgres {
            let chown = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .output()
                .expect("run chown");
            assert_succeeded(&chown, "chown postgres on the cluster directory");
        }
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };

        // The cluster's files are thrown away after the test, so initdb skips fsync.
        let initdb = cluster
            .command("initdb")
            .arg("--pgdata")
            .arg(cluster.data())
            .args(["--username=postgres", "--auth=trust", "--no-sync"])
            .args(["--no-locale", "--encoding=UTF8"])
            .output()
            .expect("run initdb");
        assert_succeeded(&initdb, "initdb");

        // Only TCP on 127.0.0.1 and a socket directory inside the temporary directory,
        // so the cluster never meets the shared server or its socket.
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 40\nshared_buffers = '16MB'\n",
            cluster.port,
            cluster.dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.data().join("postgresql.conf"))
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .expect("write postgresql.conf");
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Returns the URL of the cluster's `postgres` database.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Builds a command for the PostgreSQL program `program`, run as the `postgres` user
    /// when the test runs as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        } else {
            Command::new(path)
        };
        // The test's own directory may be closed to the `postgres` user.
        command.current_dir(self.dir.path());
        command
    }

    /// Runs `pg_ctl ARGS` on the cluster and waits for it to finish.
    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .arg("--pgdata")
            .arg(self.data())
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    /// Starts the cluster and waits until it accepts connections.
    fn start(&self) {
        let log = self.log();
        let log = log.to_str().expect("UTF-8 temporary path");
        let output = self.pg_ctl(&["--log", log, "--wait", "--timeout=60", "start"]);
        if !output.status.success() {
            let server_log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!(
                "pg_ctl start failed with {}; its stderr:\n{}\nserver log:\n{server_log}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Stops the cluster with the shutdown mode `mode`, `fast` or `immediate`.
    fn stop(&self, mode: &str) {
        let mode = format!("--mode={mode}");
        let output = self.pg_ctl(&[&mode, "--wait", "--timeout=60", "stop"]);
        assert_succeeded(&output, "pg_ctl stop");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Fails harmlessly when the cluster is stopped already.
        let _ = self.pg_ctl(&["--mode=immediate", "--wait", "stop"]);
    }
}

/// Returns the newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn find_programs() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn assert_succeeded(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}; its stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One request of the load, and its outcome.
struct Sample {
    /// What the request did: `verify`, `create`, `roll` or `revoke`.
    request: &'static str,
    sent: Instant,
    answered: Instant,
    /// The status, or the transport error when no response arrived.
    status: Result<StatusCode, String>,
    retry_after: bool,
    /// The `code` of the JSON answer: a verification code or a problem code.
    code: String,
}

impl Sample {
    fn elapsed(&self) -> Duration {
        self.answered - self.sent
    }

    fn succeeded(&self) -> bool {
        let success = self.status.as_ref().is_ok_and(StatusCode::is_success);
        success && (self.request != "verify" || self.code == "VALID")
    }

    fn is_store_unavailable(&self) -> bool {
        self.status == Ok(StatusCode::SERVICE_UNAVAILABLE)
            && self.retry_after
            && self.code == "store_unavailable"
    }

    fn describe(&self) -> String {
        format!(
            "{} answered in {:?} with status {:?}, code {:?}, Retry-After {}",
            self.request,
            self.elapsed(),
            self.status,
            self.code,
            self.retry_after
        )
    }
}

/// Sends one request and returns its sample and JSON answer.
async fn send_sampled(
    api: &AdminClient,
    request: &'static str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (Sample, Value) {
    let sent = Instant::now();
    let (status, retry_after, answer) = match api.send(method, path, body).await {
        Ok(response) => {
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            let answer: Value = response.json().await.unwrap_or_default();
            (Ok(status), retry_after, answer)
        }
        Err(err) => (Err(err.to_string()), false, Value::Null),
    };
    let sample = Sample {
        request,
        sent,
        answered: Instant::now(),
        status,
        retry_after,
        code: answer["code"].as_str().unwrap_or_default().to_owned(),
    };
    (sample, answer)
}

async fn verify_sampled(api: &AdminClient, raw: &str) -> Sample {
    let body = json!({ "key": raw });
    let (sample, _) =
        send_sampled(api, "verify", Method::POST, "/v1/keys/verify", Some(&body)).await;
    sample
}

/// Verifies `raw` again and again, with [`PAUSE`] between requests, until `running` is
/// cleared.
async fn verify_while(api: AdminClient, raw: String, running: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while running.load(Ordering::SeqCst) {
        samples.push(verify_sampled(&api, &raw).await);
        tokio::time::sleep(PAUSE).await;
    }
    samples
}

/// Creates a key, rolls it and revokes the successor, again and again, with [`PAUSE`]
/// between rounds, until `running` is cleared.
async fn write_while(api: AdminClient, running: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while running.load(Ordering::SeqCst) {
        write_round(&api, &mut samples).await;
        tokio::time::sleep(PAUSE).await;
    }
    samples
}

/// Runs one create, roll and revoke, and stops at the first write that fails.
async fn write_round(api: &AdminClient, samples: &mut Vec<Sample>) -> Option<()> {
    let body = json!({ "name": "load", "scopes": [] });
    let created = write_sampled(api, samples, "create", "/v1/keys", Some(&body)).await?;
    let id = created["id"].as_str()?;
    let roll = format!("/v1/keys/{id}/roll");
    let rolled = write_sampled(api, samples, "roll", &roll, None).await?;
    let revoke = format!("/v1/keys/{}/revoke", rolled["id"].as_str()?);
    write_sampled(api, samples, "revoke", &revoke, None).await?;
    Some(())
}

/// Sends `POST path`, keeps its sample, and returns the answer when it succeeded.
async fn write_sampled(
    api: &AdminClient,
    samples: &mut Vec<Sample>,
    request: &'static str,
    path: &str,
    body: Option<&Value>,
) -> Option<Value> {
    let (sample, answer) = send_sampled(api, request, Method::POST, path, body).await;
    let succeeded = sample.succeeded();
    samples.push(sample);
    succeeded.then_some(answer)
}

/// Verifies `raw` until it is `VALID`, and returns when that answer arrived.
async fn wait_until_valid(api: &AdminClient, raw: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let sample = verify_sampled(api, raw).await;
        if sample.succeeded() {
            return sample.answered;
        }
        assert!(
            Instant::now() < deadline,
            "no VALID verification within {limit:?} of the database start; last status {:?}, \
             code {:?}",
            sample.status,
            sample.code
        );
        tokio::time::sleep(PAUSE).await;
    }
}

/// Waits until `valet_cache_trusted` is 1, which means the change feed is connected.
async fn wait_until_trusted(api: &AdminClient, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let metrics = api
            .send(Method::GET, "/metrics", None)
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        if metrics.contains("\nvalet_cache_trusted 1\n") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "change feed did not connect within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that `GET /readyz` returns a 503 problem with `Retry-After` within
/// [`ANSWER_LIMIT`].
async fn assert_not_ready(api: &AdminClient) {
    let (sample, _) = send_sampled(api, "readyz", Method::GET, "/readyz", None).await;
    let described = sample.describe();
    assert!(sample.is_store_unavailable(), "database down: {described}");
    assert!(
        sample.elapsed() <= ANSWER_LIMIT,
        "database down: {described}"
    );
}

/// One stop and start of the cluster, as the test timed it.
struct Outage {
    mode: &'static str,
    stop_sent: Instant,
    stopped: Instant,
    start_sent: Instant,
    started: Instant,
    /// When the first verification after the start returned `VALID`.
    recovered: Instant,
}

/// What a request must return, given when it ran.
#[derive(Debug, PartialEq)]
enum Expected {
    Success,
    StoreUnavailable,
    /// The request overlapped a stop or a start, so either answer is right.
    Either,
}

/// Decides what `sample` must return from the outages. A cached key may still verify
/// for [`NOTICE_LIMIT`] after a stop, and a request that waits for a connection while the
/// cluster starts may succeed.
fn expected(sample: &Sample, outages: &[Outage]) -> Expected {
    let Some(outage) = outages
        .iter()
        .rev()
        .find(|outage| outage.stop_sent <= sample.answered)
    else {
        return Expected::Success;
    };
    if sample.sent >= outage.recovered {
        Expected::Success
    } else if sample.sent >= outage.stopped + NOTICE_LIMIT && sample.answered < outage.start_sent {
        Expected::StoreUnavailable
    } else {
        Expected::Either
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_fails_closed_then_recovers() {
    let Some(bin) = find_programs() else {
        skip_outside_ci(
            "postgres_restart_fails_closed_then_recovers",
            &format!(
                "no initdb in {POSTGRES_LIB}/<version>/bin; install the PostgreSQL server \
                 package to run the test"
            ),
        );
        return;
    };
    let cluster = Cluster::create(bin);
    cluster.start();
    let store = Store::at(&cluster.url());
    let mut server = Server::start(&store, "info").await;
    let admin_key = server.bootstrap_key();
    let api = AdminClient::new(&server, &admin_key, 2 * ANSWER_LIMIT);
    let body = json!({ "name": "worker", "scopes": [] });
    let (_, created) = send_sampled(&api, "create", Method::POST, "/v1/keys", Some(&body)).await;
    let raw = created["key"].as_str().expect("created key").to_owned();
    wait_until_trusted(&api, FEED_LIMIT).await;

    let running = Arc::new(AtomicBool::new(true));
    let mut load: Vec<_> = (0..VERIFY_CLIENTS)
        .map(|_| tokio::spawn(verify_while(api.clone(), raw.clone(), running.clone())))
        .collect();
    load.push(tokio::spawn(write_while(api.clone(), running.clone())));
    tokio::time::sleep(PHASE).await;

    // A fast stop ends every session with an error message. An immediate stop kills the
    // server processes without one, and the next start recovers from the WAL.
    let mut outages = Vec::new();
    for mode in ["fast", "immediate"] {
        // pg_ctl blocks, so the load moves to the other worker thread meanwhile.
        let stop_sent = Instant::now();
        tokio::task::block_in_place(|| cluster.stop(mode));
        let stopped = Instant::now();
        tokio::time::sleep(NOTICE_LIMIT).await;
        assert_not_ready(&api).await;
        tokio::time::sleep(PHASE).await;

        let start_sent = Instant::now();
        tokio::task::block_in_place(|| cluster.start());
        let started = Instant::now();
        let recovered = wait_until_valid(&api, &raw, RECOVERY_LIMIT).await;
        outages.push(Outage {
            mode,
            stop_sent,
            stopped,
            start_sent,
            started,
            recovered,
        });
        tokio::time::sleep(PHASE).await;
    }
    running.store(false, Ordering::SeqCst);
    let mut samples = Vec::new();
    for client in load {
        samples.extend(client.await.expect("load client finished"));
    }

    let first_stop = outages[0].stop_sent;
    for sample in &samples {
        let described = format!(
            "{}, sent {:?} after the first stop",
            sample.describe(),
            sample.sent.saturating_duration_since(first_stop)
        );
        assert!(sample.status.is_ok(), "no response: {described}");
        assert!(
            sample.elapsed() <= ANSWER_LIMIT,
            "slower than {ANSWER_LIMIT:?}: {described}"
        );
        let expected = expected(sample, &outages);
        let matches = match expected {
            Expected::Success => sample.succeeded(),
            Expected::StoreUnavailable => sample.is_store_unavailable(),
            Expected::Either => sample.succeeded() || sample.is_store_unavailable(),
        };
        assert!(matches, "expected {expected:?}: {described}");
    }
    for outage in &outages {
        let down: Vec<&Sample> = samples
            .iter()
            .filter(|sample| {
                sample.sent >= outage.stopped + NOTICE_LIMIT && sample.answered < outage.start_sent
            })
            .collect();
        let up: Vec<&Sample> = samples
            .iter()
            .filter(|sample| sample.sent >= outage.recovered)
            .collect();
        for (requests, when) in [
            (&down, "while the database was down"),
            (&up, "after it was back"),
        ] {
            assert!(
                requests.iter().any(|sample| sample.request == "verify"),
                "no verification ran {when} after the {} stop",
                outage.mode
            );
            assert!(
                requests.iter().any(|sample| sample.request != "verify"),
                "no write ran {when} after the {} stop",
                outage.mode
            );
        }
        let mut times: Vec<Duration> = down.iter().map(|sample| sample.elapsed()).collect();
        times.sort();
        let median = times[times.len() / 2];
        let slowest = times[times.len() - 1];
        assert!(
            median <= FAST_FAIL_LIMIT,
            "503s while down after the {} stop took {median:?} at the median",
            outage.mode
        );
        eprintln!(
            "{} stop: {} requests answered 503 while down, median {median:?}, slowest \
             {slowest:?}; pg_ctl start took {:?}, VALID again {:?} later",
            outage.mode,
            down.len(),
            outage.started - outage.start_sent,
            outage.recovered - outage.started
        );
    }

    assert!(
        server.is_running(),
        "valet serve exited:\n{}",
        server.stderr()
    );
    wait_until_trusted(&api, FEED_LIMIT).await;
}
