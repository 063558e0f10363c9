//! Connection handling of `valet serve` over raw TCP: keep-alive and pipelining, timeouts
//! for slow clients, and shutdown with in-flight and stalled requests.
//!
//! Every case is timed against the constants in `valet::http`, so the slow ones take about
//! as long as the timeout they prove: the slowest, the request timeout, about 30 seconds.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use valet::http::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, REQUEST_TIMEOUT};

use crate::process::{Server, Store, find_keys};

/// Slack added to a timeout before a test gives up waiting for its effect. Generous, so a
/// loaded CI machine does not fail the test.
const MARGIN: Duration = Duration::from_secs(5);

/// Slack subtracted from a timeout when checking that its effect did not come too early.
const EARLY: Duration = Duration::from_secs(1);

/// Maximum wait for a freshly started server to return 200 on `/healthz`.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Pause between sending a request head and SIGTERM, so the server has read the head.
const HEAD_READ_PAUSE: Duration = Duration::from_millis(300);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// Builds the head and body of a request that verifies `admin_key` with itself. The
/// caller is authorized before the body is read, so the tests can stall a request in its
/// body only with a valid key.
fn verify_request(admin_key: &str) -> (String, String) {
    let body = json!({ "key": admin_key, "scopes": [] }).to_string();
    let head = format!(
        "POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head, body)
}

/// Returns the bootstrap admin key that a server printed on `stdout`.
pub fn bootstrap_key(stdout: &str) -> String {
    let keys = find_keys(stdout, "vk_live_");
    assert_eq!(keys.len(), 1, "one bootstrap key on stdout:\n{stdout}");
    keys[0].clone()
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header names in lowercase, with their values.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("response body is not JSON ({err}): {}", self.body))
    }
}

/// Reads one response with a `Content-Length` body, leaving any bytes after it in `reader`
/// for the next response.
async fn read_response<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> RawResponse {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .expect("read status line");
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "expected a status line, got {status_line:?}"
    );
    let status = status_line[9..12].parse().expect("numeric status");

    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("read header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header line has a colon");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }

    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.parse().expect("numeric content-length"))
        .expect("response has a content-length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("read body");
    RawResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// Reads until the server closes the connection and returns what arrived before. A reset
/// counts as closed. Panics if the connection is still open after `limit`.
async fn read_until_closed<R: AsyncReadExt + Unpin>(reader: &mut R, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => return,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
                Err(err) => panic!("read failed: {err}"),
            }
        }
    };
    tokio::time::timeout(limit, reading)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {limit:?}"));
    received
}

/// Returns `host:port` of a server address such as `http://127.0.0.1:1234`.
fn socket_address(address: &str) -> &str {
    address.strip_prefix("http://").expect("http:// address")
}

async fn connect(address: &str) -> TcpStream {
    TcpStream::connect(socket_address(address))
        .await
        .expect("connect to valet serve")
}

/// Opens a connection and completes one `/healthz` exchange on it, so the server has
/// surely accepted it before the test goes on.
async fn accepted_connection(address: &str) -> BufReader<TcpStream> {
    let mut stream = BufReader::new(connect(address).await);
    stream.get_mut().write_all(HEALTHZ).await.expect("send");
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "first /healthz on the connection");
    stream
}

#[tokio::test]
async fn keep_alive_serves_sequential_and_pipelined_requests() {
    let store = Store::new();
    let mut server = Server::start(&store, "info").await;
    let mut stream = BufReader::new(connect(&server.address).await);

    for round in ["first", "second"] {
        stream.get_mut().write_all(HEALTHZ).await.expect("send");
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 200, "{round} /healthz");
        assert_eq!(response.json()["status"], "ok", "{round} /healthz body");
        assert_ne!(
            response.header("connection"),
            Some("close"),
            "{round} /healthz keeps the connection"
        );
    }

    // Both requests leave in one write, and the server must return the responses in order.
    let pipelined = [HEALTHZ, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    stream.get_mut().write_all(&pipelined).await.expect("send");
    let found = read_response(&mut stream).await;
    assert_eq!(found.status, 200, "pipelined /healthz");
    let missing = read_response(&mut stream).await;
    assert_eq!(missing.status, 404, "pipelined /nope");
    assert_eq!(missing.json()["code"], "route_not_found");

    // The idle keep-alive connection must not hold up shutdown.
    let started = Instant::now();
    let status = server.stop().await;
    assert!(status.success(), "valet serve exited with {status}");
    assert!(
        started.elapsed() < DRAIN_TIMEOUT - EARLY,
        "shutdown took {:?} with only an idle connection open",
        started.elapsed()
    );
}

/// Sends half of a request head and returns the time from connecting until the server
/// closes the connection.
async fn half_sent_headers(address: &str) -> Duration {
    let started = Instant::now();
    let mut stream = connect(address).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let received = read_until_closed(&mut stream, HEADER_READ_TIMEOUT + MARGIN).await;
    assert!(received.is_empty(), "half-sent headers got a response");
    started.elapsed()
}

/// Connects, sends nothing and returns the time until the server closes the connection.
async fn silent_connection(address: &str) -> Duration {
    let started = Instant::now();
    let mut stream = connect(address).await;
    read_until_closed(&mut stream, HEADER_READ_TIMEOUT + MARGIN).await;
    started.elapsed()
}

/// Sends a header line every second, never ending the head, and returns the time until
/// the server closes the connection. Steady progress must not extend the timeout.
async fn trickled_headers(address: &str) -> Duration {
    let started = Instant::now();
    let (mut reader, mut writer) = connect(address).await.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
                // The server has closed the connection; wait for the reader to see it.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = read_until_closed(&mut reader, HEADER_READ_TIMEOUT + MARGIN) => {}
        () = trickle => unreachable!("the trickle never ends"),
    }
    started.elapsed()
}

/// Completes one request, then stays idle, and returns the time from the response until
/// the server closes the connection.
async fn idle_keep_alive(address: &str) -> Duration {
    let mut stream = accepted_connection(address).await;
    let started = Instant::now();
    read_until_closed(&mut stream, HEADER_READ_TIMEOUT + MARGIN).await;
    started.elapsed()
}

/// Sends a verify request whose body trickles in at one byte every 5 seconds and
/// returns the response and the time from connecting until it arrived.
async fn trickled_body(address: &str, admin_key: &str) -> (RawResponse, Duration) {
    let started = Instant::now();
    let (reader, mut writer) = connect(address).await.into_split();
    let mut reader = BufReader::new(reader);
    let (head, body) = verify_request(admin_key);
    writer.write_all(head.as_bytes()).await.expect("send head");
    let trickle = async {
        for byte in body.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        std::future::pending::<()>().await;
    };
    let response = tokio::select! {
        response = tokio::time::timeout(REQUEST_TIMEOUT + MARGIN, read_response(&mut reader)) => {
            response.unwrap_or_else(|_| {
                panic!("no response to a trickled body within {:?}", REQUEST_TIMEOUT + MARGIN)
            })
        }
        () = trickle => unreachable!("the trickle never ends"),
    };
    let elapsed = started.elapsed();

    let after = read_until_closed(&mut reader, MARGIN).await;
    assert!(after.is_empty(), "bytes after the 408: {after:?}");
    (response, elapsed)
}

/// Asserts that a slow-client case ended after `timeout` and within `MARGIN` of it.
fn assert_cut_at(case: &str, elapsed: Duration, timeout: Duration) {
    assert!(
        elapsed >= timeout - EARLY,
        "{case}: closed after {elapsed:?}, before the {timeout:?} timeout"
    );
    assert!(
        elapsed <= timeout + MARGIN,
        "{case}: closed after {elapsed:?}, long after the {timeout:?} timeout"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_timeouts() {
    let store = Store::new();
    let mut server = Server::start(&store, "info").await;
    let address = server.address.clone();
    let admin_key = bootstrap_key(&server.stdout());

    // The cases run at once, so the test lasts about as long as the request timeout.
    let (half, silent, trickled, idle, (response, body_elapsed)) = tokio::join!(
        half_sent_headers(&address),
        silent_connection(&address),
        trickled_headers(&address),
        idle_keep_alive(&address),
        trickled_body(&address, &admin_key),
    );

    assert_cut_at("half-sent headers", half, HEADER_READ_TIMEOUT);
    assert_cut_at("silent connection", silent, HEADER_READ_TIMEOUT);
    assert_cut_at("trickled headers", trickled, HEADER_READ_TIMEOUT);
    assert_cut_at("idle keep-alive", idle, HEADER_READ_TIMEOUT);
    assert_cut_at("trickled body", body_elapsed, REQUEST_TIMEOUT);

    assert_eq!(response.status, 408, "trickled body: {response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(response.header("connection"), Some("close"));
    let problem = response.json();
    assert_eq!(problem["code"], "request_timeout", "problem {problem}");
    assert_eq!(problem["status"], 408);

    let mut healthy = accepted_connection(&address).await;
    healthy.get_mut().write_all(HEALTHZ).await.expect("send");
    assert_eq!(read_response(&mut healthy).await.status, 200, "serves on");
    drop(healthy);
    let status = server.stop().await;
    assert!(status.success(), "valet serve exited with {status}");
}

/// A `valet serve` process whose exit the test times itself, because
/// [`Server::stop`] gives up before a drain deadline could pass. Dropping it kills the
/// process.
struct ServeProcess {
    child: Child,
    address: String,
    /// The bootstrap admin key that the process printed.
    admin_key: String,
    stderr: PathBuf,
}

impl ServeProcess {
    async fn start(store: &Store) -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("bind a free loopback port")
            .port();
        let stdout = store.file(&format!("serve-{port}.stdout"));
        let stderr = store.file(&format!("serve-{port}.stderr"));
        let child = store
            .command()
            .env("VALET_LOG", "info")
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("start valet serve");
        let mut process = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            admin_key: String::new(),
            stderr,
        };
        process.wait_until_healthy().await;
        // The key is printed before the server listens, so it is complete by now.
        process.admin_key =
            bootstrap_key(&std::fs::read_to_string(&stdout).expect("read stdout file"));
        process
    }

    async fn wait_until_healthy(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client");
        let url = format!("{}/healthz", self.address);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll valet serve") {
                panic!(
                    "valet serve exited with {status}; stderr:\n{}",
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
                "/healthz did not return 200 within {START_LIMIT:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).expect("read stderr file")
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed with {sent}");
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll valet serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "valet serve still running {limit:?} after SIGTERM; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a new connection is refused, which shows that the listener is closed.
    async fn wait_until_refusing(&self) {
        let deadline = Instant::now() + MARGIN;
        loop {
            match TcpStream::connect(socket_address(&self.address)).await {
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "valet serve still accepted connections {MARGIN:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Both calls fail harmlessly when the process has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_request() {
    let store = Store::new();
    let mut server = ServeProcess::start(&store).await;
    let mut stream = accepted_connection(&server.address).await;
    let (head, body) = verify_request(&server.admin_key);
    let (first, rest) = body.split_at(10);
    stream
        .get_mut()
        .write_all(format!("{head}{first}").as_bytes())
        .await
        .expect("send head and part of the body");
    // Hyper closes a connection at once on shutdown while it has not read a request head
    // from it yet, so give the server time to read this one.
    tokio::time::sleep(HEAD_READ_PAUSE).await;

    server.terminate();
    let started = Instant::now();
    server.wait_until_refusing().await;
    stream
        .get_mut()
        .write_all(rest.as_bytes())
        .await
        .expect("send the rest of the body");
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "in-flight verify: {response:?}");
    assert_eq!(response.json()["valid"], true, "in-flight verify");

    let status = server.wait_exit(MARGIN).await;
    assert!(status.success(), "valet serve exited with {status}");
    assert!(
        started.elapsed() < DRAIN_TIMEOUT - EARLY,
        "exit took {:?} after the last request finished",
        started.elapsed()
    );
    let stderr = server.stderr();
    assert!(stderr.contains("all connections closed"), "{stderr}");
    assert!(stderr.contains("valet stopped"), "{stderr}");
}

#[tokio::test]
async fn shutdown_cuts_stalled_request_at_deadline() {
    let store = Store::new();
    let mut server = ServeProcess::start(&store).await;
    let mut stalled = accepted_connection(&server.address).await;
    let (head, _body) = verify_request(&server.admin_key);
    stalled
        .get_mut()
        .write_all(format!("{head}{{").as_bytes())
        .await
        .expect("send head and one byte of the body");
    // A second connection with half of a request head ends before the drain deadline, at
    // once or by the header read timeout, so it is not among the cut connections.
    let mut half_head = accepted_connection(&server.address).await;
    half_head
        .get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a head");
    tokio::time::sleep(HEAD_READ_PAUSE).await;

    server.terminate();
    let started = Instant::now();
    let status = server.wait_exit(DRAIN_TIMEOUT + MARGIN).await;
    let elapsed = started.elapsed();

    assert!(status.success(), "valet serve exited with {status}");
    assert!(
        elapsed >= DRAIN_TIMEOUT - EARLY,
        "exited after {elapsed:?}, before the {DRAIN_TIMEOUT:?} drain deadline"
    );
    let stderr = server.stderr();
    let cut_line = stderr
        .lines()
        .find(|line| line.contains("closed connections still open at the drain deadline"))
        .unwrap_or_else(|| panic!("no line about cut connections:\n{stderr}"));
    assert!(cut_line.contains("connections=1"), "{cut_line}");
    assert!(stderr.contains("valet stopped"), "{stderr}");
    let received = read_until_closed(&mut stalled, MARGIN).await;
    assert!(received.is_empty(), "stalled request got {received:?}");
    let received = read_until_closed(&mut half_head, MARGIN).await;
    assert!(received.is_empty(), "half-sent head got {received:?}");
}
