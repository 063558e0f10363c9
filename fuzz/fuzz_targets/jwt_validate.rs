//! Fuzzes the validation of access tokens (`OAuthService::decode_access_token`, which
//! introspection, revocation and forward auth call) and of `private_key_jwt` client
//! assertions (`OAuthService::authenticate_assertion`), against real keys in a SQLite
//! store.
//!
//! Input: a mode byte, then text. The mode byte's bits:
//! - bit 0: 0 checks an access token, 1 a client assertion.
//! - bit 1: 0 signs with the ES256 key, 1 with the EdDSA key (the server's for access
//!   tokens, the client's for assertions).
//! - bits 2 and 3: 0 presents the text as it is. 1 reads the text as a JOSE header, a
//!   newline and the claims, and signs them with the real key. 2 forges them instead (see
//!   bits 4 and 5). 3 signs them, then overwrites the token from a byte position with a
//!   replacement, both given on a third line as `<position> <replacement>`.
//! - bits 4 and 5, for a forgery: 0 signs with another key of the same algorithm, 1 with
//!   HS256 keyed with the public key, 2 sends an empty signature, 3 sends the real
//!   signature of different claims.
//! - bit 6, for an assertion: also sends the client's id as the form's `client_id`.
//!
//! In the header and claims, `$KID`, `$ISS`, `$CLIENT`, `$NOW`, `$EXP` and `$JTI` become
//! the signing key's id, the server's issuer, the registered client's id, the current
//! Unix time, ten minutes later, and a token id not used before.
//!
//! Properties: a token whose header and claims the real key did not sign is never
//! accepted. An accepted token meets every rule of its kind, read from its JSON without
//! jsonwebtoken. An accepted assertion is rejected when presented again.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use time::OffsetDateTime;
use valet::key::KeyFormat;
use valet::model::{KeyName, Scopes};
use valet::oauth::client::check_jwks;
use valet::oauth::service::{NewClient, OAuthService, VerifiedToken};
use valet::oauth::signing::{SigningAlgorithm, SigningKeyRecord};
use valet::service::KeyService;
use valet_fuzz::split_line;

/// The server's issuer. It names no server: nothing here makes a network request.
const ISSUER: &str = "https://valet.example";
const AUDIENCE: &str = "https://api.example";
/// How far in the future an assertion's `iat` or `nbf` may be, as the server allows.
const ASSERTION_SKEW_SECONDS: i64 = 5;
/// Maximum lifetime an assertion may claim, as the server allows.
const MAX_ASSERTION_LIFETIME_SECONDS: i64 = 3_600;

/// The server, its client and the keys that the modes sign with, set up once per process.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    oauth: OAuthService,
    client_id: String,
    /// The server's published signing keys: ES256, then EdDSA.
    server_keys: [SigningKeyRecord; 2],
    /// The private halves of the client's registered JWK set: ES256, then EdDSA.
    client_keys: [SigningKeyRecord; 2],
    /// Keys published nowhere: ES256, then EdDSA.
    other_keys: [SigningKeyRecord; 2],
    next_jti: AtomicU64,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let url = format!("sqlite://{}", store_dir().join("valet.db").display());
        let now = OffsetDateTime::now_utc();
        let generate = |algorithm| SigningKeyRecord::generate(algorithm, now, now).unwrap();
        let client_keys = [
            generate(SigningAlgorithm::Es256),
            generate(SigningAlgorithm::EdDsa),
        ];
        let other_keys = [
            generate(SigningAlgorithm::Es256),
            generate(SigningAlgorithm::EdDsa),
        ];
        let jwks = json!({ "keys": [client_keys[0].public_jwk, client_keys[1].public_jwk] });
        let jwks = check_jwks(&jwks).expect("the client's JWK set is valid");

        let (oauth, client_id, server_keys) = runtime.block_on(async {
            let store = valet::store::connect(&url, true)
                .await
                .expect("SQLite store");
            let keys = Arc::new(KeyService::new(store.clone(), KeyFormat::default()));
            let oauth = OAuthService::new(keys, ISSUER.to_owned());
            oauth
                .ensure_signing_key(SigningAlgorithm::Es256)
                .await
                .expect("ES256 signing key");
            oauth
                .rotate_signing_key(SigningAlgorithm::EdDsa, time::Duration::ZERO)
                .await
                .expect("EdDSA signing key");
            let published = store.signing_keys().await.expect("signing keys");
            let find = |algorithm| {
                published
                    .iter()
                    .find(|key| key.algorithm == algorithm)
                    .cloned()
                    .expect("a published key of each algorithm")
            };
            let server_keys = [find(SigningAlgorithm::Es256), find(SigningAlgorithm::EdDsa)];
            let client = NewClient {
                name: KeyName::parse("fuzz client").unwrap(),
                owner: None,
                scopes: Scopes::parse("scopes", &["orders:read"]).unwrap(),
                audiences: vec![AUDIENCE.to_owned()],
                default_audience: Some(AUDIENCE.to_owned()),
                token_lifetime_seconds: None,
                jwks: Some(jwks),
            };
            let created = oauth.create_client(client).await.expect("client");
            (oauth, created.client.id, server_keys)
        });
        Self {
            runtime,
            oauth,
            client_id,
            server_keys,
            client_keys,
            other_keys,
            next_jti: AtomicU64::new(0),
        }
    }
}

/// Creates an empty directory for this process's store under `fuzz/target`, which Git
/// ignores. libFuzzer exits without running destructors, so each process instead removes
/// the directories of processes that have ended.
fn store_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/jwt_validate_stores");
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            let pid = entry.file_name();
            if !Path::new("/proc").join(&pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("store directory under fuzz/target");
    dir
}

/// The choices encoded in the mode byte.
#[derive(Clone, Copy)]
struct Mode {
    assertion: bool,
    eddsa: bool,
    build: Build,
    send_client_id: bool,
}

#[derive(Clone, Copy)]
enum Build {
    Raw,
    Signed,
    Forged(Forgery),
    Edited,
}

#[derive(Clone, Copy)]
enum Forgery {
    OtherKey,
    HmacWithPublicKey,
    EmptySignature,
    SignatureOfOtherClaims,
}

impl Mode {
    fn from_byte(byte: u8) -> Self {
        let forgery = match (byte >> 4) & 3 {
            0 => Forgery::OtherKey,
            1 => Forgery::HmacWithPublicKey,
            2 => Forgery::EmptySignature,
            _ => Forgery::SignatureOfOtherClaims,
        };
        let build = match (byte >> 2) & 3 {
            0 => Build::Raw,
            1 => Build::Signed,
            2 => Build::Forged(forgery),
            _ => Build::Edited,
        };
        Self {
            assertion: byte & 1 != 0,
            eddsa: byte & 2 != 0,
            build,
            send_client_id: byte & 0x40 != 0,
        }
    }
}

/// A token to present, with the header and claims that the real key signed, if any.
struct Token {
    text: String,
    signed: Option<Signed>,
}

struct Signed {
    /// `<header>.<claims>` in base64url, as the key signed it.
    signing_input: String,
    header: Value,
    claims: Value,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = Mode::from_byte(mode);
    let fixture = &*FIXTURE;
    let Some(token) = build_token(fixture, mode, rest) else {
        return;
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if mode.assertion {
        check_assertion(fixture, mode, &token, now);
    } else {
        check_access_token(fixture, &token, now);
    }
});

fn build_token(fixture: &Fixture, mode: Mode, rest: &[u8]) -> Option<Token> {
    let text = std::str::from_utf8(rest).ok()?;
    if let Build::Raw = mode.build {
        return Some(Token {
            text: text.to_owned(),
            signed: None,
        });
    }

    let index = usize::from(mode.eddsa);
    let key = if mode.assertion {
        &fixture.client_keys[index]
    } else {
        &fixture.server_keys[index]
    };
    let (Some(header), rest) = split_line(text.as_bytes()) else {
        return None;
    };
    let (claims, edit) = match split_line(rest) {
        (Some(claims), edit) => (claims, Some(edit)),
        (None, claims) => (claims, None),
    };
    let header = substitute(fixture, key, std::str::from_utf8(header).ok()?);
    let claims = substitute(fixture, key, std::str::from_utf8(claims).ok()?);
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&header),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    let sign = |key: &SigningKeyRecord, message: &str| {
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding_key(), key.jwt_algorithm())
            .expect("signing with a generated key")
    };

    let token = match mode.build {
        Build::Raw => unreachable!("handled above"),
        Build::Signed | Build::Edited => {
            let signature = sign(key, &signing_input);
            let mut text = format!("{signing_input}.{signature}");
            if let (Build::Edited, Some(edit)) = (mode.build, edit) {
                text = apply_edit(&text, std::str::from_utf8(edit).ok()?)?;
            }
            Token {
                text,
                signed: Some(Signed {
                    signing_input,
                    header: serde_json::from_str(&header).unwrap_or(Value::Null),
                    claims: serde_json::from_str(&claims).unwrap_or(Value::Null),
                }),
            }
        }
        Build::Forged(forgery) => {
            let signature = match forgery {
                Forgery::OtherKey => sign(&fixture.other_keys[index], &signing_input),
                Forgery::HmacWithPublicKey => {
                    let public = key.public_jwk["x"].as_str().expect("a public JWK has x");
                    let hmac = EncodingKey::from_secret(public.as_bytes()).expect("HMAC key");
                    jsonwebtoken::crypto::sign(signing_input.as_bytes(), &hmac, Algorithm::HS256)
                        .expect("HMAC signing")
                }
                Forgery::EmptySignature => String::new(),
                Forgery::SignatureOfOtherClaims => {
                    let other = format!(
                        "{}.{}",
                        URL_SAFE_NO_PAD.encode(&header),
                        URL_SAFE_NO_PAD.encode(format!("{claims} "))
                    );
                    sign(key, &other)
                }
            };
            Token {
                text: format!("{signing_input}.{signature}"),
                signed: None,
            }
        }
    };
    Some(token)
}

fn substitute(fixture: &Fixture, key: &SigningKeyRecord, text: &str) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let jti = fixture.next_jti.fetch_add(1, Ordering::Relaxed);
    text.replace("$KID", &key.kid)
        .replace("$ISS", ISSUER)
        .replace("$CLIENT", &fixture.client_id)
        .replace("$NOW", &now.to_string())
        .replace("$EXP", &(now + 600).to_string())
        .replace("$JTI", &format!("fuzz-{jti}"))
}

/// Overwrites `token` from a byte position with a replacement, as `<position> <text>`.
fn apply_edit(token: &str, edit: &str) -> Option<String> {
    let (position, replacement) = edit.split_once(' ')?;
    let position = position.parse::<usize>().ok()? % (token.len() + 1);
    let mut bytes = token.as_bytes().to_vec();
    let end = (position + replacement.len()).min(bytes.len());
    bytes.splice(position..end, replacement.bytes());
    // The token is ASCII, so overwriting whole ASCII bytes with UTF-8 keeps it UTF-8.
    Some(String::from_utf8(bytes).expect("UTF-8 over ASCII"))
}

/// Returns the header and claims that the real key signed for this token, or panics: a
/// token accepted without them is a forgery.
fn signed_part<'a>(token: &'a Token, kind: &str) -> &'a Signed {
    let Some(signed) = &token.signed else {
        panic!("accepted a forged {kind}: {:?}", token.text);
    };
    let presented = token.text.rsplit_once('.').map(|(input, _)| input);
    assert_eq!(
        presented,
        Some(signed.signing_input.as_str()),
        "accepted a {kind} whose header or claims changed after signing"
    );
    signed
}

fn check_access_token(fixture: &Fixture, token: &Token, now: i64) {
    let Some(verified) = fixture.oauth.decode_access_token(&token.text) else {
        return;
    };
    let signed = signed_part(token, "access token");
    let (header, claims) = (&signed.header, &signed.claims);

    let key = fixture
        .server_keys
        .iter()
        .find(|key| header["kid"].as_str() == Some(key.kid.as_str()))
        .expect("accepted a token whose kid is no published key");
    assert_eq!(header["alg"].as_str(), Some(key.algorithm.as_str()));
    assert_eq!(header["typ"].as_str(), Some("at+jwt"));
    assert_eq!(claims["iss"].as_str(), Some(ISSUER));
    let exp = claims["exp"]
        .as_i64()
        .expect("accepted a token without an integer exp");
    assert!(exp >= now, "accepted an expired token");
    assert_claims_match(&verified, claims);
}

/// Checks that the claims Valet returned are the ones in the token's JSON.
fn assert_claims_match(verified: &VerifiedToken, claims: &Value) {
    let text = |name: &str| claims[name].as_str();
    assert_eq!(text("iss"), Some(verified.iss.as_str()));
    assert_eq!(text("sub"), Some(verified.sub.as_str()));
    assert_eq!(text("aud"), Some(verified.aud.as_str()));
    assert_eq!(text("jti"), Some(verified.jti.as_str()));
    assert_eq!(text("client_id"), Some(verified.client_id.as_str()));
    assert_eq!(text("scope"), Some(verified.scope.as_str()));
    assert_eq!(claims["exp"].as_i64(), Some(verified.exp));
    assert_eq!(claims["iat"].as_i64(), Some(verified.iat));
}

fn check_assertion(fixture: &Fixture, mode: Mode, token: &Token, now: i64) {
    let client_id = mode.send_client_id.then_some(fixture.client_id.as_str());
    let authenticate = || {
        fixture
            .runtime
            .block_on(fixture.oauth.authenticate_assertion(client_id, &token.text))
    };
    let Ok(client) = authenticate() else {
        return;
    };
    let after = OffsetDateTime::now_utc().unix_timestamp();
    let signed = signed_part(token, "client assertion");
    let (header, claims) = (&signed.header, &signed.claims);

    assert_eq!(client.id, fixture.client_id);
    let alg = header["alg"].as_str();
    assert!(
        matches!(alg, Some("ES256" | "EdDSA")),
        "accepted alg {alg:?}"
    );
    if let Some(kid) = header.get("kid") {
        let known = fixture
            .client_keys
            .iter()
            .any(|key| kid.as_str() == Some(key.kid.as_str()));
        assert!(known, "accepted an assertion whose kid is no client key");
    }
    assert_eq!(claims["iss"].as_str(), Some(fixture.client_id.as_str()));
    assert_eq!(claims["sub"].as_str(), Some(fixture.client_id.as_str()));
    let audiences = [
        ISSUER.to_owned(),
        format!("{ISSUER}/oauth/token"),
        format!("{ISSUER}/oauth/introspect"),
        format!("{ISSUER}/oauth/revoke"),
    ];
    let names_server = |aud: &Value| {
        aud.as_str()
            .is_some_and(|aud| audiences.iter().any(|a| a == aud))
    };
    let aud = &claims["aud"];
    let aud_ok = names_server(aud)
        || aud
            .as_array()
            .is_some_and(|list| list.iter().any(names_server));
    assert!(aud_ok, "accepted an assertion for another audience: {aud}");
    let exp = claims["exp"]
        .as_i64()
        .expect("accepted an assertion without an integer exp");
    assert!(exp >= now, "accepted an expired assertion");
    assert!(
        exp <= after + MAX_ASSERTION_LIFETIME_SECONDS,
        "accepted a long-lived assertion"
    );
    for name in ["iat", "nbf"] {
        if let Some(at) = claims[name].as_i64() {
            assert!(
                at <= after + ASSERTION_SKEW_SECONDS,
                "accepted an early {name}"
            );
        }
    }
    let jti = claims["jti"]
        .as_str()
        .expect("accepted an assertion without a jti");
    assert!(!jti.is_empty());

    assert!(authenticate().is_err(), "accepted a replayed assertion");
}
