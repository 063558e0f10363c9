//! nginx `auth_request` in front of an upstream, with Valet's forward-auth deciding: the
//! configuration in docs/proxies.md, run against a real nginx from the Debian packages.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, spawn_app};

/// Stops nginx when the test ends, pass or fail.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master process stop its workers; SIGKILL would orphan them.
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.0.wait();
    }
}

/// Returns the nginx binary: Debian's, which sits in /usr/sbin, a directory that is not on
/// every user's `PATH`, or else whatever `nginx` the `PATH` finds.
fn nginx_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Returns whether nginx can run here; prints a loud SKIPPED line when it cannot, and
/// panics under CI, whose script installs it.
fn nginx_available() -> bool {
    let found = Command::new(nginx_binary())
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("nginx is not installed under CI; .ci/run must install it");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED nginx tests: install nginx to run them"
    );
    false
}

/// Starts an upstream that returns the headers it received as a JSON object.
async fn spawn_upstream() -> u16 {
    let app = Router::new().fallback(|headers: HeaderMap| async move {
        let seen: BTreeMap<String, String> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_owned()))
            .collect();
        axum::Json(seen)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the documented configuration with this test's ports and starts nginx.
fn start_nginx(dir: &std::path::Path, port: u16, valet: &str, upstream: u16) -> Nginx {
    let template = include_str!("../../../../docs/nginx.conf");
    let config = template
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8080", valet)
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"));
    let prefix = dir.display().to_string();
    let wrapper = format!(
        "daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
         {config}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, wrapper).unwrap();
    let child = Command::new(nginx_binary())
        .args(["-p", &prefix, "-c", &path.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

async fn get(port: u16, key: Option<&str>) -> (u16, Value) {
    let (status, _, seen) = get_with_sunset(port, key).await;
    (status, seen)
}

/// Sends a request through nginx and returns the status, the `Sunset` header that the
/// client received, and the request headers that the upstream saw.
async fn get_with_sunset(port: u16, key: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/orders/42"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let sunset = response
        .headers()
        .get("sunset")
        .map(|value| value.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (
        status,
        sunset,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn nginx_auth_request_enforces_keys() {
    if !nginx_available() {
        return;
    }
    let app: TestApp = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let valet = app.address.trim_start_matches("http://").to_owned();
    let _nginx = start_nginx(dir.path(), port, &valet, upstream);

    let reader = app
        .create_key(serde_json::json!({"name": "r", "scopes": ["orders:read"], "owner": "acme"}))
        .await;
    let reader_key = reader["key"].as_str().unwrap();
    let (status, seen) = get(port, Some(reader_key)).await;
    assert_eq!(status, 200, "a valid key passes: {seen}");
    assert_eq!(
        seen["x-valet-key-id"], reader["id"],
        "identity header reaches upstream"
    );
    assert_eq!(seen["x-valet-scopes"], "orders:read");
    assert_eq!(seen["x-valet-owner"], "acme");
    assert!(
        seen.get("authorization").is_none(),
        "the key never reaches upstream: {seen}"
    );
    let (_, sunset, _) = get_with_sunset(port, Some(reader_key)).await;
    assert_eq!(sunset, None, "a key that was not rolled gets no Sunset");

    let rolled = app
        .create_key(serde_json::json!({"name": "old", "scopes": ["orders:read"]}))
        .await;
    let roll = format!("/v1/keys/{}/roll", rolled["id"].as_str().unwrap());
    let grace = serde_json::json!({"grace_period_seconds": 3600});
    app.admin(Method::POST, &roll, Some(grace)).await;
    let (status, sunset, _) = get_with_sunset(port, rolled["key"].as_str()).await;
    assert_eq!(status, 200, "a rolled key passes in its grace period");
    let sunset = sunset.expect("the client sees Sunset for a key in its grace period");
    assert!(sunset.ends_with(" GMT"), "Sunset is an HTTP date: {sunset}");

    let (status, _) = get(port, Some("vk_live_not_a_key")).await;
    assert_eq!(status, 401, "an invalid key is refused");
    let (status, _) = get(port, None).await;
    assert_eq!(status, 401, "no key is refused");

    let writer = app.create_simple("w", &["orders:write"]).await;
    let (status, _) = get(port, writer["key"].as_str()).await;
    assert_eq!(status, 403, "a key without the scope is forbidden");

    let path = format!("/v1/keys/{}/revoke", reader["id"].as_str().unwrap());
    app.admin(Method::POST, &path, None).await;
    let (status, _) = get(port, Some(reader_key)).await;
    assert_eq!(status, 401, "a revoked key is refused on the next request");
}
