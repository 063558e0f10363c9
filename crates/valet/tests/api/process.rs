//! `valet` processes for tests: a store to run them on, `valet serve` on a free loopback
//! port, and helpers that pick keys out of their output.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, Response};
use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{TestSchema, valet_bin};

/// Maximum wait for a server to return 200 on `/healthz`, or to exit after SIGTERM.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A fresh store for `valet` processes, with a temporary directory for their files; both
/// are removed on drop.
pub struct Store {
    dir: TempDir,
    url: String,
    /// Keeps the PostgreSQL schema alive when the store is on PostgreSQL.
    _schema: Option<TestSchema>,
}

impl Store {
    /// Creates a store on a new SQLite file.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("valet.db").display());
        Self {
            dir,
            url,
            _schema: None,
        }
    }

    /// Creates a store on a new PostgreSQL schema.
    pub async fn postgres() -> Self {
        let schema = TestSchema::create().await;
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            url: schema.url.clone(),
            _schema: Some(schema),
        }
    }

    /// Uses the database at `url`, which the caller created and keeps alive, with a
    /// temporary directory for the processes' files.
    pub fn at(url: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            url: url.to_owned(),
            _schema: None,
        }
    }

    /// Returns the path of `name` inside the store's directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Returns the `--database-url` of this store.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Builds a `valet` command with no store option. VALET_ variables from the caller's
    /// environment are removed and the working directory is the store's directory, so
    /// no default can reach another file or address.
    pub fn bare_command(&self) -> Command {
        let mut command = Command::new(valet_bin());
        for (variable, _) in std::env::vars_os() {
            if variable.to_string_lossy().starts_with("VALET_") {
                command.env_remove(variable);
            }
        }
        command.current_dir(self.dir.path());
        command
    }

    /// Builds a `valet --database-url URL` command on this store.
    pub fn command(&self) -> Command {
        let mut command = self.bare_command();
        command.arg("--database-url").arg(self.url());
        command
    }

    /// Runs `valet ARGS` with no standard input and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run valet")
    }

    /// Runs `valet ARGS` with `input` on standard input and returns its output.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start valet");
        let mut stdin = child.stdin.take().expect("piped standard input");
        stdin
            .write_all(input.as_bytes())
            .expect("write standard input");
        drop(stdin);
        child.wait_with_output().expect("wait for valet")
    }

    /// Runs `valet ARGS`, which must succeed and print JSON, and returns the JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args);
        assert_success(&output, &args.join(" "));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "`{}` printed no JSON ({err}):\n{}",
                args.join(" "),
                stdout_of(&output)
            )
        })
    }

    /// Creates a key with `valet keys create --json --name NAME EXTRA` and returns it.
    pub fn create(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["keys", "create", "--json", "--name", name];
        args.extend_from_slice(extra);
        self.json(&args)
    }
}

/// A `valet serve` process on a free loopback port, with its output in files.
///
/// Dropping it kills the process, so a failed assertion never leaves a server behind.
pub struct Server {
    child: Child,
    pub address: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `valet serve` on `store` with `VALET_LOG=log_filter` and waits until
    /// `/healthz` returns 200.
    pub async fn start(store: &Store, log_filter: &str) -> Self {
        Self::start_on(store, log_filter, "127.0.0.1", &[]).await
    }

    /// Starts `valet serve` listening on `ip` and a free port, with `extra` arguments, and
    /// waits until `/healthz` on 127.0.0.1 returns 200. An unspecified `ip` (`0.0.0.0`)
    /// listens on loopback too, so the test still reaches it there.
    pub async fn start_on(store: &Store, log_filter: &str, ip: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let stdout = store.file(&format!("serve-{port}.stdout"));
        let stderr = store.file(&format!("serve-{port}.stderr"));
        let child = store
            .command()
            .env("VALET_LOG", log_filter)
            .arg("serve")
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("start valet serve");
        let mut server = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        };
        server.wait_until_healthy().await;
        server
    }

    async fn wait_until_healthy(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client");
        let url = format!("{}/healthz", self.address);
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll valet serve") {
                panic!(
                    "valet serve exited with {status} before /healthz returned 200; stderr:\n{}",
                    self.stderr()
                );
            }
            let healthy = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|response| response.status() == 200);
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not return 200 within {WAIT_LIMIT:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns what the server printed on standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).expect("read stdout file")
    }

    /// Returns what the server logged on standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).expect("read stderr file")
    }

    /// Returns the admin key that the server printed when it bootstrapped an empty store.
    pub fn bootstrap_key(&self) -> String {
        let keys = find_keys(&self.stdout(), "vk_live_");
        assert_eq!(keys.len(), 1, "valet serve printed one bootstrap key");
        keys[0].clone()
    }

    /// Returns whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll valet serve").is_none()
    }

    /// Kills the process with SIGKILL, as a crash would end it, and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill valet serve");
        self.child.wait().expect("wait for valet serve");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed with {sent}");

        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll valet serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "valet serve did not exit within {WAIT_LIMIT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Both calls fail harmlessly when the process has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests to a `valet serve` process, authenticated with an admin key.
#[derive(Clone)]
pub struct AdminClient {
    client: reqwest::Client,
    address: String,
    admin_key: String,
}

impl AdminClient {
    /// Creates a client for `server` whose requests fail after `timeout`, so that a server
    /// that hangs fails the test instead of stalling it.
    pub fn new(server: &Server, admin_key: &str, timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("HTTP client"),
            address: server.address.clone(),
            admin_key: admin_key.to_owned(),
        }
    }

    /// Sends `method path` with `body` as JSON, if any.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Result<Response> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }
}

/// Returns a loopback port that was free a moment ago. Another process may take it
/// before the server binds it, which makes the server exit and the test fail loudly.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Finds every token in `text` that starts with `marker`, such as `vk_live_`, and runs
/// over letters, digits and `_`.
pub fn find_keys(text: &str, marker: &str) -> Vec<String> {
    text.match_indices(marker)
        .map(|(start, _)| {
            let tail = &text[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            tail[..end].to_owned()
        })
        .collect()
}

/// Returns the 43-character secret of a raw key: its fourth `_`-separated part.
pub fn secret_of(key: &str) -> &str {
    let secret = key.split('_').nth(3).expect("a key has a secret part");
    assert_eq!(secret.len(), 43, "secret part of a key");
    secret
}

/// Builds a key from its parts with a correct checksum, as the server would write it.
pub fn assemble_key(env: &str, id: &str, secret: &str) -> String {
    let body = format!("vk_{env}_{id}_{secret}");
    format!("{body}_{}", valet::key::checksum(&body))
}

/// Builds a well-formed key with the env and id of `key` but another secret, so that it
/// passes the format checks and fails only the hash comparison.
pub fn with_wrong_secret(key: &str) -> String {
    let parts: Vec<&str> = key.split('_').collect();
    let secret = if parts[3].starts_with('A') {
        "B".repeat(43)
    } else {
        "A".repeat(43)
    };
    assemble_key(parts[1], parts[2], &secret)
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn assert_success(output: &Output, command: &str) {
    assert!(
        output.status.success(),
        "`{command}` exited with {:?}; stderr:\n{}",
        output.status.code(),
        stderr_of(output)
    );
}
