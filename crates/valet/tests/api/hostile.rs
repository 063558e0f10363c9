//! The hostile-input corpus: a table of malformed and hostile requests to every endpoint.
//!
//! Each case must get its own specific 4xx in the endpoint's error format: problem details
//! with `code` under `/v1` and on the service routes, RFC 6749 JSON with `error` under
//! `/oauth`, and an RFC 6750 `WWW-Authenticate: Bearer` challenge from forward auth. Bytes
//! that are not a valid HTTP request never reach Valet; hyper responds to them with an
//! empty 400 or 431 and closes the connection, and the table says so for each such case.
//!
//! After every case the server must still answer `/healthz`, and no response may repeat a
//! secret of the request. Every table of the store is read before and after the corpus,
//! and no row may differ, because no case is a valid request.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256KeyPair};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use valet::http::MAX_HEADER_BYTES;

use crate::helpers::{Backend, TestApp, on_each_backend, spawn_app};
use crate::process::with_wrong_secret;

on_each_backend!(hostile_requests_get_specific_4xx);

/// Maximum wait for a raw connection's response and close.
const RAW_LIMIT: Duration = Duration::from_secs(5);

/// Request body size just over the 64 KiB limit.
const OVERSIZED: usize = 64 * 1024 + 1;

/// The response that a case must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// RFC 9457 problem details with this status and `code`.
    Problem(u16, &'static str),
    /// An RFC 6749 section 5.2 JSON error with this status and `error`.
    OAuth(u16, &'static str),
    /// An RFC 6750 `Bearer` challenge with this status, carrying `error` when it is set.
    Challenge(u16, Option<&'static str>),
    /// hyper's empty response to a request that is not valid HTTP, then a closed connection.
    Hyper(u16),
}

impl Expect {
    fn status(self) -> u16 {
        match self {
            Self::Problem(status, _)
            | Self::OAuth(status, _)
            | Self::Challenge(status, _)
            | Self::Hyper(status) => status,
        }
    }
}

/// How a case travels to the server.
enum Wire {
    /// Through reqwest, which sends only well-formed HTTP.
    Client {
        method: Method,
        path: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// These bytes, as they are, on a new TCP connection.
    Raw(Vec<u8>),
}

/// One row of the corpus.
struct Case {
    name: String,
    wire: Wire,
    expect: Expect,
}

impl Case {
    /// Starts a reqwest case without headers or body that expects `route_not_found` until
    /// [`Case::expect`] sets another outcome.
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            wire: Wire::Client {
                method,
                path: path.into(),
                headers: Vec::new(),
                body: Vec::new(),
            },
            expect: Expect::Problem(404, "route_not_found"),
        }
    }

    /// Builds a case that sends `bytes` over a new connection.
    fn raw(name: impl Into<String>, bytes: impl Into<Vec<u8>>, expect: Expect) -> Self {
        Self {
            name: name.into(),
            wire: Wire::Raw(bytes.into()),
            expect,
        }
    }

    /// Adds a header; calling it twice with one name sends the header twice.
    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        if let Wire::Client { headers, .. } = &mut self.wire {
            headers.push((name.to_owned(), value.into()));
        }
        self
    }

    fn bearer(self, key: &str) -> Self {
        self.header("authorization", format!("Bearer {key}"))
    }

    fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        if let Wire::Client { body, .. } = &mut self.wire {
            *body = bytes.into();
        }
        self
    }

    /// Sets a body with `Content-Type: application/json`.
    fn json(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/json").body(bytes)
    }

    /// Sets a body with `Content-Type: application/x-www-form-urlencoded`.
    fn form(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(bytes)
    }

    fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    fn problem(self, status: u16, code: &'static str) -> Self {
        self.expect(Expect::Problem(status, code))
    }

    fn oauth(self, status: u16, error: &'static str) -> Self {
        self.expect(Expect::OAuth(status, error))
    }

    fn challenge(self, status: u16, error: Option<&'static str>) -> Self {
        self.expect(Expect::Challenge(status, error))
    }

    /// Returns every byte the request carries, for the check that nothing is echoed.
    fn request_bytes(&self) -> Vec<u8> {
        match &self.wire {
            Wire::Raw(bytes) => bytes.clone(),
            Wire::Client {
                path,
                headers,
                body,
                ..
            } => {
                let mut bytes = path.as_bytes().to_vec();
                for (name, value) in headers {
                    bytes.extend_from_slice(name.as_bytes());
                    bytes.extend_from_slice(value);
                }
                bytes.extend_from_slice(body);
                bytes
            }
        }
    }
}

/// Builds a raw HTTP/1.1 request with `Connection: close`, so the server closes the
/// connection after its response. `head` holds extra header lines, each ending in CRLF.
fn raw_request(method: &str, path: &str, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n")
        .into_bytes();
    bytes.extend_from_slice(head);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// The keys, client and token that the corpus uses, created by valid requests before the
/// store is first read.
struct Fixtures {
    admin: String,
    /// A key with scope `orders:read` only.
    worker: String,
    worker_id: String,
    /// A key with scope `keys:verify` only.
    verifier: String,
    revoked: String,
    revoked_id: String,
    client_id: String,
    client_secret: String,
    /// An access token of the client, with scope `orders:read`.
    token: String,
    /// A public P-256 JWK that the JWK set checks accept.
    jwk: Value,
}

impl Fixtures {
    async fn create(app: &TestApp) -> Self {
        let worker = app.create_simple("orders worker", &["orders:read"]).await;
        let verifier = app.create_simple("gateway", &["keys:verify"]).await;
        let revoked = app.create_simple("retired worker", &["orders:read"]).await;
        let revoked_id = revoked["id"].as_str().unwrap().to_owned();
        let response = app
            .admin(Method::POST, &format!("/v1/keys/{revoked_id}/revoke"), None)
            .await;
        assert_eq!(response.status(), 200, "revoke fixture key");

        let client = app
            .admin_json(
                Method::POST,
                "/v1/clients",
                Some(json!({
                    "name": "billing client",
                    "scopes": ["orders:read"],
                    "audiences": ["https://orders.example"],
                    "default_audience": "https://orders.example",
                })),
            )
            .await;
        let client_id = client["client_id"].as_str().unwrap().to_owned();
        let client_secret = client["client_secret"].as_str().unwrap().to_owned();
        let token = app.access_token(&client_id, &client_secret).await;

        let pair = ES256KeyPair::generate();
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });

        Self {
            admin: app.admin_key.clone(),
            worker: worker["key"].as_str().unwrap().to_owned(),
            worker_id: worker["id"].as_str().unwrap().to_owned(),
            verifier: verifier["key"].as_str().unwrap().to_owned(),
            revoked: revoked["key"].as_str().unwrap().to_owned(),
            revoked_id,
            client_id,
            client_secret,
            token,
            jwk,
        }
    }

    /// Returns `Basic` credentials for `id` and `secret`, form-encoded before Base64 as
    /// RFC 6749 section 2.3.1 requires.
    fn basic(id: &str, secret: &str) -> String {
        let encode =
            |text: &str| -> String { form_urlencoded::byte_serialize(text.as_bytes()).collect() };
        let pair = format!("{}:{}", encode(id), encode(secret));
        format!("Basic {}", STANDARD.encode(pair))
    }

    fn client_basic(&self) -> String {
        Self::basic(&self.client_id, &self.client_secret)
    }
}

/// Strings that are not a usable key of this server, each wrong in another way. Each one
/// must be rejected wherever a key is accepted.
fn wrong_keys(f: &Fixtures) -> Vec<(&'static str, String)> {
    let admin = f.admin.as_str();
    let parts: Vec<&str> = admin.split('_').collect();
    let (id, secret, checksum) = (parts[2], parts[3], parts[4]);
    let mut wrong_checksum = admin.to_owned();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == 'a' { 'b' } else { 'a' });
    vec![
        ("prefix only", "vk_live_".to_owned()),
        ("other prefix", admin.replacen("vk_", "sk_", 1)),
        (
            "upper-case prefix",
            admin.replacen("vk_live_", "VK_LIVE_", 1),
        ),
        ("unknown env", admin.replacen("_live_", "_prod_", 1)),
        (
            "id one short",
            format!("vk_live_{}_{secret}_{checksum}", &id[1..]),
        ),
        (
            "id with a dash",
            format!("vk_live_{}-_{secret}_{checksum}", &id[1..]),
        ),
        (
            "secret one short",
            format!("vk_live_{id}_{}_{checksum}", &secret[1..]),
        ),
        ("wrong checksum", wrong_checksum),
        ("wrong secret", with_wrong_secret(admin)),
        ("revoked key", f.revoked.clone()),
        (
            "Cyrillic a in env",
            admin.replacen("live", "liv\u{0435}", 1),
        ),
        ("fullwidth underscore", admin.replacen('_', "\u{FF3F}", 1)),
        (
            "zero-width space",
            admin.replacen("_live", "_\u{200B}live", 1),
        ),
        ("key twice", format!("{admin}{admin}")),
        (
            "SQL in the id",
            format!("vk_live_'OR'1'='1_{secret}_{checksum}"),
        ),
        ("quote and backslash", format!("{admin}\"\\")),
        ("10 KiB of key", admin.repeat(10_240 / admin.len() + 1)),
        ("three dots as a JWT", "a.b.c".to_owned()),
    ]
}

/// Builds a JSON value nested `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Wrong Authorization headers against every `/v1` management route: the credential is
/// checked before the path, query or body.
fn authorization_cases(f: &Fixtures) -> Vec<Case> {
    let worker_path = format!("/v1/keys/{}", f.worker_id);
    let client_path = format!("/v1/clients/{}", f.client_id);
    let routes = [
        (Method::POST, "/v1/keys".to_owned()),
        (Method::GET, "/v1/keys".to_owned()),
        (Method::GET, worker_path.clone()),
        (Method::PATCH, worker_path.clone()),
        (Method::POST, format!("{worker_path}/roll")),
        (Method::POST, format!("{worker_path}/revoke")),
        (Method::POST, "/v1/keys/verify".to_owned()),
        (Method::POST, "/v1/clients".to_owned()),
        (Method::GET, "/v1/clients".to_owned()),
        (Method::GET, client_path.clone()),
        (Method::PATCH, client_path.clone()),
        (Method::DELETE, client_path.clone()),
        (Method::POST, format!("{client_path}/secrets")),
    ];
    let mut cases = Vec::new();
    for (method, path) in routes {
        let label = format!("{method} {path}");
        let case = |what: &str| Case::new(format!("{label}: {what}"), method.clone(), &path);
        cases.extend([
            case("no Authorization").problem(401, "missing_credentials"),
            case("Basic scheme with the admin key")
                .header("authorization", format!("Basic {}", f.admin))
                .problem(401, "invalid_credentials"),
            case("Bearer without a key")
                .header("authorization", "Bearer ")
                .problem(401, "invalid_credentials"),
            case("Bearer with a wrong secret")
                .bearer(&with_wrong_secret(&f.admin))
                .problem(401, "invalid_token"),
            case("Authorization twice")
                .bearer(&f.admin)
                .bearer(&f.admin)
                .problem(400, "invalid_request"),
            case("key without admin scope")
                .bearer(&f.worker)
                .problem(403, "insufficient_scope"),
        ]);
    }
    // The verify endpoint takes keys:verify, which no other route takes.
    cases.push(
        Case::new("GET /v1/keys: keys:verify key", Method::GET, "/v1/keys")
            .bearer(&f.verifier)
            .problem(403, "insufficient_scope"),
    );
    cases
}

/// Keys of every wrong shape, as the bearer key of the API, as the credential of forward
/// auth, as the admin key of introspection and as a client secret.
fn wrong_key_cases(f: &Fixtures) -> Vec<Case> {
    let mut cases = Vec::new();
    for (what, key) in wrong_keys(f) {
        cases.push(
            Case::new(format!("bearer: {what}"), Method::GET, "/v1/keys")
                .bearer(&key)
                .problem(401, "invalid_token"),
        );
        cases.push(
            Case::new(
                format!("forward auth: {what}"),
                Method::GET,
                "/v1/forward-auth",
            )
            .header("x-api-key", key.clone())
            .challenge(401, Some("invalid_token")),
        );
        cases.push(
            Case::new(
                format!("introspect bearer: {what}"),
                Method::POST,
                "/oauth/introspect",
            )
            .bearer(&key)
            .form("token=x")
            .oauth(401, "invalid_client"),
        );
        cases.push(
            Case::new(
                format!("client secret: {what}"),
                Method::POST,
                "/oauth/token",
            )
            .header("authorization", Fixtures::basic(&f.client_id, &key))
            .form("grant_type=client_credentials")
            .oauth(401, "invalid_client"),
        );
    }
    cases
}

/// Returns the routes that take a JSON body.
fn json_routes(f: &Fixtures) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/v1/keys".to_owned()),
        (Method::PATCH, format!("/v1/keys/{}", f.worker_id)),
        (Method::POST, format!("/v1/keys/{}/roll", f.worker_id)),
        (Method::POST, "/v1/keys/verify".to_owned()),
        (Method::POST, "/v1/clients".to_owned()),
        (Method::PATCH, format!("/v1/clients/{}", f.client_id)),
        (Method::POST, format!("/v1/clients/{}/secrets", f.client_id)),
    ]
}

/// Bodies that no JSON route accepts, each sent to every JSON route with the admin key.
fn json_body_cases(f: &Fixtures) -> Vec<Case> {
    let malformed = |bytes: &[u8]| (bytes.to_vec(), Expect::Problem(400, "malformed_json"));
    let invalid = |bytes: &[u8]| (bytes.to_vec(), Expect::Problem(422, "invalid_body"));
    let bodies: Vec<(&str, (Vec<u8>, Expect))> = vec![
        ("unclosed object", malformed(b"{")),
        ("invalid UTF-8 in a name", malformed(b"{\"\xff\xfe\": 1}")),
        ("UTF-8 byte order mark", malformed(b"\xef\xbb\xbf{}")),
        ("single quotes", malformed(b"{'name': 'x'}")),
        ("comment", malformed(b"/* hi */ {}")),
        ("NaN", malformed(b"NaN")),
        ("bare comma", malformed(b"{,}")),
        ("array", invalid(b"[]")),
        ("null", invalid(b"null")),
        ("string", invalid(format!("\"{}\"", f.admin).as_bytes())),
        ("number", invalid(b"18446744073709551616")),
        ("unknown field", invalid(b"{\"colour\": \"red\"}")),
        (
            "Cyrillic look-alike field",
            invalid("{\"n\u{0430}me\": \"x\"}".as_bytes()),
        ),
        ("field name with NUL", invalid(b"{\"\\u0000\": 1}")),
        (
            "key as field name",
            invalid(format!("{{\"{}\": 1}}", f.admin).as_bytes()),
        ),
        (
            "deep array",
            (
                nested(200).into_bytes(),
                Expect::Problem(422, "invalid_body"),
            ),
        ),
        (
            "over 64 KiB",
            (
                format!("{{\"pad\": \"{}\"}}", "x".repeat(OVERSIZED)).into_bytes(),
                Expect::Problem(413, "body_too_large"),
            ),
        ),
    ];
    let mut cases = Vec::new();
    for (method, path) in json_routes(f) {
        for (what, (body, expect)) in &bodies {
            cases.push(
                Case::new(format!("{method} {path}: {what}"), method.clone(), &path)
                    .bearer(&f.admin)
                    .json(body.clone())
                    .expect(*expect),
            );
        }
        let valid_looking = br#"{"name": "x", "scopes": []}"#;
        let unsupported = Expect::Problem(415, "unsupported_media_type");
        let case = |what: &str| {
            Case::new(format!("{method} {path}: {what}"), method.clone(), &path)
                .bearer(&f.admin)
                .body(valid_looking.to_vec())
                .expect(unsupported)
        };
        cases.extend([
            case("no Content-Type"),
            case("text/plain").header("content-type", "text/plain"),
            case("form type").header("content-type", "application/x-www-form-urlencoded"),
            case("Content-Type twice")
                .header("content-type", "application/json")
                .header("content-type", "application/json"),
            case("application/jsonx").header("content-type", "application/jsonx"),
        ]);
    }
    cases
}

/// Field values that the JSON routes reject, each on the route that takes the field.
fn field_cases(f: &Fixtures) -> Vec<Case> {
    let key_path = format!("/v1/keys/{}", f.worker_id);
    let roll_path = format!("{key_path}/roll");
    let client_path = format!("/v1/clients/{}", f.client_id);
    let secrets_path = format!("{client_path}/secrets");
    let jwk_with = |field: &str, value: Value| {
        let mut jwk = f.jwk.clone();
        jwk[field] = value;
        json!({"keys": [jwk]})
    };
    let create_key = |what: &str, body: Value| {
        Case::new(format!("create key: {what}"), Method::POST, "/v1/keys")
            .bearer(&f.admin)
            .json(body.to_string())
    };
    let create_key_raw = |what: &str, body: String| {
        Case::new(format!("create key: {what}"), Method::POST, "/v1/keys")
            .bearer(&f.admin)
            .json(body)
    };
    let patch_key = |what: &str, body: Value| {
        Case::new(format!("patch key: {what}"), Method::PATCH, &key_path)
            .bearer(&f.admin)
            .json(body.to_string())
    };
    let roll = |what: &str, body: &str| {
        Case::new(format!("roll: {what}"), Method::POST, &roll_path)
            .bearer(&f.admin)
            .json(body.to_owned())
    };
    let verify = |what: &str, body: Value| {
        Case::new(format!("verify: {what}"), Method::POST, "/v1/keys/verify")
            .bearer(&f.admin)
            .json(body.to_string())
    };
    let create_client = |what: &str, body: String| {
        Case::new(
            format!("create client: {what}"),
            Method::POST,
            "/v1/clients",
        )
        .bearer(&f.admin)
        .json(body)
    };
    let client = |fields: Value| {
        let mut body = json!({"name": "c", "scopes": [], "audiences": ["a"]});
        for (name, value) in fields.as_object().unwrap() {
            body[name] = value.clone();
        }
        body.to_string()
    };
    let patch_client = |what: &str, body: Value| {
        Case::new(format!("patch client: {what}"), Method::PATCH, &client_path)
            .bearer(&f.admin)
            .json(body.to_string())
    };
    let add_secret = |what: &str, body: &str| {
        Case::new(format!("add secret: {what}"), Method::POST, &secrets_path)
            .bearer(&f.admin)
            .json(body.to_owned())
    };
    let sql = "'; DROP TABLE api_keys; --";
    vec![
        create_key("missing scopes", json!({"name": "n"})).problem(422, "invalid_body"),
        create_key_raw(
            "name twice",
            r#"{"name":"a","name":"b","scopes":[]}"#.into(),
        )
        .problem(422, "invalid_body"),
        create_key(
            "name of 201 characters",
            json!({"name": "n".repeat(201), "scopes": []}),
        )
        .problem(422, "invalid_field"),
        create_key("name of spaces", json!({"name": "   ", "scopes": []}))
            .problem(422, "invalid_field"),
        create_key("name with newline", json!({"name": "a\nb", "scopes": []}))
            .problem(422, "invalid_field"),
        create_key("name with NUL", json!({"name": "a\u{0}b", "scopes": []}))
            .problem(422, "invalid_field"),
        create_key(
            "name with RTL override",
            json!({"name": "\u{202E}nimda", "scopes": []}),
        )
        .problem(422, "invalid_field"),
        create_key("name as number", json!({"name": 7, "scopes": []})).problem(422, "invalid_body"),
        create_key(
            "SQL in name and scope",
            json!({"name": sql, "scopes": [sql]}),
        )
        .problem(422, "invalid_field"),
        create_key("scope with quote", json!({"name": "n", "scopes": ["a\"b"]}))
            .problem(422, "invalid_field"),
        create_key(
            "scope with backslash",
            json!({"name": "n", "scopes": ["a\\b"]}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "Cyrillic scope",
            json!({"name": "n", "scopes": ["orders:r\u{0435}ad"]}),
        )
        .problem(422, "invalid_field"),
        create_key("empty scope", json!({"name": "n", "scopes": [""]}))
            .problem(422, "invalid_field"),
        create_key("key as scope", json!({"name": "n", "scopes": [f.admin]}))
            .problem(422, "invalid_field"),
        create_key(
            "65 scopes",
            json!({"name": "n", "scopes": (0..65).map(|i| format!("s{i}")).collect::<Vec<_>>()}),
        )
        .problem(422, "invalid_field"),
        create_key("null scope", json!({"name": "n", "scopes": [null]}))
            .problem(422, "invalid_body"),
        create_key_raw(
            "deep scopes",
            format!(r#"{{"name":"n","scopes":{}}}"#, nested(200)),
        )
        .problem(422, "invalid_body"),
        create_key(
            "upper-case env",
            json!({"name": "n", "scopes": [], "env": "LIVE"}),
        )
        .problem(422, "invalid_body"),
        create_key(
            "Cyrillic env",
            json!({"name": "n", "scopes": [], "env": "t\u{0435}st"}),
        )
        .problem(422, "invalid_body"),
        create_key(
            "empty owner",
            json!({"name": "n", "scopes": [], "owner": ""}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "owner with zero-width space",
            json!({"name": "n", "scopes": [], "owner": "ac\u{200B}me"}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "owner as number",
            json!({"name": "n", "scopes": [], "owner": 1}),
        )
        .problem(422, "invalid_body"),
        create_key(
            "metadata as array",
            json!({"name": "n", "scopes": [], "metadata": [1]}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "metadata over 4 KiB",
            json!({"name": "n", "scopes": [], "metadata": {"a": "x".repeat(5000)}}),
        )
        .problem(422, "invalid_field"),
        create_key_raw(
            "metadata 200 deep",
            format!(
                r#"{{"name":"n","scopes":[],"metadata":{{"a":{}}}}}"#,
                nested(200)
            ),
        )
        .problem(400, "malformed_json"),
        create_key_raw(
            "metadata number 1e999",
            r#"{"name":"n","scopes":[],"metadata":{"a":1e999}}"#.into(),
        )
        .problem(400, "malformed_json"),
        create_key_raw(
            "metadata integer of 400 digits",
            format!(
                r#"{{"name":"n","scopes":[],"metadata":{{"a":{}}}}}"#,
                "9".repeat(400)
            ),
        )
        .problem(400, "malformed_json"),
        create_key_raw(
            "metadata lone surrogate",
            r#"{"name":"n","scopes":[],"metadata":{"a":"\ud800"}}"#.into(),
        )
        .problem(400, "malformed_json"),
        create_key(
            "metadata value with NUL",
            json!({"name": "n", "scopes": [], "metadata": {"a": "x\u{0}y"}}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "metadata name with NUL",
            json!({"name": "n", "scopes": [], "metadata": {"\u{0}": 1}}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "expiry on 30 February",
            json!({"name": "n", "scopes": [], "expires_at": "2030-02-30T00:00:00Z"}),
        )
        .problem(422, "invalid_body"),
        create_key(
            "expiry in 1970",
            json!({"name": "n", "scopes": [], "expires_at": "1970-01-01T00:00:00Z"}),
        )
        .problem(422, "invalid_field"),
        create_key(
            "expiry in year 10000",
            json!({"name": "n", "scopes": [], "expires_at": "+10000-01-01T00:00:00Z"}),
        )
        .problem(422, "invalid_body"),
        create_key(
            "expiry as number",
            json!({"name": "n", "scopes": [], "expires_at": 1e10}),
        )
        .problem(422, "invalid_body"),
        patch_key("empty object", json!({})).problem(422, "empty_update"),
        Case::new("patch key: two objects", Method::PATCH, &key_path)
            .bearer(&f.admin)
            .json(r#"{"name": "x"} {"name": "y"}"#)
            .problem(400, "malformed_json"),
        patch_key("null name", json!({"name": null})).problem(422, "invalid_field"),
        patch_key("null scopes", json!({"scopes": null})).problem(422, "invalid_field"),
        patch_key("null metadata", json!({"metadata": null})).problem(422, "invalid_field"),
        patch_key("owner with BOM", json!({"owner": "\u{FEFF}acme"})).problem(422, "invalid_field"),
        patch_key(
            "metadata value with NUL",
            json!({"metadata": {"a": "\u{0}"}}),
        )
        .problem(422, "invalid_field"),
        patch_key("scopes with space", json!({"scopes": ["a b"]})).problem(422, "invalid_field"),
        roll("negative grace", r#"{"grace_period_seconds": -1}"#).problem(422, "invalid_field"),
        roll("grace over 7 days", r#"{"grace_period_seconds": 604801}"#)
            .problem(422, "invalid_field"),
        roll(
            "grace of i64 minimum",
            r#"{"grace_period_seconds": -9223372036854775808}"#,
        )
        .problem(422, "invalid_field"),
        roll(
            "grace of i64 maximum",
            r#"{"grace_period_seconds": 9223372036854775807}"#,
        )
        .problem(422, "invalid_field"),
        roll(
            "grace of 2^64",
            r#"{"grace_period_seconds": 18446744073709551616}"#,
        )
        .problem(422, "invalid_body"),
        roll("fractional grace", r#"{"grace_period_seconds": 1.5}"#).problem(422, "invalid_body"),
        roll("grace as string", r#"{"grace_period_seconds": "60"}"#).problem(422, "invalid_body"),
        roll("grace 1e999", r#"{"grace_period_seconds": 1e999}"#).problem(400, "malformed_json"),
        roll(
            "expiry in the past",
            r#"{"expires_at": "2001-01-01T00:00:00Z"}"#,
        )
        .problem(422, "invalid_field"),
        roll("expiry as word", r#"{"expires_at": "now"}"#).problem(422, "invalid_body"),
        verify("missing key", json!({"scopes": []})).problem(422, "invalid_body"),
        verify("key as number", json!({"key": 5})).problem(422, "invalid_body"),
        verify("key as object", json!({"key": {"value": f.admin}})).problem(422, "invalid_body"),
        verify(
            "scopes as string",
            json!({"key": f.worker, "scopes": f.worker}),
        )
        .problem(422, "invalid_body"),
        verify(
            "scope with space",
            json!({"key": f.worker, "scopes": ["a b"]}),
        )
        .problem(422, "invalid_field"),
        verify(
            "bearer line as scope",
            json!({"key": f.worker, "scopes": [format!("Bearer {}", f.admin)]}),
        )
        .problem(422, "invalid_field"),
        create_client("lifetime 0", client(json!({"token_lifetime_seconds": 0})))
            .problem(422, "invalid_field"),
        create_client("lifetime -1", client(json!({"token_lifetime_seconds": -1})))
            .problem(422, "invalid_field"),
        create_client(
            "lifetime over a day",
            client(json!({"token_lifetime_seconds": 86401})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "lifetime 2^63",
            client(json!({"token_lifetime_seconds": 9223372036854775808_u64})),
        )
        .problem(422, "invalid_body"),
        create_client(
            "lifetime 1e999",
            r#"{"name":"c","scopes":[],"token_lifetime_seconds":1e999}"#.into(),
        )
        .problem(400, "malformed_json"),
        create_client(
            "33 audiences",
            client(json!({"audiences": (0..33).map(|i| format!("a{i}")).collect::<Vec<_>>()})),
        )
        .problem(422, "invalid_field"),
        create_client("audience with space", client(json!({"audiences": ["a b"]})))
            .problem(422, "invalid_field"),
        create_client(
            "audience with Cyrillic",
            client(json!({"audiences": ["\u{0430}"]})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "default audience not allowed",
            client(json!({"default_audience": "b"})),
        )
        .problem(422, "invalid_field"),
        create_client("name with tab", client(json!({"name": "a\tb"})))
            .problem(422, "invalid_field"),
        create_client("jwks as array", client(json!({"jwks": []}))).problem(422, "invalid_field"),
        create_client("jwks without keys", client(json!({"jwks": {"keys": []}})))
            .problem(422, "invalid_field"),
        create_client(
            "jwks with private key",
            client(json!({"jwks": jwk_with("d", json!("AAAA"))})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "jwks of RSA",
            client(json!({"jwks": jwk_with("kty", json!("RSA"))})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "jwks with bad point",
            client(json!({"jwks": jwk_with("x", json!("AAAA"))})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "jwks kid with NUL",
            client(json!({"jwks": jwk_with("kid", json!("k\u{0}1"))})),
        )
        .problem(422, "invalid_field"),
        create_client(
            "jwks 200 deep",
            format!(
                r#"{{"name":"c","scopes":[],"jwks":{{"keys":{}}}}}"#,
                nested(200)
            ),
        )
        .problem(400, "malformed_json"),
        patch_client("empty object", json!({})).problem(422, "empty_update"),
        patch_client("lifetime 0", json!({"token_lifetime_seconds": 0}))
            .problem(422, "invalid_field"),
        patch_client(
            "default audience not allowed",
            json!({"default_audience": "z"}),
        )
        .problem(422, "invalid_field"),
        patch_client(
            "jwks kid with NUL",
            json!({"jwks": jwk_with("kid", json!("\u{0}"))}),
        )
        .problem(422, "invalid_field"),
        patch_client("scopes with quote", json!({"scopes": ["\""]})).problem(422, "invalid_field"),
        add_secret(
            "expiry in the past",
            r#"{"expires_at": "2001-01-01T00:00:00Z"}"#,
        )
        .problem(422, "invalid_field"),
        add_secret("expiry as word", r#"{"expires_at": "soon"}"#).problem(422, "invalid_body"),
        Case::new(
            "roll a revoked key",
            Method::POST,
            format!("/v1/keys/{}/roll", f.revoked_id),
        )
        .bearer(&f.admin)
        .problem(409, "key_revoked"),
    ]
}

/// Ids that are not a key id or a client id, as a path segment.
const WRONG_IDS: [(&str, &str); 8] = [
    ("short id", "abc"),
    ("id with a dash", "abc-defg"),
    ("SQL id", "'OR'1'='1"),
    ("percent-encoded invalid UTF-8", "%FF%FE%FD%FC"),
    ("percent-encoded NUL", "%00%00%00%00"),
    (
        "Cyrillic id",
        "%D0%B0%D0%B0%D0%B0%D0%B0%D0%B0%D0%B0%D0%B0%D0%B0",
    ),
    ("dot segments", "%2e%2e%2f%2e%2e"),
    ("JSON in the id", "%7B%22a%22%3A1%7D"),
];

/// Wrong and unknown ids in paths, and wrong query strings.
fn path_and_query_cases(f: &Fixtures) -> Vec<Case> {
    let mut cases = Vec::new();
    let key_routes = |id: &str| {
        vec![
            (Method::GET, format!("/v1/keys/{id}")),
            (Method::PATCH, format!("/v1/keys/{id}")),
            (Method::POST, format!("/v1/keys/{id}/roll")),
            (Method::POST, format!("/v1/keys/{id}/revoke")),
        ]
    };
    let client_routes = |id: &str| {
        vec![
            (Method::GET, format!("/v1/clients/{id}")),
            (Method::PATCH, format!("/v1/clients/{id}")),
            (Method::DELETE, format!("/v1/clients/{id}")),
            (Method::POST, format!("/v1/clients/{id}/secrets")),
        ]
    };
    // A body that would be valid, so only the id is wrong.
    let body_for = |method: &Method| {
        if *method == Method::PATCH {
            br#"{"name": "renamed"}"#.to_vec()
        } else {
            Vec::new()
        }
    };
    let mut push = |kind: &str, what: &str, routes: Vec<(Method, String)>, expect: Expect| {
        for (method, path) in routes {
            let body = body_for(&method);
            cases.push(
                Case::new(format!("{method} {kind}: {what}"), method, path)
                    .bearer(&f.admin)
                    .json(body)
                    .expect(expect),
            );
        }
    };
    for (what, id) in WRONG_IDS {
        push(
            "key",
            what,
            key_routes(id),
            Expect::Problem(400, "invalid_key_id"),
        );
        push(
            "client",
            what,
            client_routes(id),
            Expect::Problem(400, "invalid_client_id"),
        );
    }
    let unknown_key = Expect::Problem(404, "key_not_found");
    push("key", "unknown id", key_routes("AAAAAAAA"), unknown_key);
    let unknown_client = Expect::Problem(404, "client_not_found");
    push(
        "client",
        "unknown id",
        client_routes("AAAAAAAAAAAAAAAA"),
        unknown_client,
    );

    let list = |query: &str, code: &'static str| {
        Case::new(
            format!("list keys ?{query}"),
            Method::GET,
            format!("/v1/keys?{query}"),
        )
        .bearer(&f.admin)
        .problem(400, code)
    };
    let list_clients = |query: &str, code: &'static str| {
        Case::new(
            format!("list clients ?{query}"),
            Method::GET,
            format!("/v1/clients?{query}"),
        )
        .bearer(&f.admin)
        .problem(400, code)
    };
    cases.extend([
        list("limit=-1", "invalid_limit"),
        list("limit=1e2", "invalid_limit"),
        list("limit=0x10", "invalid_limit"),
        list("limit=%EF%BC%95", "invalid_limit"),
        list("limit=99999999999999999999999", "invalid_limit"),
        list("limit=", "invalid_limit"),
        list("limit=%00", "invalid_limit"),
        list("cursor='%20OR%201=1--", "invalid_cursor"),
        list("cursor=%FF%FE", "invalid_cursor"),
        list("owner=ac%E2%80%8Bme", "invalid_owner"),
        list("owner=%00", "invalid_owner"),
        list("l%D1%96mit=5", "invalid_query"),
        list("limit=1&limit=2", "invalid_query"),
        list("owner=a&owner=a", "invalid_query"),
        list("key=x", "invalid_query"),
        list_clients("limit=0", "invalid_limit"),
        list_clients("limit=%FF", "invalid_limit"),
        list_clients("cursor=%22%7D", "invalid_cursor"),
        list_clients("owner=acme", "invalid_query"),
        list_clients("cursor=a&cursor=b", "invalid_query"),
    ]);
    cases
}

/// Wrong methods on every route, and paths that are near a route but are not one.
fn route_cases(f: &Fixtures) -> Vec<Case> {
    let not_allowed = |method: Method, path: &str| {
        Case::new(format!("{method} {path}"), method, path)
            .bearer(&f.admin)
            .problem(405, "method_not_allowed")
    };
    let oauth_not_allowed = |method: Method, path: &str| {
        Case::new(format!("{method} {path}"), method, path).oauth(405, "invalid_request")
    };
    let worker_path = format!("/v1/keys/{}", f.worker_id);
    let client_path = format!("/v1/clients/{}", f.client_id);
    let not_found = |path: &str| {
        Case::new(format!("GET {path}"), Method::GET, path)
            .bearer(&f.admin)
            .problem(404, "route_not_found")
    };
    vec![
        not_allowed(Method::DELETE, "/v1/keys"),
        not_allowed(Method::PUT, "/v1/keys"),
        not_allowed(Method::PUT, &worker_path),
        not_allowed(Method::DELETE, &worker_path),
        not_allowed(Method::GET, &format!("{worker_path}/roll")),
        not_allowed(Method::DELETE, &format!("{worker_path}/revoke")),
        not_allowed(Method::PUT, "/v1/keys/verify"),
        not_allowed(Method::PUT, "/v1/clients"),
        not_allowed(Method::POST, &client_path),
        not_allowed(Method::GET, &format!("{client_path}/secrets")),
        not_allowed(Method::POST, "/healthz"),
        not_allowed(Method::DELETE, "/readyz"),
        not_allowed(Method::POST, "/metrics"),
        not_allowed(Method::POST, "/.well-known/jwks.json"),
        not_allowed(Method::PUT, "/.well-known/oauth-authorization-server"),
        not_allowed(Method::from_bytes(b"get").unwrap(), "/healthz"),
        not_allowed(Method::from_bytes(b"PROPFIND").unwrap(), "/v1/keys"),
        oauth_not_allowed(Method::GET, "/oauth/token"),
        oauth_not_allowed(Method::PUT, "/oauth/introspect"),
        oauth_not_allowed(Method::DELETE, "/oauth/revoke"),
        not_found("/v1/keys/"),
        not_found("/V1/KEYS"),
        not_found("//v1/keys"),
        not_found("/v1/keys/verify/"),
        not_found(&format!("{worker_path}/rotate")),
        not_found("/healthz/"),
        not_found("/.well-known/jwks.json%00"),
        not_found("/.well-known/openid-configuration"),
        not_found("/oauth/authorize"),
    ]
}

/// Wrong forms and client authentication at the three OAuth endpoints.
fn oauth_cases(f: &Fixtures) -> Vec<Case> {
    let basic = f.client_basic();
    let mut cases = Vec::new();
    for (path, base) in [
        ("/oauth/token", "grant_type=client_credentials"),
        ("/oauth/introspect", "token=x"),
        ("/oauth/revoke", "token=x"),
    ] {
        let case = |what: &str| {
            Case::new(format!("{path}: {what}"), Method::POST, path)
                .header("authorization", basic.clone())
        };
        cases.extend([
            case("JSON body")
                .json(r#"{"grant_type": "client_credentials", "token": "x"}"#)
                .oauth(400, "invalid_request"),
            case("no Content-Type")
                .body(base)
                .oauth(400, "invalid_request"),
            case("multipart")
                .header("content-type", "multipart/form-data; boundary=x")
                .body(base)
                .oauth(400, "invalid_request"),
            case("Content-Type twice")
                .form(base)
                .header("content-type", "application/json")
                .oauth(400, "invalid_request"),
            case("repeated parameter")
                .form(format!("{base}&{base}"))
                .oauth(400, "invalid_request"),
            case("body over 64 KiB")
                .form(format!("{base}&pad={}", "x".repeat(OVERSIZED)))
                .oauth(413, "invalid_request"),
            case("Authorization twice")
                .header("authorization", basic.clone())
                .form(base)
                .oauth(400, "invalid_request"),
            case("Basic and client_secret")
                .form(format!("{base}&client_id={}&client_secret=x", f.client_id))
                .oauth(400, "invalid_request"),
            case("other client_id than Basic")
                .form(format!("{base}&client_id=AAAAAAAAAAAAAAAA"))
                .oauth(400, "invalid_request"),
            case("client_assertion without type")
                .form(format!("{base}&client_assertion=a.b.c"))
                .oauth(400, "invalid_request"),
        ]);
        let anonymous = |what: &str| Case::new(format!("{path}: {what}"), Method::POST, path);
        cases.extend([
            anonymous("no client authentication")
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("Basic without colon")
                .header("authorization", format!("Basic {}", STANDARD.encode(&f.client_id)))
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("Basic not Base64")
                .header("authorization", "Basic !!!not base64!!!")
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("Basic with invalid UTF-8")
                .header("authorization", format!("Basic {}", STANDARD.encode(b"\xff\xfe:\xff")))
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("SQL client id")
                .header("authorization", Fixtures::basic("' OR '1'='1", &f.client_secret))
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("Cyrillic look-alike client id")
                .header(
                    "authorization",
                    Fixtures::basic(&f.client_id.replacen(|c: char| c.is_ascii_alphabetic(), "\u{0430}", 1), &f.client_secret),
                )
                .form(base)
                .oauth(401, "invalid_client"),
            anonymous("client_secret without client_id")
                .form(format!("{base}&client_secret=x"))
                .oauth(400, "invalid_request"),
            anonymous("wrong assertion type")
                .form(format!(
                    "{base}&client_assertion_type=jwt&client_assertion=a.b.c"
                ))
                .oauth(400, "invalid_request"),
            anonymous("garbage assertion")
                .form(format!(
                    "{base}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c"
                ))
                .oauth(401, "invalid_client"),
            anonymous("unsigned assertion")
                .form(format!(
                    "{base}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}",
                    unsigned_assertion(&f.client_id)
                ))
                .oauth(401, "invalid_client"),
            anonymous("admin key of wrong scope")
                .bearer(&f.worker)
                .form(base)
                .oauth(401, "invalid_client"),
        ]);
    }
    let token = |what: &str| {
        Case::new(
            format!("/oauth/token: {what}"),
            Method::POST,
            "/oauth/token",
        )
        .header("authorization", basic.clone())
    };
    cases.extend([
        token("no grant_type")
            .form("scope=orders:read")
            .oauth(400, "invalid_request"),
        token("password grant")
            .form("grant_type=password&username=a&password=b")
            .oauth(400, "unsupported_grant_type"),
        token("upper-case grant")
            .form("grant_type=CLIENT_CREDENTIALS")
            .oauth(400, "unsupported_grant_type"),
        token("grant with NUL")
            .form("grant_type=client_credentials%00")
            .oauth(400, "unsupported_grant_type"),
        token("grant of invalid UTF-8")
            .form("grant_type=%FF%FE")
            .oauth(400, "unsupported_grant_type"),
        token("Cyrillic look-alike parameter")
            .form("grant_t%D1%83pe=client_credentials")
            .oauth(400, "invalid_request"),
        token("scope not granted")
            .form("grant_type=client_credentials&scope=admin")
            .oauth(400, "invalid_scope"),
        token("SQL scope")
            .form("grant_type=client_credentials&scope=%27%3B%20DROP%20TABLE%20api_keys%3B--")
            .oauth(400, "invalid_scope"),
        token("resource not allowed")
            .form("grant_type=client_credentials&resource=https%3A%2F%2Fevil.example")
            .oauth(400, "invalid_target"),
        token("resource and audience")
            .form("grant_type=client_credentials&resource=a&audience=a")
            .oauth(400, "invalid_request"),
    ]);
    let introspect = |what: &str, path: &str| {
        Case::new(format!("{path}: {what}"), Method::POST, path)
            .header("authorization", basic.clone())
    };
    cases.extend([
        introspect("no token", "/oauth/introspect")
            .form("token_type_hint=x")
            .oauth(400, "invalid_request"),
        introspect("no token", "/oauth/revoke")
            .form("token_type_hint=x")
            .oauth(400, "invalid_request"),
        introspect("another's key", "/oauth/revoke")
            .form(format!("token={}", f.admin))
            .oauth(400, "unauthorized_client"),
        Case::new(
            "/oauth/revoke: admin key with client_secret",
            Method::POST,
            "/oauth/revoke",
        )
        .bearer(&f.admin)
        .form("token=x&client_secret=x")
        .oauth(400, "invalid_request"),
    ]);
    cases
}

/// Builds a client assertion with `alg: none` and no signature.
fn unsigned_assertion(client_id: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        json!({"iss": client_id, "sub": client_id, "aud": "x", "exp": 4102444800_u64, "jti": "j"});
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// Requests that forward auth rejects, with RFC 6750 challenges and no other body format.
fn forward_cases(f: &Fixtures) -> Vec<Case> {
    let case =
        |what: &str, path: &str| Case::new(format!("forward auth: {what}"), Method::GET, path);
    let path = "/v1/forward-auth";
    let scoped = "/v1/forward-auth?scope=orders:write";
    vec![
        case("no credential", path).challenge(401, None),
        case("no credential, POST with body", path)
            .json(format!("{{\"key\": \"{}\"}}", f.admin))
            .challenge(401, None),
        case(
            "admin key in the query",
            &format!("{path}?api_key={}", f.admin),
        )
        .challenge(401, None),
        case(
            "admin key as access_token",
            &format!("{path}?access_token={}", f.admin),
        )
        .challenge(401, None),
        case("Basic scheme", path)
            .header("authorization", format!("Basic {}", f.admin))
            .challenge(401, None),
        case("Bearer without a key", path)
            .header("authorization", "Bearer")
            .challenge(401, None),
        case("Authorization and X-API-Key", path)
            .bearer(&f.admin)
            .header("x-api-key", f.admin.clone())
            .challenge(400, Some("invalid_request")),
        case("X-API-Key twice", path)
            .header("x-api-key", f.worker.clone())
            .header("x-api-key", f.admin.clone())
            .challenge(400, Some("invalid_request")),
        case("Authorization twice", path)
            .bearer(&f.worker)
            .bearer(&f.admin)
            .challenge(400, Some("invalid_request")),
        case("scope twice", "/v1/forward-auth?scope=a&scope=b")
            .bearer(&f.admin)
            .challenge(400, Some("invalid_request")),
        case("scope with a quote", "/v1/forward-auth?scope=%22")
            .bearer(&f.admin)
            .challenge(400, Some("invalid_request")),
        case(
            "scope with a key",
            &format!("/v1/forward-auth?scope={}%20%5C", f.admin),
        )
        .bearer(&f.admin)
        .challenge(400, Some("invalid_request")),
        case("scope header twice", path)
            .bearer(&f.worker)
            .header("x-valet-required-scopes", "orders:read")
            .header("x-valet-required-scopes", "orders:write")
            .challenge(400, Some("invalid_request")),
        case("scope header of invalid UTF-8", path)
            .bearer(&f.worker)
            .header("x-valet-required-scopes", b"orders:write \xff".to_vec())
            .challenge(400, Some("invalid_request")),
        case("scope header with Cyrillic", path)
            .bearer(&f.worker)
            .header("x-valet-required-scopes", "orders:r\u{0435}ad")
            .challenge(400, Some("invalid_request")),
        case("key lacks scope", scoped)
            .bearer(&f.worker)
            .challenge(403, Some("insufficient_scope")),
        case("token lacks scope", scoped)
            .bearer(&f.token)
            .challenge(403, Some("insufficient_scope")),
        case("token with a flipped signature", path)
            .bearer(&flip_last(&f.token))
            .challenge(401, Some("invalid_token")),
        case("token without signature", path)
            .bearer(&format!("{}.", f.token.rsplit_once('.').unwrap().0))
            .challenge(401, Some("invalid_token")),
        case("unsigned token", path)
            .bearer(&unsigned_assertion(&f.client_id))
            .challenge(401, Some("invalid_token")),
        case("client secret lacks scope", scoped)
            .header("x-api-key", f.client_secret.clone())
            .challenge(403, Some("insufficient_scope")),
        case("empty X-API-Key", path)
            .header("x-api-key", "")
            .challenge(401, Some("invalid_token")),
        case("X-API-Key of invalid UTF-8", path)
            .header("x-api-key", b"vk_live_\xff\xfe".to_vec())
            .challenge(401, Some("invalid_token")),
        Case::new(
            "forward auth: PROPFIND without credential",
            Method::from_bytes(b"PROPFIND").unwrap(),
            path,
        )
        .challenge(401, None),
    ]
}

/// Changes the last character of `text`, which must be base64url.
fn flip_last(text: &str) -> String {
    let mut flipped = text.to_owned();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    flipped
}

/// Bytes sent over raw TCP, where reqwest would reject them or would correct them.
fn protocol_cases(f: &Fixtures) -> Vec<Case> {
    let admin = format!("Authorization: Bearer {}\r\n", f.admin).into_bytes();
    let with = |lines: &[&[u8]]| lines.concat();
    let json_head = |length: usize| {
        with(&[
            &admin,
            b"Content-Type: application/json\r\n",
            format!("Content-Length: {length}\r\n").as_bytes(),
        ])
    };
    let chunked_json = with(&[
        &admin,
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    ]);
    let chunked_form = with(&[
        f.client_basic_header().as_bytes(),
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n",
    ]);
    let mut many_headers = Vec::new();
    for i in 0..120 {
        many_headers.extend_from_slice(format!("X-Filler-{i}: x\r\n").as_bytes());
    }
    let create = br#"{"name":"n","scopes":[]}"#;
    let big_chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", OVERSIZED, "x".repeat(OVERSIZED));
    let hyper = |what: &str, bytes: Vec<u8>, status: u16| {
        Case::raw(format!("raw: {what}"), bytes, Expect::Hyper(status))
    };
    let valet = |what: &str, bytes: Vec<u8>, expect: Expect| {
        Case::raw(format!("raw: {what}"), bytes, expect)
    };

    vec![
        hyper(
            "header name with a space",
            raw_request("GET", "/healthz", b"Bad Header: x\r\n", b""),
            400,
        ),
        hyper(
            "header line without colon",
            raw_request("GET", "/v1/keys", b"Authorization\r\n", b""),
            400,
        ),
        hyper(
            "Cyrillic letter in header name",
            raw_request("GET", "/v1/keys", "\u{0410}uthorization: x\r\n".as_bytes(), b""),
            400,
        ),
        hyper(
            "NUL in a header value",
            raw_request("GET", "/v1/keys", b"Authorization: Bearer \0\r\n", b""),
            400,
        ),
        hyper(
            "folded header line",
            raw_request("GET", "/v1/keys", b"X-Folded: a\r\n b\r\n", b""),
            400,
        ),
        hyper(
            "two different Content-Length",
            raw_request(
                "POST",
                "/v1/keys",
                b"Content-Length: 2\r\nContent-Length: 3\r\n",
                b"{}",
            ),
            400,
        ),
        hyper(
            "Content-Length not a number",
            raw_request("POST", "/v1/keys", b"Content-Length: two\r\n", b"{}"),
            400,
        ),
        hyper(
            "negative Content-Length",
            raw_request("POST", "/v1/keys", b"Content-Length: -1\r\n", b""),
            400,
        ),
        hyper(
            "Content-Length of 2^64",
            raw_request("POST", "/oauth/token", b"Content-Length: 18446744073709551616\r\n", b""),
            400,
        ),
        hyper(
            "Transfer-Encoding not ending in chunked",
            raw_request("POST", "/v1/keys", b"Transfer-Encoding: gzip\r\n", b"{}"),
            400,
        ),
        hyper(
            "invalid UTF-8 in the path",
            b"GET /v1/keys/\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        hyper(
            "space in the path",
            b"GET /v1/keys /x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        hyper("HTTP/2.0 version", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 400),
        hyper("HTTP/9.9 version", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), 400),
        hyper("method with a slash", b"G/T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        hyper("request line of garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), 400),
        hyper(
            "URI over 64 KiB",
            raw_request("GET", &format!("/v1/keys?owner={}", "a".repeat(70_000)), b"", b""),
            431,
        ),
        hyper(
            "header block over 64 KiB",
            raw_request(
                "GET",
                "/healthz",
                format!("X-Filler: {}\r\n", "a".repeat(MAX_HEADER_BYTES)).as_bytes(),
                b"",
            ),
            431,
        ),
        hyper(
            "120 header lines",
            raw_request("GET", "/readyz", &many_headers, b""),
            431,
        ),

        valet(
            "encoded dot segments",
            raw_request("GET", "/v1/%2e%2e/healthz", b"", b""),
            Expect::Problem(404, "route_not_found"),
        ),
        valet(
            "invalid UTF-8 in the bearer key",
            raw_request("GET", "/v1/keys", b"Authorization: Bearer vk_live_\xff\xfe\r\n", b""),
            Expect::Problem(401, "invalid_token"),
        ),
        valet(
            "Latin-1 in the Content-Type",
            raw_request(
                "POST",
                "/v1/keys",
                &with(&[&admin, b"Content-Type: application/j\xe9son\r\nContent-Length: 24\r\n"]),
                create,
            ),
            Expect::Problem(415, "unsupported_media_type"),
        ),
        valet(
            "invalid UTF-8 in X-API-Key",
            raw_request("GET", "/v1/forward-auth", b"X-API-Key: \xc3\x28\r\n", b""),
            Expect::Challenge(401, Some("invalid_token")),
        ),
        valet(
            "invalid UTF-8 in Basic for the token endpoint",
            raw_request(
                "POST",
                "/oauth/token",
                b"Authorization: Basic \xff\xfe\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n",
                b"grant_type=client_credentials",
            ),
            Expect::OAuth(401, "invalid_client"),
        ),
        valet(
            "32 KiB bearer key",
            raw_request(
                "GET",
                "/v1/keys",
                format!("Authorization: Bearer {}\r\n", "A".repeat(32 * 1024)).as_bytes(),
                b"",
            ),
            Expect::Problem(401, "invalid_token"),
        ),
        valet(
            "two equal Content-Length with invalid JSON",
            raw_request(
                "POST",
                "/v1/keys",
                &with(&[&json_head(1), b"Content-Length: 1\r\n"]),
                b"{",
            ),
            Expect::Problem(400, "malformed_json"),
        ),
        valet(
            "chunk size not hex",
            raw_request("POST", "/v1/keys", &chunked_json, b"zz\r\n{}\r\n0\r\n\r\n"),
            Expect::Problem(400, "unreadable_body"),
        ),
        valet(
            "chunk size overflowing 64 bits",
            raw_request(
                "POST",
                "/v1/keys",
                &chunked_json,
                b"fffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
            ),
            Expect::Problem(400, "unreadable_body"),
        ),
        valet(
            "chunk longer than its size",
            raw_request(
                "POST",
                "/v1/keys/verify",
                &chunked_json,
                b"2\r\n{}}}}\r\n0\r\n\r\n",
            ),
            Expect::Problem(400, "unreadable_body"),
        ),
        valet(
            "chunks over 64 KiB",
            raw_request("POST", "/v1/clients", &chunked_json, big_chunk.as_bytes()),
            Expect::Problem(413, "body_too_large"),
        ),
        valet(
            "Content-Length over 64 KiB without a body",
            raw_request("POST", "/v1/keys", &json_head(10_000_000), b""),
            Expect::Problem(413, "body_too_large"),
        ),
        valet(
            "chunk size not hex at the token endpoint",
            raw_request("POST", "/oauth/token", &chunked_form, b"zz\r\nx\r\n0\r\n\r\n"),
            Expect::OAuth(400, "invalid_request"),
        ),
        valet(
            "chunks over 64 KiB at the revocation endpoint",
            raw_request("POST", "/oauth/revoke", &chunked_form, big_chunk.as_bytes()),
            Expect::OAuth(413, "invalid_request"),
        ),
        valet(
            "Content-Length over 64 KiB at the introspection endpoint",
            raw_request(
                "POST",
                "/oauth/introspect",
                &with(&[
                    f.client_basic_header().as_bytes(),
                    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000000\r\n",
                ]),
                b"",
            ),
            Expect::OAuth(413, "invalid_request"),
        ),
    ]
}

impl Fixtures {
    fn client_basic_header(&self) -> String {
        format!("Authorization: {}\r\n", self.client_basic())
    }
}

/// Builds the whole corpus.
fn corpus(f: &Fixtures) -> Vec<Case> {
    [
        authorization_cases(f),
        wrong_key_cases(f),
        json_body_cases(f),
        field_cases(f),
        path_and_query_cases(f),
        route_cases(f),
        oauth_cases(f),
        forward_cases(f),
        protocol_cases(f),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A response as the test received it.
struct Answer {
    status: u16,
    /// Header names in lowercase.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Whether the server closed the connection; known only for raw cases.
    closed: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }

    /// Returns the body as text with anything key-like removed, for failure messages.
    fn shown_body(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.chars().take(300).collect();
        valet::redact::redact_keys(&text, "vk")
    }
}

async fn send(app: &TestApp, wire: &Wire) -> Result<Answer, String> {
    match wire {
        Wire::Client {
            method,
            path,
            headers,
            body,
        } => {
            let mut request = app.client.request(method.clone(), app.url(path));
            for (name, value) in headers {
                let value = reqwest::header::HeaderValue::from_bytes(value)
                    .map_err(|err| format!("reqwest refuses the header {name}: {err}"))?;
                request = request.header(name.as_str(), value);
            }
            let response = request
                .body(body.clone())
                .send()
                .await
                .map_err(|err| format!("request failed: {err}"))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect();
            let body = response
                .bytes()
                .await
                .map_err(|err| format!("response body failed: {err}"))?;
            Ok(Answer {
                status,
                headers,
                body: body.to_vec(),
                closed: false,
            })
        }
        Wire::Raw(bytes) => send_raw(app, bytes).await,
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it.
async fn send_raw(app: &TestApp, bytes: &[u8]) -> Result<Answer, String> {
    let address = app.address.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|err| format!("connect failed: {err}"))?;
    // The server may answer and close before it has read everything, so a failed write
    // is not an error of the case; the response decides.
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return true,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    let closed = tokio::time::timeout(RAW_LIMIT, reading)
        .await
        .unwrap_or(false);
    parse_response(&received, closed)
}

fn parse_response(bytes: &[u8], closed: bool) -> Result<Answer, String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "no complete response head in {} bytes (closed: {closed})",
            bytes.len()
        ));
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().as_bytes().to_vec()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<usize>().ok());
    if let Some(length) = length {
        body.truncate(length);
    }
    Ok(Answer {
        status,
        headers,
        body,
        closed,
    })
}

/// Returns why `answer` does not fit `expect`, if it does not.
fn check_format(expect: Expect, answer: &Answer) -> Result<(), String> {
    let json = || {
        serde_json::from_slice::<Value>(&answer.body)
            .map_err(|err| format!("body is not JSON ({err}): {}", answer.shown_body()))
    };
    let content_type = answer.header("content-type").unwrap_or_default();
    let challenge = answer.header("www-authenticate");
    match expect {
        Expect::Problem(status, code) => {
            if content_type != "application/problem+json" {
                return Err(format!(
                    "content type {content_type:?}, not problem details"
                ));
            }
            let body = json()?;
            if body["code"] != code || body["status"] != status {
                return Err(format!("problem {} instead of {code}", answer.shown_body()));
            }
            if body["detail"].as_str().is_none_or(str::is_empty) {
                return Err("problem without detail".to_owned());
            }
            if status == 401 && !challenge.is_some_and(|c| c.starts_with("Bearer realm=")) {
                return Err("401 without a Bearer challenge".to_owned());
            }
        }
        Expect::OAuth(status, error) => {
            if !content_type.starts_with("application/json") {
                return Err(format!("content type {content_type:?}, not JSON"));
            }
            let body = json()?;
            if body["error"] != error {
                return Err(format!("error {} instead of {error}", answer.shown_body()));
            }
            if body["error_description"].as_str().is_none_or(str::is_empty) {
                return Err("OAuth error without error_description".to_owned());
            }
            if answer.header("cache-control").as_deref() != Some("no-store")
                || answer.header("pragma").as_deref() != Some("no-cache")
            {
                return Err("OAuth error without no-store and no-cache".to_owned());
            }
            if status == 401 && challenge.is_none() {
                return Err("401 without WWW-Authenticate".to_owned());
            }
        }
        Expect::Challenge(_, error) => {
            let Some(challenge) = challenge else {
                return Err("no WWW-Authenticate challenge".to_owned());
            };
            let named = |error: &str| challenge.contains(&format!("error=\"{error}\""));
            let fits = challenge.starts_with("Bearer realm=\"valet\"")
                && match error {
                    Some(error) => named(error),
                    None => !challenge.contains("error="),
                };
            if !fits {
                return Err(format!("challenge {challenge:?}"));
            }
        }
        Expect::Hyper(_) => {
            if !answer.body.is_empty() {
                return Err(format!("body {} from hyper", answer.shown_body()));
            }
            if !answer.closed {
                return Err("connection left open after a request that is not HTTP".to_owned());
            }
        }
    }
    Ok(())
}

/// Returns every run of 32 or more ASCII letters and digits in `bytes`: a run that long
/// may be a secret.
fn secret_like_runs(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|b| !b.is_ascii_alphanumeric())
        .filter(|run| run.len() >= 32)
        .collect()
}

/// Runs one case and returns why it failed, if it did.
async fn run_case(app: &TestApp, case: &Case) -> Result<(), String> {
    let answer = send(app, &case.wire).await?;
    if answer.status >= 500 {
        return Err(format!(
            "server error {}: {}",
            answer.status,
            answer.shown_body()
        ));
    }
    if answer.status != case.expect.status() {
        return Err(format!(
            "status {} instead of {}: {}",
            answer.status,
            case.expect.status(),
            answer.shown_body()
        ));
    }
    check_format(case.expect, &answer)?;

    let mut response = answer.body.clone();
    for (name, value) in &answer.headers {
        response.extend_from_slice(name.as_bytes());
        response.extend_from_slice(value);
    }
    let request = case.request_bytes();
    let echoed = secret_like_runs(&request)
        .into_iter()
        .any(|run| response.windows(run.len()).any(|window| window == run));
    if echoed {
        return Err("the response repeats a secret-like part of the request".to_owned());
    }
    Ok(())
}

async fn assert_healthy(app: &TestApp, after: &str) {
    let response = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("/healthz after {after:?}: {err}"));
    assert_eq!(response.status(), 200, "/healthz after {after:?}");
}

/// Reads every row of every table of the app's store as text, by table, leaving out
/// `api_keys.last_used_at`, which valid verifications of the admin key may move.
async fn store_rows(app: &TestApp, backend: Backend) -> BTreeMap<String, Vec<String>> {
    use sqlx::{Connection, Row};
    const SKIPPED: [(&str, &str); 1] = [("api_keys", "last_used_at")];
    let keep = |table: &str, column: &str| !SKIPPED.contains(&(table, column));
    let mut rows = BTreeMap::new();
    match backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&app.store_url())
                .await
                .expect("open the SQLite store");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap();
            for table in tables {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                        .bind(&table)
                        .fetch_all(&mut connection)
                        .await
                        .unwrap();
                let quoted: Vec<String> = columns
                    .iter()
                    .filter(|column| keep(&table, column))
                    .map(|column| format!("quote(\"{column}\")"))
                    .collect();
                let sql = format!("SELECT {} FROM \"{table}\"", quoted.join(" || '|' || "));
                let mut values: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut connection)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get::<String, _>(0))
                    .collect();
                values.sort();
                rows.insert(table, values);
            }
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&app.store_url())
                .await
                .expect("connect to the test schema");
            let columns: Vec<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap();
            let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (table, column) in columns {
                if keep(&table, &column) {
                    tables
                        .entry(table)
                        .or_default()
                        .push(format!("quote_nullable(\"{column}\")"));
                }
            }
            for (table, quoted) in tables {
                let sql = format!("SELECT {} FROM \"{table}\"", quoted.join(" || '|' || "));
                let mut values: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut connection)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get::<String, _>(0))
                    .collect();
                values.sort();
                rows.insert(table, values);
            }
        }
    }
    rows
}

/// Lists every row that is in only one of two readings of the store.
fn row_changes(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let tables: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for table in tables {
        let old = before.get(table).map(Vec::as_slice).unwrap_or_default();
        let new = after.get(table).map(Vec::as_slice).unwrap_or_default();
        for row in old.iter().filter(|row| !new.contains(row)) {
            changes.push(format!("row gone from {table}: {row}"));
        }
        for row in new.iter().filter(|row| !old.contains(row)) {
            changes.push(format!("row new in {table}: {row}"));
        }
    }
    changes
}

async fn hostile_requests_get_specific_4xx(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixtures = Fixtures::create(&app).await;
    let cases = corpus(&fixtures);
    assert!(cases.len() >= 200, "the corpus has {} cases", cases.len());
    let before = store_rows(&app, backend).await;
    assert!(
        before["api_keys"].len() >= 5,
        "the fixtures are in the store"
    );

    let mut failures = Vec::new();
    for case in &cases {
        if let Err(reason) = run_case(&app, case).await {
            failures.push(format!("{}: {reason}", case.name));
        }
        assert_healthy(&app, &case.name).await;
    }

    let after = store_rows(&app, backend).await;
    failures.extend(row_changes(&before, &after));
    assert!(
        failures.is_empty(),
        "{} failures in {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
