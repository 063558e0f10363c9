//! Secret hygiene: after a key lifecycle over HTTP with debug logging, no raw key and no
//! secret appears in the log, in responses other than create and roll, or in the SQLite files.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::process::{Server, Store, find_keys, secret_of, with_wrong_secret};

/// Log filter for the server: every debug event, SQL statements from sqlx included.
const DEBUG_LOG: &str = "debug,sqlx=debug";

/// One HTTP response the test received.
struct RecordedResponse {
    /// The request that caused it, for failure messages.
    label: String,
    status: u16,
    body: String,
    /// The raw key this response hands out, for the create and roll responses only.
    issued: Option<String>,
}

/// An HTTP client on one server that keeps every response for the final leak check.
struct Session {
    client: Client,
    address: String,
    admin_key: String,
    responses: Vec<RecordedResponse>,
}

/// How a request authenticates.
enum Auth<'a> {
    Admin,
    Bearer(&'a str),
    Header(String),
}

impl Session {
    /// Sends `body` as-is with `Content-Type: application/json` when it is given, and
    /// returns the status and body of the response.
    async fn send(
        &mut self,
        label: &str,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<String>,
    ) -> (u16, String) {
        let authorization = match auth {
            Auth::Admin => format!("Bearer {}", self.admin_key),
            Auth::Bearer(key) => format!("Bearer {key}"),
            Auth::Header(value) => value,
        };
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .header(AUTHORIZATION, authorization);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        self.record(label, request).await
    }

    /// Sends `request`, keeps its response, and returns the status and body.
    async fn record(&mut self, label: &str, request: RequestBuilder) -> (u16, String) {
        let response = request.send().await.unwrap_or_else(|err| {
            panic!("{label}: request failed: {err}");
        });
        let status = response.status().as_u16();
        let body = response.text().await.expect("response body");
        self.responses.push(RecordedResponse {
            label: label.to_owned(),
            status,
            body: body.clone(),
            issued: None,
        });
        (status, body)
    }

    /// Sends `body` as JSON with the admin key, checks the status and returns the JSON.
    async fn admin(
        &mut self,
        label: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Value {
        let (status, text) = self
            .send(
                label,
                method,
                path,
                Auth::Admin,
                body.map(|b| b.to_string()),
            )
            .await;
        assert_eq!(status, expected, "{label}: status; body {text}");
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{label}: no JSON ({err})"))
    }

    /// Sends a request that must fail with `status` and problem `code`.
    async fn reject(
        &mut self,
        label: &str,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<String>,
        expected: (u16, &str),
    ) {
        let (status, text) = self.send(label, method, path, auth, body).await;
        assert_eq!(status, expected.0, "{label}: status; body {text}");
        let problem: Value = serde_json::from_str(&text).expect("problem details JSON");
        assert_eq!(problem["code"], expected.1, "{label}: problem code");
    }

    /// Creates or rolls a key, marks the response as the one that hands out its raw key,
    /// and returns the response JSON.
    async fn issue(&mut self, label: &str, path: &str, body: Value) -> Value {
        let created = self.admin(label, Method::POST, path, Some(body), 201).await;
        let key = created["key"]
            .as_str()
            .expect("response has a key")
            .to_owned();
        self.responses.last_mut().expect("response kept").issued = Some(key);
        created
    }

    /// Verifies `key` with the admin key and returns the verification code.
    async fn verify(&mut self, label: &str, key: &str, scopes: &[&str]) -> String {
        let body = json!({ "key": key, "scopes": scopes });
        let verification = self
            .admin(label, Method::POST, "/v1/keys/verify", Some(body), 200)
            .await;
        verification["code"]
            .as_str()
            .expect("verify code")
            .to_owned()
    }
}

fn raw_of(object: &Value) -> String {
    object["key"]
        .as_str()
        .expect("response has a key")
        .to_owned()
}

fn id_of(object: &Value) -> String {
    object["id"]
        .as_str()
        .expect("response has an id")
        .to_owned()
}

/// Returns whether `needle` occurs anywhere in `haystack`.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn lifecycle_leaves_no_secret_behind() {
    let store = Store::new();
    let mut server = Server::start(&store, DEBUG_LOG).await;
    let bootstrap = find_keys(&server.stdout(), "vk_live_");
    assert_eq!(bootstrap.len(), 1, "one bootstrap key on stdout");
    let mut session = Session {
        client: Client::new(),
        address: server.address.clone(),
        admin_key: bootstrap[0].clone(),
        responses: Vec::new(),
    };

    // Create two keys: one for a service, and one that may only call verify.
    let orders = session
        .issue(
            "create orders key",
            "/v1/keys",
            json!({
                "name": "orders worker",
                "owner": "acme",
                "scopes": ["orders:read", "orders:write"],
                "metadata": {"team": "billing"},
            }),
        )
        .await;
    let verifier = session
        .issue(
            "create verifier key",
            "/v1/keys",
            json!({ "name": "edge verifier", "scopes": ["keys:verify"], "env": "test" }),
        )
        .await;
    let orders_key = raw_of(&orders);
    let orders_id = id_of(&orders);
    let verifier_key = raw_of(&verifier);

    // Verify, with the admin key and with the verify-only key.
    let code = session
        .verify("verify orders key", &orders_key, &["orders:read"])
        .await;
    assert_eq!(code, "VALID", "orders key valid");
    let body = json!({ "key": orders_key, "scopes": ["orders:write"] }).to_string();
    let (status, text) = session
        .send(
            "verify with verifier key",
            Method::POST,
            "/v1/keys/verify",
            Auth::Bearer(&verifier_key),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "verify-only key may verify; body {text}");
    let code = session
        .verify("verify missing scope", &orders_key, &["orders:delete"])
        .await;
    assert_eq!(code, "INSUFFICIENT_SCOPE", "orders key lacks orders:delete");
    let code = session
        .verify("verify wrong secret", &with_wrong_secret(&orders_key), &[])
        .await;
    assert_eq!(code, "NOT_FOUND", "wrong secret");
    let mut mistyped = orders_key.clone();
    let last = mistyped.pop().expect("non-empty key");
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    let code = session.verify("verify mistyped key", &mistyped, &[]).await;
    assert_eq!(code, "MALFORMED", "mistyped checksum");

    // Update, roll, and verify both keys of the roll.
    let path = format!("/v1/keys/{orders_id}");
    let update = json!({ "name": "orders worker v2", "metadata": {"team": "payments"} });
    session
        .admin("update orders key", Method::PATCH, &path, Some(update), 200)
        .await;
    let successor = session
        .issue(
            "roll orders key",
            &format!("/v1/keys/{orders_id}/roll"),
            json!({ "grace_period_seconds": 3600 }),
        )
        .await;
    let successor_key = raw_of(&successor);
    let successor_id = id_of(&successor);
    let code = session.verify("verify rolled key", &orders_key, &[]).await;
    assert_eq!(code, "VALID", "rolled key valid in its grace period");
    let code = session
        .verify("verify successor key", &successor_key, &[])
        .await;
    assert_eq!(code, "VALID", "successor valid");

    // Revoke the successor and verify it again.
    let revoke_path = format!("/v1/keys/{successor_id}/revoke");
    session
        .admin("revoke successor", Method::POST, &revoke_path, None, 200)
        .await;
    let code = session
        .verify("verify revoked key", &successor_key, &[])
        .await;
    assert_eq!(code, "REVOKED", "successor revoked");

    // List and show.
    let page = session
        .admin("list keys", Method::GET, "/v1/keys", None, 200)
        .await;
    assert_eq!(
        page["keys"].as_array().map(Vec::len),
        Some(4),
        "bootstrap, orders, verifier and successor keys listed"
    );
    session
        .admin("show orders key", Method::GET, &path, None, 200)
        .await;

    // Bad requests that carry a key where it does not belong.
    let roll_path = format!("/v1/keys/{successor_id}/roll");
    let bad_bodies = [
        (
            "verify with key as scopes",
            "/v1/keys/verify",
            json!({ "key": orders_key, "scopes": orders_key }).to_string(),
            (422, "invalid_body"),
        ),
        (
            "verify with key as field name",
            "/v1/keys/verify",
            format!(r#"{{"key": "x", "{orders_key}": true}}"#),
            (422, "invalid_body"),
        ),
        (
            "verify with key in an object",
            "/v1/keys/verify",
            json!({ "key": { "value": orders_key } }).to_string(),
            (422, "invalid_body"),
        ),
        (
            "verify with unquoted key",
            "/v1/keys/verify",
            format!(r#"{{"key": {orders_key}}}"#),
            (400, "malformed_json"),
        ),
        (
            "verify with truncated body",
            "/v1/keys/verify",
            format!(r#"{{"key": "{orders_key}""#),
            (400, "malformed_json"),
        ),
        (
            "verify with bearer line as scope",
            "/v1/keys/verify",
            json!({ "key": orders_key, "scopes": [format!("Bearer {orders_key}")] }).to_string(),
            (422, "invalid_field"),
        ),
        (
            "create with key as env",
            "/v1/keys",
            json!({ "name": "bad env", "scopes": [], "env": orders_key }).to_string(),
            (422, "invalid_body"),
        ),
        (
            "roll with key as grace period",
            roll_path.as_str(),
            json!({ "grace_period_seconds": successor_key }).to_string(),
            (422, "invalid_body"),
        ),
    ];
    for (label, path, body, expected) in bad_bodies {
        session
            .reject(label, Method::POST, path, Auth::Admin, Some(body), expected)
            .await;
    }
    let plain_text = session
        .client
        .post(format!("{}/v1/keys/verify", session.address))
        .bearer_auth(&session.admin_key)
        .header(CONTENT_TYPE, "text/plain")
        .body(orders_key.clone());
    let (status, text) = session.record("verify as plain text", plain_text).await;
    assert_eq!(status, 415, "plain-text verify body; body {text}");
    let bad_paths = [
        (
            "show with key as id",
            format!("/v1/keys/{orders_key}"),
            (400, "invalid_key_id"),
        ),
        (
            "list with key as cursor",
            format!("/v1/keys?cursor={orders_key}"),
            (400, "invalid_cursor"),
        ),
        (
            "list with key as parameter name",
            format!("/v1/keys?{orders_key}=1"),
            (400, "invalid_query"),
        ),
    ];
    for (label, path, expected) in bad_paths {
        session
            .reject(label, Method::GET, &path, Auth::Admin, None, expected)
            .await;
    }
    let bad_credentials = [
        (
            "bearer with wrong secret",
            format!("Bearer {}", with_wrong_secret(&orders_key)),
            (401, "invalid_token"),
        ),
        (
            "bearer with revoked key",
            format!("Bearer {successor_key}"),
            (401, "invalid_token"),
        ),
        (
            "bearer without admin scope",
            format!("Bearer {orders_key}"),
            (403, "insufficient_scope"),
        ),
        (
            "basic scheme with key",
            format!("Basic {orders_key}"),
            (401, "invalid_credentials"),
        ),
    ];
    for (label, header, expected) in bad_credentials {
        session
            .reject(
                label,
                Method::GET,
                "/v1/keys",
                Auth::Header(header),
                None,
                expected,
            )
            .await;
    }

    // Whatever the server exposes without a key, such as metrics, is searched as well.
    let metrics = session.client.get(format!("{}/metrics", session.address));
    session.record("metrics", metrics).await;

    let status = server.stop().await;
    assert_eq!(status.code(), Some(0), "server exit code after SIGTERM");
    let log = server.stderr();
    assert!(log.contains("valet stopped"), "stop logged");
    assert!(log.contains("request finished"), "debug events logged");
    assert!(log.contains("api_keys"), "sqlx statements logged");
    assert!(
        log.contains(&orders_id),
        "key ids logged, so the search can hit"
    );

    assert_eq!(
        find_keys(&server.stdout(), "vk_"),
        [session.admin_key.clone()],
        "stdout shows the bootstrap key and no other"
    );

    let keys = [
        ("bootstrap", session.admin_key.clone()),
        ("orders", orders_key),
        ("verifier", verifier_key),
        ("successor", successor_key),
    ];

    // The log contains no key and no secret.
    for (name, key) in &keys {
        assert!(!log.contains(key.as_str()), "{name} key in the log");
        assert!(!log.contains(secret_of(key)), "{name} secret in the log");
    }

    // Only the response that issued a key contains it, and no response contains another key.
    for response in &session.responses {
        for (name, key) in &keys {
            if response.issued.as_deref() == Some(key.as_str()) {
                continue;
            }
            assert!(
                !response.body.contains(key.as_str()),
                "{name} key in the response to {} ({}): {}",
                response.label,
                response.status,
                response.body
            );
            assert!(
                !response.body.contains(secret_of(key)),
                "{name} secret in the response to {} ({}): {}",
                response.label,
                response.status,
                response.body
            );
        }
    }

    // The SQLite files contain each key's SHA-256 and id, never the key or its secret.
    // Every file whose name starts with valet.db is read: the database, its WAL and the
    // shared-memory index, whichever exist after shutdown.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(store.file("")).expect("list the store directory") {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("valet.db") {
            let bytes = std::fs::read(entry.path()).expect("read a store file");
            files.push((name, bytes));
        }
    }
    assert!(
        files.iter().any(|(name, _)| name == "valet.db"),
        "valet.db among the store files"
    );
    let in_any_file = |needle: &[u8]| files.iter().any(|(_, bytes)| contains_bytes(bytes, needle));
    for (name, key) in &keys {
        let id = key.split('_').nth(2).expect("key id part");
        assert!(in_any_file(id.as_bytes()), "{name} key id in the store");
        let hash = Sha256::digest(key.as_bytes());
        assert!(
            in_any_file(hash.as_slice()),
            "{name} key SHA-256 in the store"
        );
        for (file, bytes) in &files {
            assert!(
                !contains_bytes(bytes, key.as_bytes()),
                "{name} key in {file}"
            );
            assert!(
                !contains_bytes(bytes, secret_of(key).as_bytes()),
                "{name} secret in {file}"
            );
        }
    }
}

/// Returns every way the signing key's private DER could be written out: the bytes
/// themselves as they sit in the store, base64 in both alphabets (as in PEM and JWK), and
/// hex.
fn encodings_of(der: &[u8]) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let hex: String = der.iter().map(|byte| format!("{byte:02x}")).collect();
    vec![STANDARD.encode(der), URL_SAFE_NO_PAD.encode(der), hex]
}

/// Key-encryption key of the signing keys in the OAuth lifecycle test.
const SEALING_KEY: &str = "c2VhbGluZyBrZXkgZm9yIHRoZSBzZWNyZXRzIHRlc3Q=";

#[tokio::test]
async fn oauth_lifecycle_leaves_no_secret_behind() {
    let store = Store::new();
    let sealing_flag = format!("--signing-key-encryption-key={SEALING_KEY}");
    let mut server = Server::start_on(&store, DEBUG_LOG, "127.0.0.1", &[&sealing_flag]).await;
    let bootstrap = find_keys(&server.stdout(), "vk_live_");
    let mut session = Session {
        client: Client::new(),
        address: server.address.clone(),
        admin_key: bootstrap[0].clone(),
        responses: Vec::new(),
    };

    let client = session
        .admin(
            "create client",
            Method::POST,
            "/v1/clients",
            Some(json!({"name": "worker", "scopes": ["orders:read"],
                        "audiences": ["orders"], "default_audience": "orders"})),
            201,
        )
        .await;
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let first_secret = client["client_secret"].as_str().unwrap().to_owned();
    session.responses.last_mut().unwrap().issued = Some(first_secret.clone());
    let added = session
        .admin(
            "add client secret",
            Method::POST,
            &format!("/v1/clients/{client_id}/secrets"),
            Some(json!({})),
            201,
        )
        .await;
    let second_secret = added["client_secret"].as_str().unwrap().to_owned();
    session.responses.last_mut().unwrap().issued = Some(second_secret.clone());

    // A token, then introspection and revocation of it, each authenticated by the client.
    let address = session.address.clone();
    let url = |path: &str| format!("{address}{path}");
    let form_token = session
        .client
        .post(url("/oauth/token"))
        .basic_auth(&client_id, Some(&first_secret))
        .form(&[("grant_type", "client_credentials")]);
    let (status, text) = session.record("request token", form_token).await;
    assert_eq!(status, 200, "token; body {text}");
    let token: Value = serde_json::from_str(&text).unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_owned();
    session.responses.last_mut().unwrap().issued = Some(access_token.clone());
    for (label, path) in [
        ("introspect token", "/oauth/introspect"),
        ("revoke token", "/oauth/revoke"),
        ("introspect revoked token", "/oauth/introspect"),
    ] {
        let request = session
            .client
            .post(url(path))
            .basic_auth(&client_id, Some(&second_secret))
            .form(&[("token", access_token.as_str())]);
        let (status, text) = session.record(label, request).await;
        assert_eq!(status, 200, "{label}; body {text}");
    }
    let forward = session
        .client
        .get(url("/v1/forward-auth"))
        .bearer_auth(&access_token);
    session
        .record("forward auth with revoked token", forward)
        .await;

    // Failures that carry a secret or token where it does not belong.
    let failures = [
        (
            "token with wrong secret",
            session
                .client
                .post(url("/oauth/token"))
                .basic_auth(&client_id, Some(with_wrong_secret(&first_secret)))
                .form(&[("grant_type", "client_credentials")]),
        ),
        (
            "token with secret as scope",
            session
                .client
                .post(url("/oauth/token"))
                .basic_auth(&client_id, Some(&first_secret))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", &first_secret),
                ]),
        ),
        (
            "token with token as client id",
            session.client.post(url("/oauth/token")).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &access_token),
                ("client_secret", &second_secret),
            ]),
        ),
        (
            "token with token as grant type",
            session
                .client
                .post(url("/oauth/token"))
                .basic_auth(&client_id, Some(&first_secret))
                .form(&[("grant_type", access_token.as_str())]),
        ),
        (
            "introspect with token as credential",
            session
                .client
                .post(url("/oauth/introspect"))
                .bearer_auth(&access_token)
                .form(&[("token", access_token.as_str())]),
        ),
    ];
    for (label, request) in failures {
        let (status, text) = session.record(label, request).await;
        assert!((400..500).contains(&status), "{label}: {status} {text}");
    }

    let rotated = store.run(&[
        "signing-keys",
        "rotate",
        "--delay-seconds",
        "0",
        &sealing_flag,
    ]);
    crate::process::assert_success(&rotated, "signing-keys rotate");
    let status = server.stop().await;
    assert_eq!(status.code(), Some(0), "server exit code after SIGTERM");
    let log = format!(
        "{}{}{}",
        server.stderr(),
        crate::process::stdout_of(&rotated),
        crate::process::stderr_of(&rotated)
    );
    assert!(
        log.contains(&client_id),
        "client ids logged, so the search can hit"
    );

    // The signing keys' private halves, read from the store, where they are sealed.
    let sealing = valet::oauth::sealing::SealingKey::parse(SEALING_KEY).unwrap();
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&store.url())
        .await
        .unwrap();
    let stored: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, private_key FROM signing_keys")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let private_keys: Vec<Vec<u8>> = stored
        .iter()
        .map(|(kid, sealed)| {
            assert!(
                valet::oauth::sealing::is_sealed(sealed),
                "signing key {kid} sealed"
            );
            valet::oauth::sealing::open(Some(&sealing), kid, sealed)
                .unwrap()
                .to_vec()
        })
        .collect();
    sqlx::Connection::close(connection).await.unwrap();
    assert_eq!(
        private_keys.len(),
        2,
        "the first signing key and the rotated one"
    );

    let mut secrets = vec![
        ("first client secret", first_secret.clone()),
        ("second client secret", second_secret.clone()),
        ("access token", access_token.clone()),
        (
            "access token signature",
            access_token.rsplit('.').next().unwrap().to_owned(),
        ),
    ];
    for der in &private_keys {
        for encoded in encodings_of(der) {
            secrets.push(("signing key", encoded));
        }
    }
    for (name, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "{name} in the log");
    }
    for der in &private_keys {
        assert!(
            !contains_bytes(log.as_bytes(), der),
            "signing key DER in the log"
        );
    }
    for response in &session.responses {
        for (name, secret) in &secrets {
            if response.issued.as_deref() == Some(secret.as_str())
                || (*name == "access token signature"
                    && response.issued.as_deref() == Some(access_token.as_str()))
            {
                continue;
            }
            assert!(
                !response.body.contains(secret.as_str()),
                "{name} in the response to {} ({})",
                response.label,
                response.status
            );
        }
    }

    // The store keeps client secrets as SHA-256, signing keys sealed, and no token.
    let database = std::fs::read(store.file("valet.db")).expect("read the store");
    for (name, secret) in &secrets {
        assert!(
            !contains_bytes(&database, secret.as_bytes()),
            "{name} in the store"
        );
    }
    for der in &private_keys {
        assert!(
            !contains_bytes(&database, der),
            "signing key DER in the store"
        );
    }
}

#[test]
fn invalid_sealing_key_is_not_repeated_in_the_error() {
    let store = Store::new();
    let short = "c2hvcnQgc2VjcmV0IHZhbHVl";
    let output = store.run(&[
        "keys",
        "list",
        &format!("--signing-key-encryption-key={short}"),
    ]);
    assert!(!output.status.success());
    let stderr = crate::process::stderr_of(&output);
    assert!(stderr.contains("expected 32 bytes in base64"), "{stderr}");
    assert!(!stderr.contains(short), "the key text in the error");
}
