//! The real `valet` binary: `clients` subcommands on their own SQLite file, and a running
//! server that accepts the clients and secrets they create.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::{Claims, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, KEY_FIELDS, spawn_app};
use crate::process::{Server, Store, assert_success, find_keys, stderr_of, stdout_of};

/// Exit code of a command that failed.
const EXIT_FAILURE: i32 = 1;
/// Exit code clap uses for a command line it cannot parse.
const EXIT_USAGE: i32 = 2;
/// Fields of a client object, in the HTTP API and in `--json` output alike.
const CLIENT_FIELDS: [&str; 10] = [
    "client_id",
    "name",
    "owner",
    "scopes",
    "audiences",
    "default_audience",
    "token_lifetime_seconds",
    "jwks",
    "created_at",
    "client_id_issued_at",
];
/// Fields of a secret object, as `add-secret` prints it and `create` adds to the client.
const SECRET_FIELDS: [&str; 3] = [
    "client_secret",
    "client_secret_key_id",
    "client_secret_expires_at",
];
const AUDIENCE: &str = "https://orders.example";
const OTHER_AUDIENCE: &str = "https://other.example";
/// Maximum wait for a running server to see a change that the CLI wrote to the store.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

fn field_names(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn names(fields: &[&str]) -> BTreeSet<String> {
    fields.iter().map(|field| field.to_string()).collect()
}

fn client_id_of(client: &Value) -> &str {
    client["client_id"]
        .as_str()
        .expect("client object has a client_id")
}

fn secret_of(created: &Value) -> &str {
    created["client_secret"]
        .as_str()
        .expect("output has a client_secret")
}

fn secret_key_id_of(created: &Value) -> &str {
    created["client_secret_key_id"]
        .as_str()
        .expect("output has a client_secret_key_id")
}

/// Creates a client with `valet clients create --json --name NAME EXTRA` and returns it.
fn create_client(store: &Store, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["clients", "create", "--json", "--name", name];
    args.extend_from_slice(extra);
    store.json(&args)
}

/// Creates a client that can get a token without naming its audience.
fn create_token_client(store: &Store) -> Value {
    create_client(
        store,
        "billing worker",
        &[
            "--scope",
            "orders:read,orders:write",
            "--audience",
            AUDIENCE,
            "--default-audience",
            AUDIENCE,
            "--token-lifetime-seconds",
            "600",
        ],
    )
}

/// Sends `grant_type=client_credentials` with HTTP Basic and returns status and JSON body.
async fn request_token(server: &Server, client_id: &str, secret: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/oauth/token", server.address))
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token request sent");
    let status = response.status().as_u16();
    let body = response.json().await.expect("token response is JSON");
    (status, body)
}

/// Repeats the token request until it returns `status`, because a running server receives
/// changes from another process through its change feed, a moment later.
async fn wait_for_token_status(
    server: &Server,
    client_id: &str,
    secret: &str,
    status: u16,
) -> Value {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        let (got, body) = request_token(server, client_id, secret).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "token request still returns {got}, not {status}, after {PROPAGATION_LIMIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generates an ES256 key pair with `kid` and returns it with its public JWK set as JSON.
fn client_key(kid: &str) -> (ES256KeyPair, String) {
    let key = ES256KeyPair::generate().with_key_id(kid);
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let jwks = json!({"keys": [{
        "kty": "EC",
        "crv": "P-256",
        "kid": kid,
        "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    (key, jwks.to_string())
}

fn assert_line(stdout: &str, line: &str) {
    assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
}

fn assert_secret_warning(output: &Output) {
    let stderr = stderr_of(output);
    assert!(
        stderr.contains("This is the only time the client secret is shown"),
        "warning on stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("valet keys roll KEY_ID"),
        "stderr says how to roll the secret:\n{stderr}"
    );
}

#[tokio::test]
async fn clients_create_json_matches_http_shape() {
    let store = Store::new();
    let (_, jwks) = client_key("client-key-1");
    let created = create_client(
        &store,
        "billing worker",
        &[
            "--scope",
            "orders:read",
            "--scope",
            "orders:write",
            "--owner",
            "acme",
            "--audience",
            AUDIENCE,
            "--audience",
            OTHER_AUDIENCE,
            "--default-audience",
            AUDIENCE,
            "--token-lifetime-seconds",
            "600",
            "--jwks",
            &jwks,
        ],
    );

    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .admin(
            Method::POST,
            "/v1/clients",
            Some(json!({
                "name": "billing worker",
                "scopes": ["orders:read", "orders:write"],
                "owner": "acme",
                "audiences": [AUDIENCE, OTHER_AUDIENCE],
                "default_audience": AUDIENCE,
                "token_lifetime_seconds": 600,
                "jwks": serde_json::from_str::<Value>(&jwks).unwrap(),
            })),
        )
        .await;
    assert_eq!(response.status(), 201, "HTTP create");
    let over_http: Value = response.json().await.expect("HTTP create JSON");

    let mut expected = names(&CLIENT_FIELDS);
    expected.extend(names(&SECRET_FIELDS));
    assert_eq!(field_names(&created), expected, "CLI create fields");
    assert_eq!(field_names(&over_http), expected, "HTTP create fields");
    for field in [
        "name",
        "owner",
        "scopes",
        "audiences",
        "default_audience",
        "token_lifetime_seconds",
        "jwks",
        "client_secret_expires_at",
    ] {
        assert_eq!(created[field], over_http[field], "{field} in CLI and HTTP");
    }
    assert_eq!(created["name"], "billing worker", "name");
    assert_eq!(created["owner"], "acme", "owner");
    assert_eq!(
        created["scopes"],
        json!(["orders:read", "orders:write"]),
        "scopes"
    );
    assert_eq!(
        created["audiences"],
        json!([AUDIENCE, OTHER_AUDIENCE]),
        "audiences"
    );
    assert_eq!(created["default_audience"], AUDIENCE, "default_audience");
    assert_eq!(created["token_lifetime_seconds"], 600, "lifetime");
    assert_eq!(
        created["jwks"],
        serde_json::from_str::<Value>(&jwks).unwrap(),
        "jwks"
    );
    assert_eq!(created["client_secret_expires_at"], 0, "no secret expiry");
    assert!(created["created_at"].is_string(), "created_at is set");
    assert!(
        created["client_id_issued_at"].is_i64(),
        "client_id_issued_at is Unix seconds"
    );

    let client_id = client_id_of(&created);
    assert_eq!(client_id.len(), 16, "client id length");
    assert!(
        client_id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "client id {client_id:?} is letters and digits"
    );
    let key_id = secret_key_id_of(&created);
    assert!(
        secret_of(&created).starts_with(&format!("vk_live_{key_id}_")),
        "the secret is the API key {key_id}"
    );
    let key = store.json(&["keys", "show", key_id, "--json"]);
    assert_eq!(field_names(&key), names(&KEY_FIELDS), "secret key fields");
    assert_eq!(
        key["client_id"], client_id,
        "secret key is bound to the client"
    );
}

#[test]
fn clients_create_applies_defaults() {
    let store = Store::new();

    let created = create_client(&store, "bare", &[]);

    assert_eq!(created["token_lifetime_seconds"], 900, "default lifetime");
    assert_eq!(created["scopes"], json!([]), "no scopes");
    assert_eq!(created["audiences"], json!([]), "no audiences");
    assert!(created["owner"].is_null(), "no owner");
    assert!(created["default_audience"].is_null(), "no default audience");
    assert!(created["jwks"].is_null(), "no JWK set");
}

#[test]
fn clients_create_table_shows_secret_once() {
    let store = Store::new();

    let output = store.run(&[
        "clients",
        "create",
        "--name",
        "reports",
        "--scope",
        "reports:read",
        "--audience",
        AUDIENCE,
    ]);

    assert_success(&output, "clients create");
    let stdout = stdout_of(&output);
    let secrets = find_keys(&stdout, "vk_live_");
    assert_eq!(secrets.len(), 1, "one secret on stdout:\n{stdout}");
    let secret_line = stdout.lines().last().expect("output has lines");
    assert!(
        secret_line.starts_with("client_secret ") && secret_line.ends_with(&secrets[0]),
        "the secret is the last line:\n{stdout}"
    );
    for line in [
        "name                     reports",
        "owner                    -",
        "scopes                   reports:read",
        "audiences                https://orders.example",
        "default_audience         -",
        "token_lifetime_seconds   900",
        "jwks                     -",
        "client_secret_expires_at -",
    ] {
        assert_line(&stdout, line);
    }
    assert!(
        stdout.lines().any(|line| line.starts_with("client_id ")),
        "client id line in:\n{stdout}"
    );
    assert_secret_warning(&output);
}

#[test]
fn clients_list_table_has_rows() {
    let store = Store::new();
    let first = create_client(
        &store,
        "alpha",
        &["--scope", "read", "--owner", "acme", "--audience", AUDIENCE],
    );
    let second = create_client(&store, "beta", &["--token-lifetime-seconds", "60"]);

    let output = store.run(&["clients", "list"]);

    assert_success(&output, "clients list");
    let stdout = stdout_of(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows:\n{stdout}");
    assert_eq!(
        lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect::<Vec<_>>(),
        [
            "CLIENT ID",
            "NAME",
            "OWNER",
            "SCOPES",
            "AUDIENCES",
            "LIFETIME",
            "CREATED"
        ],
        "header"
    );
    assert!(
        lines[1].starts_with(client_id_of(&second)),
        "newest client first:\n{stdout}"
    );
    assert!(
        lines[2].starts_with(client_id_of(&first)),
        "oldest client last:\n{stdout}"
    );
    let beta: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&beta[1..6], ["beta", "-", "-", "-", "60"], "beta row");
    let alpha: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        &alpha[1..6],
        ["alpha", "acme", "read", AUDIENCE, "900"],
        "alpha row"
    );
    assert!(
        find_keys(&stdout, "vk_").is_empty(),
        "list prints no secret"
    );
    assert!(
        !stderr_of(&output).contains("more clients follow"),
        "no cursor hint for a single page"
    );
}

#[test]
fn clients_list_pages_with_cursor() {
    let store = Store::new();
    let mut created: Vec<String> = (0..3)
        .map(|n| client_id_of(&create_client(&store, &format!("client {n}"), &[])).to_owned())
        .collect();
    created.reverse();

    let first = store.json(&["clients", "list", "--limit", "2", "--json"]);
    assert_eq!(
        field_names(&first),
        names(&["clients", "next_cursor"]),
        "list fields"
    );
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a full page has a next_cursor");
    let second = store.json(&[
        "clients", "list", "--limit", "2", "--cursor", cursor, "--json",
    ]);
    assert!(
        second["next_cursor"].is_null(),
        "the last page has no cursor"
    );

    let mut seen = Vec::new();
    for page in [&first, &second] {
        for client in page["clients"].as_array().expect("clients array") {
            assert_eq!(
                field_names(client),
                names(&CLIENT_FIELDS),
                "listed client has no secret"
            );
            seen.push(client_id_of(client).to_owned());
        }
    }
    assert_eq!(seen, created, "every client once, newest first");

    let output = store.run(&["clients", "list", "--limit", "2"]);
    assert_success(&output, "clients list --limit 2");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("more clients follow: pass --cursor {cursor}")),
        "cursor hint on stderr:\n{stderr}"
    );
}

#[test]
fn clients_show_matches_create() {
    let store = Store::new();
    let (_, jwks) = client_key("show-key");
    let created = create_client(
        &store,
        "show target",
        &[
            "--scope",
            "s1,s2",
            "--audience",
            AUDIENCE,
            "--default-audience",
            AUDIENCE,
            "--jwks",
            &jwks,
        ],
    );
    let id = client_id_of(&created);

    let shown = store.json(&["clients", "show", id, "--json"]);

    let mut expected = created.clone();
    for field in SECRET_FIELDS {
        expected.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(
        shown, expected,
        "show --json equals create without the secret"
    );

    let output = store.run(&["clients", "show", id]);
    assert_success(&output, "clients show");
    let stdout = stdout_of(&output);
    for line in [
        format!("client_id              {id}"),
        "name                   show target".to_owned(),
        "owner                  -".to_owned(),
        "scopes                 s1 s2".to_owned(),
        format!("audiences              {AUDIENCE}"),
        format!("default_audience       {AUDIENCE}"),
        "token_lifetime_seconds 900".to_owned(),
        "jwks                   1 key: show-key".to_owned(),
    ] {
        assert_line(&stdout, &line);
    }
    assert!(
        find_keys(&stdout, "vk_").is_empty(),
        "show prints no secret"
    );
}

#[test]
fn clients_update_changes_each_field() {
    let store = Store::new();
    let (_, jwks) = client_key("update-key");
    let created = create_client(
        &store,
        "before",
        &[
            "--scope",
            "old",
            "--owner",
            "acme",
            "--audience",
            AUDIENCE,
            "--default-audience",
            AUDIENCE,
        ],
    );
    let id = client_id_of(&created);

    let updated = store.json(&[
        "clients",
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
        "--audience",
        OTHER_AUDIENCE,
        "--audience",
        AUDIENCE,
        "--default-audience",
        OTHER_AUDIENCE,
        "--token-lifetime-seconds",
        "120",
        "--jwks",
        &jwks,
        "--json",
    ]);

    assert_eq!(
        field_names(&updated),
        names(&CLIENT_FIELDS),
        "update fields"
    );
    assert_eq!(updated["client_id"], id, "client id kept");
    assert_eq!(updated["name"], "after", "name");
    assert_eq!(updated["owner"], "globex", "owner");
    assert_eq!(updated["scopes"], json!(["new1", "new2"]), "scopes");
    assert_eq!(
        updated["audiences"],
        json!([OTHER_AUDIENCE, AUDIENCE]),
        "audiences replaced as a whole"
    );
    assert_eq!(
        updated["default_audience"], OTHER_AUDIENCE,
        "default audience"
    );
    assert_eq!(updated["token_lifetime_seconds"], 120, "lifetime");
    assert_eq!(
        updated["jwks"]["keys"][0]["kid"], "update-key",
        "JWK set registered"
    );
    assert_eq!(
        updated["created_at"], created["created_at"],
        "created_at kept"
    );

    let cleared = store.json(&[
        "clients",
        "update",
        id,
        "--clear-owner",
        "--clear-default-audience",
        "--clear-jwks",
        "--json",
    ]);
    assert!(cleared["owner"].is_null(), "owner cleared");
    assert!(cleared["jwks"].is_null(), "JWK set cleared");
    assert!(
        cleared["default_audience"].is_null(),
        "default audience cleared"
    );
    assert_eq!(cleared["name"], "after", "name kept by the clear options");
    assert_eq!(
        cleared["audiences"], updated["audiences"],
        "audiences kept by the clear options"
    );

    let emptied = store.json(&[
        "clients",
        "update",
        id,
        "--clear-scopes",
        "--clear-audiences",
        "--json",
    ]);
    assert_eq!(emptied["scopes"], json!([]), "scopes cleared");
    assert_eq!(emptied["audiences"], json!([]), "audiences cleared");

    let shown = store.json(&["clients", "show", id, "--json"]);
    assert_eq!(shown, emptied, "update is stored");

    let output = store.run(&["clients", "update", id, "--name", "table"]);
    assert_success(&output, "clients update");
    assert_line(&stdout_of(&output), "name                   table");
}

#[test]
fn clients_update_conflicting_options_fail() {
    let store = Store::new();
    let id = client_id_of(&create_client(&store, "target", &[])).to_owned();

    for (set, clear) in [
        ("--owner=x", "--clear-owner"),
        ("--scope=x", "--clear-scopes"),
        ("--audience=x", "--clear-audiences"),
        ("--default-audience=x", "--clear-default-audience"),
        ("--jwks={}", "--clear-jwks"),
    ] {
        let output = store.run(&["clients", "update", &id, set, clear]);
        assert_eq!(
            output.status.code(),
            Some(EXIT_USAGE),
            "exit code of {set} with {clear}"
        );
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("cannot be used with"),
            "{set} with {clear}: conflict message:\n{stderr}"
        );
    }
}

#[test]
fn clients_add_secret_prints_secret_once() {
    let store = Store::new();
    let created = create_client(&store, "two secrets", &[]);
    let id = client_id_of(&created);

    let added = store.json(&[
        "clients",
        "add-secret",
        id,
        "--expires-at",
        "2099-01-31T00:00:00Z",
        "--json",
    ]);

    assert_eq!(
        field_names(&added),
        names(&SECRET_FIELDS),
        "add-secret fields"
    );
    assert_eq!(
        added["client_secret_expires_at"], 4_073_500_800_i64,
        "expiry as Unix seconds"
    );
    let key_id = secret_key_id_of(&added);
    assert_ne!(
        key_id,
        secret_key_id_of(&created),
        "the new secret is another key"
    );
    assert!(
        secret_of(&added).starts_with(&format!("vk_live_{key_id}_")),
        "the secret is the API key {key_id}"
    );
    let key = store.json(&["keys", "show", key_id, "--json"]);
    assert_eq!(key["client_id"], id, "new secret is bound to the client");
    assert_eq!(key["expires_at"], "2099-01-31T00:00:00Z", "key expiry");

    let output = store.run(&["clients", "add-secret", id]);
    assert_success(&output, "clients add-secret");
    let stdout = stdout_of(&output);
    let secrets = find_keys(&stdout, "vk_live_");
    assert_eq!(secrets.len(), 1, "one secret on stdout:\n{stdout}");
    assert_line(&stdout, &format!("client_id                {id}"));
    assert_line(&stdout, "client_secret_expires_at -");
    assert_line(&stdout, &format!("client_secret            {}", secrets[0]));
    assert_secret_warning(&output);
}

#[test]
fn clients_delete_revokes_every_secret() {
    let store = Store::new();
    let created = create_client(&store, "doomed", &["--scope", "s"]);
    let id = client_id_of(&created);
    let added = store.json(&["clients", "add-secret", id, "--json"]);
    let shown = store.json(&["clients", "show", id, "--json"]);

    let deleted = store.json(&["clients", "delete", id, "--json"]);

    assert_eq!(deleted, shown, "delete --json prints the client as it was");
    for key_id in [secret_key_id_of(&created), secret_key_id_of(&added)] {
        let key = store.json(&["keys", "show", key_id, "--json"]);
        assert!(
            key["revoked_at"].is_string(),
            "secret {key_id} is revoked: {key}"
        );
    }
    let again = store.run(&["clients", "delete", id]);
    assert_eq!(
        again.status.code(),
        Some(EXIT_FAILURE),
        "second delete exit code"
    );
    assert!(
        stderr_of(&again).contains(&format!("error: client {id} not found")),
        "not found message:\n{}",
        stderr_of(&again)
    );
    let show = store.run(&["clients", "show", id]);
    assert_eq!(show.status.code(), Some(EXIT_FAILURE), "show after delete");

    let other = client_id_of(&create_client(&store, "table delete", &[])).to_owned();
    let output = store.run(&["clients", "delete", &other]);
    assert_success(&output, "clients delete");
    assert_eq!(
        stdout_of(&output),
        format!("deleted client {other} (table delete); every secret of it is revoked\n"),
        "delete confirmation"
    );
}

#[tokio::test]
async fn cli_client_gets_token_from_server() {
    let store = Store::new();
    let created = create_token_client(&store);
    let id = client_id_of(&created).to_owned();
    let first_secret = secret_of(&created).to_owned();
    let server = Server::start(&store, "info").await;

    let (status, token) = request_token(&server, &id, &first_secret).await;
    assert_eq!(status, 200, "token for the CLI-created client: {token}");
    assert!(token["access_token"].is_string(), "access_token: {token}");
    assert_eq!(token["token_type"], "Bearer", "token_type: {token}");
    assert_eq!(token["expires_in"], 600, "expires_in: {token}");
    assert_eq!(token["scope"], "orders:read orders:write", "scope: {token}");

    // A secret added while the server runs works once the change feed has brought its id
    // into the server's filter of issued ids. Revoking it with `keys revoke` ends it
    // without touching the first secret.
    let added = store.json(&["clients", "add-secret", &id, "--json"]);
    let second_secret = secret_of(&added);
    let body = wait_for_token_status(&server, &id, second_secret, 200).await;
    assert!(
        body["access_token"].is_string(),
        "token for the added secret: {body}"
    );
    let revoked = store.json(&["keys", "revoke", secret_key_id_of(&added), "--json"]);
    assert!(
        revoked["revoked_at"].is_string(),
        "secret revoked: {revoked}"
    );
    let body = wait_for_token_status(&server, &id, second_secret, 401).await;
    assert_eq!(body["error"], "invalid_client", "revoked secret: {body}");
    let (status, body) = request_token(&server, &id, &first_secret).await;
    assert_eq!(status, 200, "the first secret still works: {body}");

    // An update from the CLI reaches the next token.
    store.json(&[
        "clients",
        "update",
        &id,
        "--scope",
        "orders:read",
        "--token-lifetime-seconds",
        "60",
        "--json",
    ]);
    // The server learns of the change through its change feed, within one poll.
    let deadline = Instant::now() + Duration::from_secs(2);
    let body = loop {
        let (status, body) = request_token(&server, &id, &first_secret).await;
        assert_eq!(status, 200, "token after update: {body}");
        if body["scope"] == "orders:read" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["scope"], "orders:read", "narrowed scope: {body}");
    assert_eq!(body["expires_in"], 60, "shorter lifetime: {body}");
}

#[tokio::test]
async fn clients_delete_ends_token_requests() {
    let store = Store::new();
    let created = create_token_client(&store);
    let id = client_id_of(&created).to_owned();
    let secret = secret_of(&created).to_owned();
    let server = Server::start(&store, "info").await;
    let (status, body) = request_token(&server, &id, &secret).await;
    assert_eq!(status, 200, "token before delete: {body}");

    let output = store.run(&["clients", "delete", &id]);
    assert_success(&output, "clients delete");

    let body = wait_for_token_status(&server, &id, &secret, 401).await;
    assert_eq!(body["error"], "invalid_client", "deleted client: {body}");
    assert!(
        !body.to_string().contains(&secret),
        "the error does not echo the secret: {body}"
    );
    let key = store.json(&["keys", "show", secret_key_id_of(&created), "--json"]);
    assert!(key["revoked_at"].is_string(), "secret revoked: {key}");
}

#[tokio::test]
async fn cli_jwks_client_gets_token() {
    let store = Store::new();
    let (key, jwks) = client_key("cli-key");
    let created = create_client(
        &store,
        "jwt client",
        &[
            "--scope",
            "orders:read",
            "--audience",
            AUDIENCE,
            "--default-audience",
            AUDIENCE,
            "--jwks",
            &jwks,
        ],
    );
    let id = client_id_of(&created);
    let server = Server::start(&store, "info").await;
    let token_url = format!("{}/oauth/token", server.address);
    let assertion = key
        .sign(
            Claims::create(jwt_simple::prelude::Duration::from_secs(60))
                .with_issuer(id)
                .with_subject(id)
                .with_audience(&token_url)
                .with_jwt_id("cli-jti-1"),
        )
        .expect("sign the client assertion");

    let response = reqwest::Client::new()
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion={assertion}"
        ))
        .send()
        .await
        .expect("token request sent");

    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("token response is JSON");
    assert_eq!(
        status, 200,
        "private_key_jwt with the CLI-registered key: {body}"
    );
    assert_eq!(body["scope"], "orders:read", "scope: {body}");
}

#[test]
fn clients_bad_input_fails_cleanly() {
    let store = Store::new();
    let created = create_client(&store, "target", &["--audience", AUDIENCE]);
    let id = client_id_of(&created).to_owned();
    let secret = secret_of(&created).to_owned();
    let too_many: Vec<String> = (0..33)
        .flat_map(|n| ["--audience".to_owned(), format!("https://a{n}.example")])
        .collect();
    let private_jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "private"
    }]})
    .to_string();
    let mut too_many_args = vec!["clients", "create", "--name", "n"];
    too_many_args.extend(too_many.iter().map(String::as_str));

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["clients", "show", "abc"],
            EXIT_FAILURE,
            "invalid client id `abc`: expected 16 letters and digits",
        ),
        (
            vec!["clients", "update", "abc!defghijklmno", "--name", "n"],
            EXIT_FAILURE,
            "invalid client id",
        ),
        (
            vec!["clients", "delete", "short"],
            EXIT_FAILURE,
            "invalid client id",
        ),
        (
            vec!["clients", "add-secret", "short"],
            EXIT_FAILURE,
            "invalid client id",
        ),
        (
            vec!["clients", "show", &secret],
            EXIT_FAILURE,
            "this looks like a client secret, so pass the client_id instead",
        ),
        (
            vec!["clients", "show", "AAAAAAAAAAAAAAAA"],
            EXIT_FAILURE,
            "client AAAAAAAAAAAAAAAA not found",
        ),
        (
            vec!["clients", "add-secret", "AAAAAAAAAAAAAAAA"],
            EXIT_FAILURE,
            "client AAAAAAAAAAAAAAAA not found",
        ),
        (
            vec![
                "clients",
                "create",
                "--name",
                "n",
                "--audience",
                "has space",
            ],
            EXIT_USAGE,
            "an audience is 1 to 256 printable ASCII characters without spaces",
        ),
        (
            vec!["clients", "create", "--name", "n", "--audience", ""],
            EXIT_USAGE,
            "invalid value '' for '--audience",
        ),
        (
            vec!["clients", "update", &id, "--default-audience", "has space"],
            EXIT_USAGE,
            "invalid value 'has space' for '--default-audience",
        ),
        (
            too_many_args,
            EXIT_FAILURE,
            "invalid `audiences`: at most 32 audiences",
        ),
        (
            vec![
                "clients",
                "create",
                "--name",
                "n",
                "--audience",
                "a",
                "--default-audience",
                "b",
            ],
            EXIT_FAILURE,
            "invalid `default_audience`: must be one of `audiences`: name it with --audience",
        ),
        (
            vec!["clients", "update", &id, "--default-audience", "b"],
            EXIT_FAILURE,
            "or pass --clear-default-audience",
        ),
        (
            vec![
                "clients",
                "create",
                "--name",
                "n",
                "--token-lifetime-seconds",
                "0",
            ],
            EXIT_USAGE,
            "0 is not in 1..=86400",
        ),
        (
            vec![
                "clients",
                "update",
                &id,
                "--token-lifetime-seconds",
                "86401",
            ],
            EXIT_USAGE,
            "86401 is not in 1..=86400",
        ),
        (
            vec!["clients", "create", "--name", ""],
            EXIT_FAILURE,
            "invalid `name`: must not be empty",
        ),
        (
            vec!["clients", "create", "--name", "n", "--scope", "has space"],
            EXIT_FAILURE,
            "invalid `scope`",
        ),
        (
            vec!["clients", "update", &id],
            EXIT_FAILURE,
            "nothing to update",
        ),
        (
            vec!["clients", "add-secret", &id, "--expires-at", "tomorrow"],
            EXIT_USAGE,
            "not an RFC 3339 timestamp",
        ),
        (
            vec![
                "clients",
                "add-secret",
                &id,
                "--expires-at",
                "2000-01-01T00:00:00Z",
            ],
            EXIT_FAILURE,
            "invalid `expires_at`: must be in the future",
        ),
        (
            vec!["clients", "create", "--name", "n", "--jwks", "{not json"],
            EXIT_FAILURE,
            "--jwks is not valid JSON",
        ),
        (
            vec!["clients", "update", &id, "--jwks", r#"{"keys": []}"#],
            EXIT_FAILURE,
            "invalid `jwks`: must hold 1 to 8 keys",
        ),
        (
            vec!["clients", "create", "--name", "n", "--jwks", &private_jwks],
            EXIT_FAILURE,
            "contains a private key (`d`)",
        ),
        (
            vec!["clients", "list", "--cursor", "garbage"],
            EXIT_FAILURE,
            "--cursor is not a cursor Valet wrote",
        ),
        (
            vec!["clients", "list", "--limit", "0"],
            EXIT_USAGE,
            "0 is not in 1..=1000",
        ),
    ];
    for (args, code, message) in cases {
        let command = args.join(" ");
        let output = store.run(&args);
        assert_eq!(output.status.code(), Some(code), "exit code of `{command}`");
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(message),
            "`{command}`: {message:?} on stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains(&secret),
            "`{command}` echoed the secret:\n{stderr}"
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

    let page = store.json(&["clients", "list", "--json"]);
    let clients = page["clients"].as_array().expect("clients array");
    assert_eq!(clients.len(), 1, "failed commands created no client");
    let shown = store.json(&["clients", "show", &id, "--json"]);
    assert_eq!(shown["name"], "target", "failed updates changed nothing");
    assert!(
        shown["default_audience"].is_null(),
        "failed updates changed nothing"
    );
}

#[test]
fn clients_need_an_existing_store() {
    let store = Store::new();
    let path = store.file("valet.db");
    let missing_id = "AAAAAAAAAAAAAAAA";

    for args in [
        vec!["clients", "list"],
        vec!["clients", "show", missing_id],
        vec!["clients", "update", missing_id, "--name", "n"],
        vec!["clients", "delete", missing_id],
        vec!["clients", "add-secret", missing_id],
    ] {
        let command = args.join(" ");
        let output = store.run(&args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FAILURE),
            "exit code of `{command}`"
        );
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("no store at"),
            "`{command}` names the missing store:\n{stderr}"
        );
        assert!(!path.exists(), "`{command}` created the store file");
    }

    create_client(&store, "first", &[]);
    assert!(path.exists(), "clients create creates the store file");
}

#[test]
fn clients_help_points_to_keys_commands() {
    let store = Store::new();

    for args in [
        vec!["clients", "--help"],
        vec!["clients", "add-secret", "--help"],
    ] {
        let output = store.run(&args);
        let command = args.join(" ");
        assert_success(&output, &command);
        let stdout = stdout_of(&output);
        assert!(
            stdout.contains("valet keys roll KEY_ID")
                && stdout.contains("valet keys revoke KEY_ID"),
            "`{command}` names keys roll and revoke:\n{stdout}"
        );
    }
}
