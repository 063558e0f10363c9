//! The real `valet` binary: `keys` subcommands and `serve`, each test on its own SQLite file.
//!
//! `secrets.rs` uses the helpers here: `Store`, `Server`, `find_keys`, `secret_of` and
//! `with_wrong_secret`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::helpers::{Backend, KEY_FIELDS, spawn_app};
use crate::process::{
    Server, Store, assemble_key, assert_success, find_keys, secret_of, stderr_of, stdout_of,
    with_wrong_secret,
};

/// Exit code of a command that failed.
const EXIT_FAILURE: i32 = 1;
/// Exit code clap uses for a command line it cannot parse.
const EXIT_USAGE: i32 = 2;
/// Exit code of `keys verify` for a key that is not valid.
const EXIT_KEY_INVALID: i32 = 3;
fn field_names(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn id_of(key: &Value) -> &str {
    key["id"].as_str().expect("key object has an id")
}

fn raw_of(created: &Value) -> &str {
    created["key"].as_str().expect("create output has a key")
}

#[tokio::test]
async fn keys_create_json_matches_http_shape() {
    let store = Store::new();
    let created = store.create(
        "billing worker",
        &[
            "--scope",
            "a",
            "--scope",
            "b",
            "--owner",
            "o",
            "--metadata",
            r#"{"k":1}"#,
        ],
    );

    let app = spawn_app(Backend::Sqlite).await;
    let over_http = app
        .create_key(json!({
            "name": "billing worker",
            "scopes": ["a", "b"],
            "owner": "o",
            "metadata": {"k": 1},
        }))
        .await;
    let mut expected: BTreeSet<String> = KEY_FIELDS.iter().map(|f| f.to_string()).collect();
    expected.insert("key".into());
    assert_eq!(field_names(&created), expected, "CLI create fields");
    assert_eq!(field_names(&over_http), expected, "HTTP create fields");

    assert_eq!(created["name"], "billing worker", "name");
    assert_eq!(created["owner"], "o", "owner");
    assert_eq!(created["scopes"], json!(["a", "b"]), "scopes");
    assert_eq!(created["env"], "live", "env");
    assert_eq!(created["metadata"], json!({"k": 1}), "metadata");
    assert!(created["created_at"].is_string(), "created_at is set");
    for field in ["expires_at", "revoked_at", "last_used_at", "successor_id"] {
        assert!(created[field].is_null(), "{field} is null on a new key");
    }
    let id = id_of(&created);
    assert_eq!(id.len(), 8, "id length");
    let key = raw_of(&created);
    assert!(
        key.starts_with(&format!("vk_live_{id}_")),
        "key {key:?} starts with the prefix, env and id"
    );
    assert_eq!(secret_of(key).len(), 43, "secret length");
}

#[test]
fn keys_create_table_shows_key_once() {
    let store = Store::new();

    let output = store.run(&[
        "keys", "create", "--name", "reports", "--scope", "r", "--env", "test",
    ]);

    assert_success(&output, "keys create");
    let stdout = stdout_of(&output);
    let keys = find_keys(&stdout, "vk_test_");
    assert_eq!(keys.len(), 1, "one test key on stdout:\n{stdout}");
    let key_line = format!("key           {}", keys[0]);
    assert!(
        stdout.lines().any(|line| line == key_line),
        "key line in:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|line| line == "env           test"),
        "env line in:\n{stdout}"
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("This is the only time the key is shown"),
        "warning on stderr:\n{stderr}"
    );
}

#[test]
fn keys_list_table_has_rows() {
    let store = Store::new();
    let first = store.create("alpha", &["--scope", "read", "--owner", "acme"]);
    let second = store.create("beta", &["--scope", "read,write"]);

    let output = store.run(&["keys", "list"]);

    assert_success(&output, "keys list");
    let stdout = stdout_of(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows:\n{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "NAME", "OWNER", "ENV", "SCOPES", "STATUS", "CREATED"],
        "header"
    );
    assert!(
        lines[1].starts_with(id_of(&second)),
        "newest key first:\n{stdout}"
    );
    assert!(
        lines[2].starts_with(id_of(&first)),
        "oldest key last:\n{stdout}"
    );
    for expected in ["beta", "-", "live", "read write", "active"] {
        assert!(
            lines[1].contains(expected),
            "{expected:?} in {:?}",
            lines[1]
        );
    }
    for expected in ["alpha", "acme", "live", "read", "active"] {
        assert!(
            lines[2].contains(expected),
            "{expected:?} in {:?}",
            lines[2]
        );
    }
    assert!(
        !stderr_of(&output).contains("more keys follow"),
        "no cursor hint for a single page"
    );
}

#[test]
fn keys_list_json_filters_by_owner() {
    let store = Store::new();
    let first = store.create("one", &["--owner", "acme"]);
    store.create("two", &["--owner", "globex"]);
    let third = store.create("three", &["--owner", "acme"]);

    let page = store.json(&["keys", "list", "--owner", "acme", "--json"]);

    assert_eq!(
        field_names(&page),
        BTreeSet::from(["keys".to_owned(), "next_cursor".to_owned()]),
        "list fields"
    );
    let keys = page["keys"].as_array().expect("keys array");
    let ids: Vec<&str> = keys.iter().map(id_of).collect();
    assert_eq!(
        ids,
        [id_of(&third), id_of(&first)],
        "acme keys, newest first"
    );
    for key in keys {
        let expected: BTreeSet<String> = KEY_FIELDS.iter().map(|f| f.to_string()).collect();
        assert_eq!(field_names(key), expected, "listed key has no raw key");
    }
    assert!(page["next_cursor"].is_null(), "single page has no cursor");
}

#[test]
fn keys_list_pages_with_cursor() {
    let store = Store::new();
    let mut created: Vec<String> = (0..5)
        .map(|n| id_of(&store.create(&format!("key {n}"), &[])).to_owned())
        .collect();
    created.reverse();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0..3 {
        let mut args = vec!["keys", "list", "--limit", "2", "--json"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let page = store.json(&args);
        let keys = page["keys"].as_array().expect("keys array");
        let expected_len = if page_number < 2 { 2 } else { 1 };
        assert_eq!(keys.len(), expected_len, "keys on page {page_number}");
        seen.extend(keys.iter().map(|key| id_of(key).to_owned()));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        assert_eq!(
            cursor.is_some(),
            page_number < 2,
            "next_cursor on page {page_number}"
        );
    }
    assert_eq!(seen, created, "every key once, newest first");

    let output = store.run(&["keys", "list", "--limit", "2"]);
    assert_success(&output, "keys list --limit 2");
    assert!(
        stderr_of(&output).contains("more keys follow: pass --cursor "),
        "cursor hint on stderr:\n{}",
        stderr_of(&output)
    );
}

#[test]
fn keys_show_prints_one_key() {
    let store = Store::new();
    let created = store.create(
        "show target",
        &["--scope", "s", "--metadata", r#"{"a":"b"}"#],
    );
    let id = id_of(&created);

    let fetched = store.json(&["keys", "show", id, "--json"]);

    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("key");
    assert_eq!(
        fetched, expected,
        "show --json equals create without the key"
    );

    let output = store.run(&["keys", "show", id]);
    assert_success(&output, "keys show");
    let stdout = stdout_of(&output);
    for line in [
        format!("id            {id}"),
        "name          show target".to_owned(),
        "status        active".to_owned(),
        r#"metadata      {"a":"b"}"#.to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }
    assert!(
        find_keys(&stdout, "vk_").is_empty(),
        "show prints no raw key"
    );
}

#[test]
fn keys_update_changes_each_field() {
    let store = Store::new();
    let created = store.create("before", &["--scope", "old", "--owner", "acme"]);
    let id = id_of(&created);

    let updated = store.json(&[
        "keys",
        "update",
        id,
        "--name",
        "after",
        "--owner",
        "globex",
        "--scope",
        "new1",
        "--scope",
        "new2",
        "--metadata",
        r#"{"tier":"gold"}"#,
        "--json",
    ]);

    assert_eq!(updated["name"], "after", "name");
    assert_eq!(updated["owner"], "globex", "owner");
    assert_eq!(updated["scopes"], json!(["new1", "new2"]), "scopes");
    assert_eq!(updated["metadata"], json!({"tier": "gold"}), "metadata");
    assert_eq!(
        updated["created_at"], created["created_at"],
        "created_at kept"
    );

    let cleared = store.json(&["keys", "update", id, "--clear-owner", "--json"]);
    assert!(cleared["owner"].is_null(), "owner cleared");
    assert_eq!(cleared["name"], "after", "name kept by --clear-owner");

    let fetched = store.json(&["keys", "show", id, "--json"]);
    assert_eq!(fetched, cleared, "update is stored");

    let conflicting = store.run(&["keys", "update", id, "--owner", "x", "--clear-owner"]);
    assert_eq!(
        conflicting.status.code(),
        Some(EXIT_USAGE),
        "--owner with --clear-owner"
    );
    assert!(
        stderr_of(&conflicting).contains("cannot be used with"),
        "conflict message:\n{}",
        stderr_of(&conflicting)
    );
}

#[test]
fn keys_roll_json_links_previous() {
    let store = Store::new();
    let created = store.create("rolled", &["--scope", "s", "--owner", "acme"]);
    let id = id_of(&created);

    let rolled = store.json(&["keys", "roll", id, "--grace-period-seconds", "60", "--json"]);

    let successor_id = id_of(&rolled);
    assert_ne!(successor_id, id, "successor has a new id");
    assert!(
        raw_of(&rolled).starts_with(&format!("vk_live_{successor_id}_")),
        "successor key"
    );
    assert_eq!(rolled["name"], "rolled", "successor keeps the name");
    assert_eq!(rolled["owner"], "acme", "successor keeps the owner");
    assert_eq!(rolled["scopes"], json!(["s"]), "successor keeps the scopes");
    let previous = &rolled["previous"];
    assert_eq!(previous["id"], id, "previous id");
    assert_eq!(
        previous["successor_id"], successor_id,
        "previous successor_id"
    );
    assert!(previous["expires_at"].is_string(), "previous expires_at");
    assert!(previous.get("key").is_none(), "previous carries no raw key");

    let old = store.run(&["keys", "verify", raw_of(&created)]);
    assert_eq!(
        old.status.code(),
        Some(0),
        "old key valid in its grace period"
    );
    let new = store.run(&["keys", "verify", raw_of(&rolled)]);
    assert_eq!(new.status.code(), Some(0), "successor valid");
}

#[test]
fn keys_roll_twice_fails() {
    let store = Store::new();
    let id = id_of(&store.create("once", &[])).to_owned();
    let rolled = store.json(&["keys", "roll", &id, "--json"]);

    let again = store.run(&["keys", "roll", &id]);

    assert_eq!(
        again.status.code(),
        Some(EXIT_FAILURE),
        "second roll exit code"
    );
    let stderr = stderr_of(&again);
    assert!(
        stderr.contains(&format!("error: key {id} was already rolled")),
        "already rolled message:\n{stderr}"
    );
    assert!(
        stderr.contains(id_of(&rolled)),
        "message names the successor:\n{stderr}"
    );
    assert!(stdout_of(&again).is_empty(), "nothing on stdout");
}

#[test]
fn keys_roll_table_reports_grace() {
    let store = Store::new();
    let id = id_of(&store.create("table roll", &[])).to_owned();

    let output = store.run(&["keys", "roll", &id, "--grace-period-seconds", "0"]);

    assert_success(&output, "keys roll");
    let keys = find_keys(&stdout_of(&output), "vk_live_");
    assert_eq!(keys.len(), 1, "successor key printed once");
    assert!(
        stderr_of(&output).contains(&format!("previous key {id} stays valid until ")),
        "grace message:\n{}",
        stderr_of(&output)
    );
}

#[test]
fn keys_revoke_is_idempotent() {
    let store = Store::new();
    let id = id_of(&store.create("revoked", &[])).to_owned();

    let first = store.json(&["keys", "revoke", &id, "--json"]);
    let second = store.json(&["keys", "revoke", &id, "--json"]);

    assert!(first["revoked_at"].is_string(), "revoked_at set");
    assert_eq!(
        second["revoked_at"], first["revoked_at"],
        "second revoke keeps the first time"
    );
    let output = store.run(&["keys", "show", &id]);
    assert!(
        stdout_of(&output)
            .lines()
            .any(|line| line == "status        revoked"),
        "status revoked:\n{}",
        stdout_of(&output)
    );
}

#[test]
fn keys_verify_reads_standard_input() {
    let store = Store::new();
    let created = store.create("stdin", &["--scope", "read"]);
    let key = raw_of(&created);

    let output = store.run_with_input(&["keys", "verify", "--scope", "read"], &format!("{key}\n"));

    assert_eq!(output.status.code(), Some(0), "exit code for VALID");
    let stdout = stdout_of(&output);
    assert_eq!(
        stdout.lines().next(),
        Some("VALID"),
        "first line:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("id            {}", id_of(&created))),
        "key detail:\n{stdout}"
    );
    assert!(!stdout.contains(key), "verify never prints the key");
    assert!(
        !stderr_of(&output).contains(key),
        "verify never logs the key"
    );

    let fetched = store.json(&["keys", "show", id_of(&created), "--json"]);
    assert!(
        fetched["last_used_at"].is_null(),
        "an operator's check is not a use of the key"
    );
}

#[test]
fn keys_verify_json_from_argument() {
    let store = Store::new();
    let created = store.create("argument", &["--scope", "read,write"]);

    let verification = store.json(&[
        "keys",
        "verify",
        raw_of(&created),
        "--scope",
        "write",
        "--json",
    ]);

    assert_eq!(verification["valid"], true, "valid");
    assert_eq!(verification["code"], "VALID", "code");
    assert_eq!(verification["key"]["id"], created["id"], "key id");
    assert!(
        verification.get("message").is_none(),
        "no message when valid"
    );
}

#[test]
fn keys_verify_invalid_exits_three() {
    let store = Store::new();
    let live = store.create("live", &["--scope", "read"]);
    let revoked = store.create("revoked", &[]);
    store.json(&["keys", "revoke", id_of(&revoked), "--json"]);
    let expired = store.create("expired", &[]);
    store.json(&[
        "keys",
        "roll",
        id_of(&expired),
        "--grace-period-seconds",
        "0",
        "--json",
    ]);
    let live_key = raw_of(&live);
    let mut mistyped = live_key.to_owned();
    let last = mistyped.pop().expect("non-empty key");
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    let unknown_id = assemble_key("live", "ZZZZZZZZ", &"A".repeat(43));

    let cases: [(&str, String, &[&str], &str); 7] = [
        ("MALFORMED", "not-a-key".into(), &[], "separated by `_`"),
        ("MALFORMED", mistyped, &[], "checksum does not match"),
        (
            "NOT_FOUND",
            with_wrong_secret(live_key),
            &[],
            "no key matches",
        ),
        ("NOT_FOUND", unknown_id, &[], "no key matches"),
        (
            "REVOKED",
            raw_of(&revoked).into(),
            &[],
            "key was revoked at",
        ),
        ("EXPIRED", raw_of(&expired).into(), &[], "key expired at"),
        (
            "INSUFFICIENT_SCOPE",
            live_key.into(),
            &["--scope", "read", "--scope", "admin"],
            "lacks the required scope `admin`",
        ),
    ];
    for (code, key, scopes, message) in cases {
        let mut args = vec!["keys", "verify"];
        args.extend_from_slice(scopes);
        let output = store.run_with_input(&args, &key);
        assert_eq!(
            output.status.code(),
            Some(EXIT_KEY_INVALID),
            "exit code for {code} ({message})"
        );
        let stdout = stdout_of(&output);
        assert_eq!(stdout.lines().next(), Some(code), "code line for {message}");
        let stderr = stderr_of(&output);
        assert!(stderr.contains(message), "{message:?} on stderr:\n{stderr}");
        assert!(!stderr.contains(&key), "stderr never repeats the key");

        args.push("--json");
        let output = store.run_with_input(&args, &key);
        assert_eq!(
            output.status.code(),
            Some(EXIT_KEY_INVALID),
            "--json exit code for {code} ({message})"
        );
        let verification: Value = serde_json::from_slice(&output.stdout).expect("verify JSON");
        assert_eq!(verification["code"], code, "JSON code for {message}");
        assert_eq!(verification["valid"], false, "JSON valid for {message}");
    }
}

#[test]
fn keys_bad_input_fails_cleanly() {
    let store = Store::new();
    let id = id_of(&store.create("target", &[])).to_owned();

    let cases: [(&[&str], i32, &str); 13] = [
        (&["keys", "show", "abc"], EXIT_FAILURE, "invalid key id"),
        (
            &["keys", "revoke", "abc!defg"],
            EXIT_FAILURE,
            "invalid key id",
        ),
        (
            &["keys", "show", "ZZZZZZZZ"],
            EXIT_FAILURE,
            "key ZZZZZZZZ not found",
        ),
        (
            &["keys", "create", "--name", "n", "--metadata", "{not json"],
            EXIT_FAILURE,
            "--metadata is not valid JSON",
        ),
        (
            &["keys", "create", "--name", "n", "--metadata", "[1]"],
            EXIT_FAILURE,
            "must be a JSON object",
        ),
        (
            &["keys", "create", "--name", "n", "--env", "prod"],
            EXIT_USAGE,
            "use `live` or `test`",
        ),
        (
            &["keys", "create", "--name", "n", "--expires-at", "tomorrow"],
            EXIT_USAGE,
            "not an RFC 3339 timestamp",
        ),
        (
            &[
                "keys",
                "create",
                "--name",
                "n",
                "--expires-at",
                "2000-01-01T00:00:00Z",
            ],
            EXIT_FAILURE,
            "invalid `expires_at`: must be in the future",
        ),
        (
            &["keys", "create", "--name", "n", "--scope", "has space"],
            EXIT_FAILURE,
            "invalid `scope`",
        ),
        (
            &["keys", "roll", &id, "--grace-period-seconds", "999999"],
            EXIT_FAILURE,
            "invalid `grace_period_seconds`: must be between 0 and 604800 seconds",
        ),
        (
            &["keys", "roll", &id, "--grace-period-seconds=-1"],
            EXIT_FAILURE,
            "invalid `grace_period_seconds`",
        ),
        (&["keys", "update", &id], EXIT_FAILURE, "nothing to update"),
        (
            &["keys", "list", "--cursor", "garbage"],
            EXIT_FAILURE,
            "--cursor is not a cursor Valet wrote",
        ),
    ];
    for (args, code, message) in cases {
        let command = args.join(" ");
        let output = store.run(args);
        assert_eq!(output.status.code(), Some(code), "exit code of `{command}`");
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(message),
            "`{command}`: {message:?} on stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "`{command}` panicked:\n{stderr}"
        );
        assert!(
            stdout_of(&output).is_empty(),
            "`{command}` printed to stdout"
        );
    }

    let fetched = store.json(&["keys", "show", &id, "--json"]);
    assert!(
        fetched["successor_id"].is_null(),
        "failed rolls changed nothing"
    );
}

#[test]
fn keys_rejects_unsupported_database_url() {
    let store = Store::new();

    let output = store
        .bare_command()
        .args(["--database-url", "valet.db", "keys", "list"])
        .stdin(Stdio::null())
        .output()
        .expect("run valet");

    assert_eq!(output.status.code(), Some(EXIT_FAILURE), "exit code");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("could not open the store"),
        "says what failed:\n{stderr}"
    );
    assert!(
        stderr.contains("scheme `valet.db` is not supported"),
        "names the value:\n{stderr}"
    );
    assert!(
        stderr.contains("use sqlite://PATH"),
        "says what to use:\n{stderr}"
    );
}

#[tokio::test]
async fn serve_bootstraps_one_admin_key() {
    let store = Store::new();
    let mut server = Server::start(&store, "info").await;

    let stdout = server.stdout();
    let keys = find_keys(&stdout, "vk_live_");
    assert_eq!(keys.len(), 1, "one bootstrap key on stdout:\n{stdout}");
    let admin_key = &keys[0];
    assert!(
        !server.stderr().contains(admin_key.as_str()),
        "bootstrap key is not logged"
    );

    let client = reqwest::Client::new();
    let listed = client
        .get(format!("{}/v1/keys", server.address))
        .bearer_auth(admin_key)
        .send()
        .await
        .expect("GET /v1/keys");
    assert_eq!(listed.status(), 200, "bootstrap key lists keys");
    let page: Value = listed.json().await.expect("list JSON");
    let listed_keys = page["keys"].as_array().expect("keys array");
    assert_eq!(
        listed_keys.len(),
        1,
        "the store holds the bootstrap key only"
    );
    let admin_id = id_of(&listed_keys[0]).to_owned();
    assert_eq!(listed_keys[0]["scopes"], json!(["admin"]), "admin scope");
    assert!(
        admin_key.starts_with(&format!("vk_live_{admin_id}_")),
        "printed key matches the stored id"
    );
    assert!(
        stdout.contains(&format!("Key id: {admin_id}")),
        "stdout names the key id"
    );
    let anonymous = client
        .get(format!("{}/v1/keys", server.address))
        .send()
        .await
        .expect("GET /v1/keys without a key");
    assert_eq!(anonymous.status(), 401, "no key, no list");

    let status = server.stop().await;
    assert_eq!(status.code(), Some(0), "first server exit code");
    assert!(
        server.stderr().contains("valet stopped"),
        "stop logged:\n{}",
        server.stderr()
    );
    let fetched = store.json(&["keys", "show", &admin_id, "--json"]);
    assert!(
        fetched["last_used_at"].is_string(),
        "shutdown wrote last_used_at of the admin key"
    );

    let mut second = Server::start(&store, "info").await;
    let reused = client
        .get(format!("{}/v1/keys", second.address))
        .bearer_auth(admin_key)
        .send()
        .await
        .expect("GET /v1/keys on the second server");
    assert_eq!(reused.status(), 200, "bootstrap key works after a restart");
    let status = second.stop().await;
    assert_eq!(status.code(), Some(0), "second server exit code");
    let second_stdout = second.stdout();
    assert!(
        find_keys(&second_stdout, "vk_").is_empty(),
        "second start prints no key:\n{second_stdout}"
    );
    assert!(
        second.stderr().contains("valet stopped"),
        "second stop logged:\n{}",
        second.stderr()
    );
}

#[test]
fn serve_rejects_busy_listen_address() {
    let store = Store::new();
    let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    let address = busy.local_addr().expect("local address").to_string();

    let output = store.run(&["serve", "--listen", &address]);

    assert_eq!(output.status.code(), Some(EXIT_FAILURE), "exit code");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("could not listen on {address}")),
        "names the address:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic:\n{stderr}");
}
