//! Runs the walkthroughs of the README and the OAuth guide, exactly as written, against a
//! real `valet serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::valet_bin;

const README: &str = include_str!("../../../../README.md");
const OAUTH_GUIDE: &str = include_str!("../../../../docs/oauth.md");
const DOCUMENTED_ADDRESS: &str = "127.0.0.1:8080";

/// Kills the server when the test ends, pass or fail.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Returns the `sh` blocks of the section under `heading` in `document`, in order.
fn walkthrough_blocks(document: &str, heading: &str) -> Vec<String> {
    let section = document
        .split(&format!("\n## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("document has a `{heading}` section"));
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `valet serve` on a fresh store and returns it with the bootstrap admin key.
fn start_server(dir: &std::path::Path, address: &str) -> (ServerGuard, String) {
    let mut child = Command::new(valet_bin())
        .args(["serve", "--listen", address])
        .env(
            "VALET_DATABASE_URL",
            format!("sqlite://{}/valet.db", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start valet serve");
    let stdout = child.stdout.take().unwrap();
    let guard = ServerGuard(child);

    // A reader thread drains standard output to its end, because the server fails when
    // it cannot write the rest of the bootstrap message.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(key) = line.split_whitespace().find(|w| w.starts_with("vk_live_")) {
                let _ = sender.send(key.to_owned());
            }
        }
    });
    let admin_key = receiver.recv_timeout(Duration::from_secs(10)).ok();
    let admin_key = admin_key.expect("serve printed a bootstrap admin key");

    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, admin_key)
}

/// Runs `script` with bash in `dir`, with `VALET_ADMIN_KEY` set, and returns its standard
/// output; fails the test when the script fails.
fn run_script(script: &str, admin_key: &str, dir: &std::path::Path) -> String {
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("VALET_ADMIN_KEY", admin_key)
        .current_dir(dir)
        .output()
        .expect("run bash; the walkthrough needs bash, curl and jq");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let blocks = walkthrough_blocks(README, "Walkthrough");
    assert!(blocks.len() >= 5, "walkthrough has its blocks: {blocks:?}");

    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let (_server, admin_key) = start_server(dir.path(), &address);

    // The export line contains a placeholder; the test exports the real key instead.
    let script: String = blocks
        .iter()
        .flat_map(|block| block.lines())
        .filter(|line| !line.starts_with("export VALET_ADMIN_KEY="))
        .map(|line| line.replace(DOCUMENTED_ADDRESS, &address) + "\n")
        .collect();
    // Each `# {...}` comment shows one output line; its `code` must match, while ids and
    // times differ from run to run.
    let expected: Vec<Value> = blocks
        .iter()
        .flat_map(|block| block.lines())
        .filter_map(|line| line.strip_prefix("# {").map(|rest| format!("{{{rest}")))
        .map(|json| serde_json::from_str(&json).expect("README output comment is JSON"))
        .collect();

    let stdout = run_script(&script, &admin_key, dir.path());

    let printed: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value.get("code").is_some())
        .collect();
    let codes = |values: &[Value]| -> Vec<Value> {
        values.iter().map(|value| value["code"].clone()).collect()
    };
    assert_eq!(
        codes(&printed),
        codes(&expected),
        "walkthrough output:\n{stdout}"
    );
    assert!(
        printed
            .iter()
            .any(|value| value["successor_id"].is_string()),
        "the old key names its successor:\n{stdout}"
    );
}

#[test]
fn oauth_guide_walkthrough_runs_as_written() {
    let blocks = walkthrough_blocks(OAUTH_GUIDE, "Walkthrough with curl");
    assert!(blocks.len() >= 3, "walkthrough has its blocks: {blocks:?}");

    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let (_server, admin_key) = start_server(dir.path(), &address);
    let script: String = blocks
        .iter()
        .flat_map(|block| block.lines())
        .map(|line| line.replace(DOCUMENTED_ADDRESS, &address) + "\n")
        .collect();

    let stdout = run_script(&script, &admin_key, dir.path());

    let printed: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("walkthrough printed non-JSON ({err}):\n{stdout}"));
    let token = printed
        .iter()
        .find(|value| value.get("access_token").is_some())
        .expect("a token response");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["scope"], "orders:read");
    let active: Vec<&Value> = printed
        .iter()
        .filter_map(|value| value.get("active"))
        .collect();
    assert_eq!(
        active,
        [&Value::Bool(true), &Value::Bool(false)],
        "introspect, revoke, introspect"
    );
}

/// The README's start command, `cargo run --release -- serve`, works only when the
/// workspace's default members have exactly one binary: the server.
#[test]
fn readme_run_command_finds_one_binary() {
    assert!(
        README.contains("\ncargo run --release -- serve\n"),
        "the README starts the server with `cargo run --release -- serve`"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        // From the root, as a new user runs it: inside a member's directory, cargo
        // picks that member instead of the default members.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");

    let defaults = metadata["workspace_default_members"]
        .as_array()
        .expect("cargo metadata lists the default members");
    let binaries: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("cargo metadata lists the packages")
        .iter()
        .filter(|package| defaults.contains(&package["id"]))
        .flat_map(|package| package["targets"].as_array().into_iter().flatten())
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.contains(&"bin".into()))
        })
        .filter_map(|target| target["name"].as_str())
        .collect();
    assert_eq!(
        binaries,
        ["valet"],
        "binaries that `cargo run` chooses from"
    );
}
