//! OAuth 2.0 client credentials, checked with independent software: tokens come from the
//! `oauth2` client crate and are verified against the JWK set with `jwt-simple`, not with
//! the `jsonwebtoken` crate that signs them.

use std::time::Duration;

use jwt_simple::prelude::{
    Claims, Clock, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, ES256PublicKey,
    Ed25519PublicKey, EdDSAPublicKeyLike, NoCustomClaims, VerificationOptions,
};
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem, on_each_backend, spawn_app};

on_each_backend!(
    token_verifies_against_jwks,
    client_secret_post_gets_token,
    token_errors_follow_rfc6749,
    unknown_wrong_and_deleted_clients_look_alike,
    rolled_secret_works_through_grace,
    client_management_round_trip,
    concurrent_client_updates_keep_both,
    introspection_reports_tokens_and_keys,
    revocation_denies_token_until_expiry,
    rotation_keeps_old_tokens_verifiable,
    private_key_jwt_authenticates_clients,
    every_endpoint_rejects_ambiguous_requests,
);

const AUDIENCE: &str = "https://orders.example";

async fn concurrent_client_updates_keep_both(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let path = format!("/v1/clients/{}", client["client_id"].as_str().unwrap());

    // Each round changes two different fields at once; neither change may be lost.
    for round in 0..8 {
        let name = format!("worker {round}");
        let owner = format!("team-{round}");
        let (renamed, reowned) = tokio::join!(
            app.admin(Method::PATCH, &path, Some(json!({ "name": name }))),
            app.admin(Method::PATCH, &path, Some(json!({ "owner": owner }))),
        );
        assert_eq!(renamed.status(), 200, "round {round}: rename");
        assert_eq!(reowned.status(), 200, "round {round}: new owner");
        let current = app.admin_json(Method::GET, &path, None).await;
        assert_eq!(current["name"], name.as_str(), "round {round}: {current}");
        assert_eq!(current["owner"], owner.as_str(), "round {round}: {current}");
    }
}

/// Registers a client with two scopes and one audience; returns its JSON with the secret.
async fn create_client(app: &TestApp) -> Value {
    let response = app
        .admin(
            Method::POST,
            "/v1/clients",
            Some(json!({
                "name": "billing worker",
                "scopes": ["orders:read", "orders:write"],
                "audiences": [AUDIENCE, "https://other.example"],
                "default_audience": AUDIENCE,
                "token_lifetime_seconds": 600
            })),
        )
        .await;
    assert_eq!(response.status(), 201, "create client");
    response.json().await.unwrap()
}

type OAuthClient = oauth2::Client<
    oauth2::StandardErrorResponse<BasicErrorResponseType>,
    oauth2::StandardTokenResponse<oauth2::EmptyExtraTokenFields, oauth2::basic::BasicTokenType>,
    oauth2::StandardTokenIntrospectionResponse<
        oauth2::EmptyExtraTokenFields,
        oauth2::basic::BasicTokenType,
    >,
    oauth2::StandardRevocableToken,
    oauth2::StandardErrorResponse<oauth2::RevocationErrorResponseType>,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn oauth_client(app: &TestApp, id: &str, secret: &str, auth: AuthType) -> OAuthClient {
    BasicClient::new(ClientId::new(id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_token_uri(TokenUrl::new(app.url("/oauth/token")).unwrap())
        .set_auth_type(auth)
}

fn http_client() -> oauth2::reqwest::Client {
    oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Builds the ES256 public key of `kid` from the server's JWK set.
async fn jwks_key(app: &TestApp, kid: &str) -> ES256PublicKey {
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    assert_eq!(jwk["kty"], "EC");
    assert!(
        jwk.get("d").is_none(),
        "the JWK set must not publish a private key"
    );
    use base64::Engine;
    let decode = |field: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[field].as_str().unwrap())
            .unwrap()
    };
    let mut point = vec![0x04];
    point.extend(decode("x"));
    point.extend(decode("y"));
    ES256PublicKey::from_bytes(&point).unwrap()
}

async fn token_verifies_against_jwks(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();

    let token = oauth_client(&app, id, secret, AuthType::BasicAuth)
        .exchange_client_credentials()
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http_client())
        .await
        .expect("token from client_secret_basic");
    assert_eq!(token.scopes().unwrap()[0].as_str(), "orders:read");
    assert_eq!(token.expires_in(), Some(Duration::from_secs(600)));

    let jwt = token.access_token().secret();
    let metadata = jwt_simple::token::Token::decode_metadata(jwt).unwrap();
    assert_eq!(metadata.signature_type(), Some("at+jwt"), "RFC 9068 typ");
    let kid = metadata.key_id().expect("kid in the header").to_owned();
    let key = jwks_key(&app, &kid).await;
    let options = VerificationOptions {
        allowed_issuers: Some([app.address.clone()].into()),
        allowed_audiences: Some([AUDIENCE.to_owned()].into()),
        ..Default::default()
    };
    let claims = key
        .verify_token::<Value>(jwt, Some(options))
        .expect("token verifies against the JWK set");
    assert_eq!(claims.subject.as_deref(), Some(id));
    assert!(claims.jwt_id.is_some(), "jti present");
    assert!(claims.issued_at.is_some(), "iat present");
    assert!(claims.expires_at.is_some(), "exp present");
    assert_eq!(claims.custom["client_id"], id);
    assert_eq!(claims.custom["scope"], "orders:read");
    let _ = key.verify_token::<NoCustomClaims>(jwt, None).unwrap();
}

async fn client_secret_post_gets_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();

    let token = oauth_client(&app, id, secret, AuthType::RequestBody)
        .exchange_client_credentials()
        .add_extra_param("resource", "https://other.example")
        .request_async(&http_client())
        .await
        .expect("token from client_secret_post");
    let scopes: Vec<&str> = token.scopes().unwrap().iter().map(|s| s.as_str()).collect();
    assert_eq!(
        scopes,
        vec!["orders:read", "orders:write"],
        "no scope means all"
    );

    let jwt = token.access_token().secret();
    let kid = jwt_simple::token::Token::decode_metadata(jwt)
        .unwrap()
        .key_id()
        .unwrap()
        .to_owned();
    let options = VerificationOptions {
        allowed_audiences: Some(["https://other.example".to_owned()].into()),
        ..Default::default()
    };
    jwks_key(&app, &kid)
        .await
        .verify_token::<Value>(jwt, Some(options))
        .expect("the resource parameter sets aud");
}

/// Client id and secret for HTTP Basic, if the request uses it.
type BasicAuth<'a> = Option<(&'a str, &'a str)>;

/// Sends a raw token request and returns status, headers and JSON body.
async fn token_request(
    app: &TestApp,
    basic: BasicAuth<'_>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    token_request_to(app, "/oauth/token", basic, body).await
}

async fn token_errors_follow_rfc6749(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let encoded_secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let basic = Some((id, secret));

    let cases: Vec<(BasicAuth, String, u16, &str)> = vec![
        (
            basic,
            "grant_type=password".into(),
            400,
            "unsupported_grant_type",
        ),
        (basic, "scope=orders:read".into(), 400, "invalid_request"),
        (
            basic,
            "grant_type=client_credentials&scope=admin".into(),
            400,
            "invalid_scope",
        ),
        (
            basic,
            "grant_type=client_credentials&resource=https://evil.example".into(),
            400,
            "invalid_target",
        ),
        (
            basic,
            "grant_type=client_credentials&grant_type=client_credentials".into(),
            400,
            "invalid_request",
        ),
        (
            basic,
            format!("grant_type=client_credentials&client_id={id}&client_secret={encoded_secret}"),
            400,
            "invalid_request",
        ),
        (
            basic,
            "grant_type=client_credentials&client_id=AAAAAAAAAAAAAAAA".into(),
            400,
            "invalid_request",
        ),
        (
            None,
            "grant_type=client_credentials".into(),
            401,
            "invalid_client",
        ),
    ];
    for (auth, body, status, error) in cases {
        let (got, headers, json) = token_request(&app, auth, &body).await;
        assert_eq!(got, status, "{body}: {json}");
        assert_eq!(json["error"], error, "{body}: {json}");
        assert!(json["error_description"].is_string(), "{body}: {json}");
        assert_eq!(headers["cache-control"], "no-store", "{body}");
        assert_eq!(headers["pragma"], "no-cache", "{body}");
        assert!(!json.to_string().contains(secret), "secret echoed: {json}");
    }

    let response = app
        .client
        .post(app.url("/oauth/token"))
        .basic_auth(id, Some(secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a JSON body is not a form");
}

async fn unknown_wrong_and_deleted_clients_look_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap().to_owned();
    let secret = client["client_secret"].as_str().unwrap().to_owned();
    let other = create_client(&app).await;
    let other_secret = other["client_secret"].as_str().unwrap();

    let body = "grant_type=client_credentials";
    let wrong = token_request(&app, Some((&id, "wrong")), body).await;
    let unknown = token_request(&app, Some(("AAAAAAAAAAAAAAAA", &secret)), body).await;
    let crossed = token_request(&app, Some((&id, other_secret)), body).await;
    let response = app
        .admin(Method::DELETE, &format!("/v1/clients/{id}"), None)
        .await;
    assert_eq!(response.status(), 204, "delete client");
    let deleted = token_request(&app, Some((&id, &secret)), body).await;

    for (name, (status, headers, json)) in [
        ("wrong secret", &wrong),
        ("unknown client", &unknown),
        ("another client's secret", &crossed),
        ("deleted client", &deleted),
    ] {
        assert_eq!(*status, 401, "{name}");
        assert_eq!(
            headers["www-authenticate"], "Basic realm=\"valet\"",
            "{name}"
        );
        assert_eq!(json, &wrong.2, "{name} must look like a wrong secret");
    }
}

async fn rolled_secret_works_through_grace(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let old_secret = client["client_secret"].as_str().unwrap();
    let key_id = client["client_secret_key_id"].as_str().unwrap();

    let rolled = app
        .admin_json(
            Method::POST,
            &format!("/v1/keys/{key_id}/roll"),
            Some(json!({"grace_period_seconds": 1})),
        )
        .await;
    let new_secret = rolled["key"].as_str().unwrap();
    assert_eq!(
        rolled["client_id"], id,
        "the new secret belongs to the client"
    );

    let body = "grant_type=client_credentials";
    let (status, _, _) = token_request(&app, Some((id, new_secret)), body).await;
    assert_eq!(status, 200, "the new secret works");
    let (status, _, _) = token_request(&app, Some((id, old_secret)), body).await;
    assert_eq!(status, 200, "the old secret works during the grace period");

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (status, _, json) = token_request(&app, Some((id, old_secret)), body).await;
    assert_eq!(status, 401, "the old secret fails after the grace period");
    assert_eq!(json["error"], "invalid_client");
    let (status, _, _) = token_request(&app, Some((id, new_secret)), body).await;
    assert_eq!(status, 200, "the new secret still works");
}

async fn client_management_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    assert!(client["client_id_issued_at"].is_i64());
    assert_eq!(client["client_secret_expires_at"], 0);

    let shown = app
        .admin_json(Method::GET, &format!("/v1/clients/{id}"), None)
        .await;
    assert!(
        shown.get("client_secret").is_none(),
        "secret shown again: {shown}"
    );
    assert_eq!(shown["scopes"], json!(["orders:read", "orders:write"]));

    let updated = app
        .admin_json(
            Method::PATCH,
            &format!("/v1/clients/{id}"),
            Some(json!({"scopes": ["orders:read"], "token_lifetime_seconds": 60})),
        )
        .await;
    assert_eq!(updated["scopes"], json!(["orders:read"]));
    assert_eq!(updated["token_lifetime_seconds"], 60);

    let added = app
        .admin(Method::POST, &format!("/v1/clients/{id}/secrets"), None)
        .await;
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    let second = added["client_secret"].as_str().unwrap();
    let (status, _, json) =
        token_request(&app, Some((id, second)), "grant_type=client_credentials").await;
    assert_eq!(status, 200, "a second secret works: {json}");
    assert_eq!(
        json["scope"], "orders:read",
        "the update narrowed the scopes"
    );
    assert_eq!(json["expires_in"], 60);

    let listed = app.admin_json(Method::GET, "/v1/clients", None).await;
    assert_eq!(listed["clients"].as_array().unwrap().len(), 1);
    assert_eq!(listed["next_cursor"], Value::Null);

    let response = app
        .admin(Method::GET, "/v1/clients/AAAAAAAAAAAAAAAA", None)
        .await;
    assert_problem(response, 404, "client_not_found").await;
    let response = app
        .admin(
            Method::POST,
            "/v1/clients",
            Some(json!({"name": "x", "scopes": [], "audiences": ["a"], "default_audience": "b"})),
        )
        .await;
    assert_problem(response, 422, "invalid_field").await;
    let response = app
        .admin(Method::DELETE, &format!("/v1/clients/{id}"), None)
        .await;
    assert_eq!(response.status(), 204);
    let response = app
        .admin(Method::DELETE, &format!("/v1/clients/{id}"), None)
        .await;
    assert_problem(response, 404, "client_not_found").await;
}

#[tokio::test]
async fn metadata_describes_token_endpoint() {
    let app = spawn_app(Backend::Sqlite).await;
    let metadata: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], app.address);
    assert_eq!(metadata["token_endpoint"], app.url("/oauth/token"));
    assert_eq!(metadata["jwks_uri"], app.url("/.well-known/jwks.json"));
    assert_eq!(
        metadata["grant_types_supported"],
        json!(["client_credentials"])
    );
    let methods = metadata["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("client_secret_basic")));
    assert!(methods.contains(&json!("client_secret_post")));
}

#[tokio::test]
async fn oauth2_crate_reports_invalid_client() {
    let app = spawn_app(Backend::Sqlite).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let result = oauth_client(&app, id, "wrong", AuthType::BasicAuth)
        .exchange_client_credentials()
        .request_async(&http_client())
        .await;
    let Err(RequestTokenError::ServerResponse(error)) = result else {
        panic!("expected an OAuth error response, got {result:?}");
    };
    assert_eq!(*error.error(), BasicErrorResponseType::InvalidClient);
}

/// Sends a form to an OAuth endpoint as the client (Basic) or with a Bearer key.
async fn form_request(app: &TestApp, path: &str, auth: Auth<'_>, body: &str) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    request = match auth {
        Auth::Basic(id, secret) => request.basic_auth(id, Some(secret)),
        Auth::Bearer(key) => request.bearer_auth(key),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

enum Auth<'a> {
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

fn form_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn issue(app: &TestApp, id: &str, secret: &str) -> String {
    let (status, _, body) =
        token_request(app, Some((id, secret)), "grant_type=client_credentials").await;
    assert_eq!(status, 200, "token: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn introspection_reports_tokens_and_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let token = issue(&app, id, secret).await;

    let body = format!("token={}", form_value(&token));
    let (status, as_client) =
        form_request(&app, "/oauth/introspect", Auth::Basic(id, secret), &body).await;
    assert_eq!(status, 200);
    assert_eq!(as_client["active"], true);
    assert_eq!(as_client["client_id"], id);
    assert_eq!(as_client["scope"], "orders:read orders:write");
    assert_eq!(as_client["aud"], AUDIENCE);
    assert_eq!(as_client["iss"], app.address);
    let (_, as_admin) = form_request(
        &app,
        "/oauth/introspect",
        Auth::Bearer(&app.admin_key),
        &body,
    )
    .await;
    assert_eq!(as_admin, as_client, "admin keys may introspect too");

    let worker = app.create_simple("worker", &["orders:read"]).await;
    let key_body = format!("token={}", form_value(worker["key"].as_str().unwrap()));
    let (_, key) = form_request(
        &app,
        "/oauth/introspect",
        Auth::Basic(id, secret),
        &key_body,
    )
    .await;
    assert_eq!(key["active"], true);
    assert_eq!(key["token_type"], "api_key");
    assert_eq!(key["scope"], "orders:read");
    assert_eq!(key["key_id"], worker["id"]);

    let mut forged = token.clone();
    forged.pop();
    for inactive in ["garbage", "vk_live_x", forged.as_str()] {
        let body = format!("token={}", form_value(inactive));
        let (status, answer) =
            form_request(&app, "/oauth/introspect", Auth::Basic(id, secret), &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({"active": false}),
            "{inactive} must be inactive and bare"
        );
    }

    let (status, error) =
        form_request(&app, "/oauth/introspect", Auth::Basic(id, "wrong"), &body).await;
    assert_eq!(status, 401, "introspection needs an authenticated caller");
    assert_eq!(error["error"], "invalid_client");
    let worker_key = worker["key"].as_str().unwrap();
    let (status, _) =
        form_request(&app, "/oauth/introspect", Auth::Bearer(worker_key), &body).await;
    assert_eq!(status, 401, "a key without scope admin may not introspect");
}

async fn revocation_denies_token_until_expiry(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let other = create_client(&app).await;
    let other_id = other["client_id"].as_str().unwrap();
    let other_secret = other["client_secret"].as_str().unwrap();
    let token = issue(&app, id, secret).await;
    let body = format!("token={}", form_value(&token));

    let (status, error) = form_request(
        &app,
        "/oauth/revoke",
        Auth::Basic(other_id, other_secret),
        &body,
    )
    .await;
    assert_eq!(status, 400, "another client may not revoke it");
    assert_eq!(error["error"], "unauthorized_client");

    let (status, _) = form_request(&app, "/oauth/revoke", Auth::Basic(id, secret), &body).await;
    assert_eq!(status, 200);
    let (_, answer) = form_request(&app, "/oauth/introspect", Auth::Basic(id, secret), &body).await;
    assert_eq!(
        answer,
        json!({"active": false}),
        "a revoked token is inactive"
    );
    let (status, _) = form_request(&app, "/oauth/revoke", Auth::Basic(id, secret), &body).await;
    assert_eq!(status, 200, "revoking twice is fine");

    let unknown = "token=not-a-token-at-all";
    let (status, _) = form_request(&app, "/oauth/revoke", Auth::Basic(id, secret), unknown).await;
    assert_eq!(status, 200, "unknown tokens get 200");

    let worker = app.create_simple("worker", &[]).await;
    let key_body = format!("token={}", form_value(worker["key"].as_str().unwrap()));
    let (status, error) =
        form_request(&app, "/oauth/revoke", Auth::Basic(id, secret), &key_body).await;
    assert_eq!(
        status, 400,
        "a client may not revoke a key it does not own: {error}"
    );
    let (status, _) = form_request(
        &app,
        "/oauth/revoke",
        Auth::Bearer(&app.admin_key),
        &key_body,
    )
    .await;
    assert_eq!(status, 200, "an admin key may revoke any key");
    assert_eq!(
        app.verify(worker["key"].as_str().unwrap(), &[]).await["code"],
        "REVOKED"
    );

    let (status, error) = form_request(
        &app,
        "/oauth/revoke",
        Auth::Basic(id, secret),
        "token=a&token=b",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"], "invalid_request", "repeated parameters");
}

async fn jwks(app: &TestApp) -> Value {
    app.client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn kid_of(token: &str) -> String {
    jwt_simple::token::Token::decode_metadata(token)
        .unwrap()
        .key_id()
        .unwrap()
        .to_owned()
}

async fn rotation_keeps_old_tokens_verifiable(backend: Backend) {
    use valet::oauth::signing::SigningAlgorithm;

    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let old_token = issue(&app, id, secret).await;
    let old_kid = kid_of(&old_token);

    // A delayed rotation publishes the new key at once but does not sign with it yet.
    let delayed = app
        .oauth
        .rotate_signing_key(SigningAlgorithm::EdDsa, time::Duration::minutes(10))
        .await
        .unwrap();
    let published = jwks(&app).await;
    assert!(
        published["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == delayed.kid),
        "the new key is published before it signs"
    );
    assert_eq!(
        kid_of(&issue(&app, id, secret).await),
        old_kid,
        "the old key still signs"
    );

    // An immediate rotation signs with the new key from now on.
    let current = app
        .oauth
        .rotate_signing_key(SigningAlgorithm::EdDsa, time::Duration::ZERO)
        .await
        .unwrap();
    let new_token = issue(&app, id, secret).await;
    assert_eq!(kid_of(&new_token), current.kid);
    let new_metadata = jwt_simple::token::Token::decode_metadata(&new_token).unwrap();
    assert_eq!(new_metadata.algorithm(), "EdDSA");

    let published = jwks(&app).await;
    let keys = published["keys"].as_array().unwrap();
    assert!(
        keys.iter().any(|k| k["kid"] == old_kid),
        "the old key stays published"
    );
    jwks_key(&app, &old_kid)
        .await
        .verify_token::<NoCustomClaims>(&old_token, None)
        .expect("a token signed before the rotation still verifies");

    let jwk = keys
        .iter()
        .find(|k| k["kid"] == current.kid.as_str())
        .unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert!(jwk.get("d").is_none(), "no private key published");
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap();
    Ed25519PublicKey::from_bytes(&x)
        .unwrap()
        .verify_token::<NoCustomClaims>(&new_token, None)
        .expect("the EdDSA token verifies against its JWK");

    for token in [&old_token, &new_token] {
        let body = format!("token={}", form_value(token));
        let (_, answer) =
            form_request(&app, "/oauth/introspect", Auth::Basic(id, secret), &body).await;
        assert_eq!(
            answer["active"], true,
            "both tokens are active after the rotation"
        );
    }
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Signs a client assertion with jwt-simple; `skew` moves `iat` and `nbf` into the future.
fn assertion(
    key: &ES256KeyPair,
    client_id: &str,
    audience: &str,
    jti: &str,
    lifetime_seconds: u64,
    skew_seconds: u64,
) -> String {
    let mut claims = Claims::create(jwt_simple::prelude::Duration::from_secs(lifetime_seconds))
        .with_issuer(client_id)
        .with_subject(client_id)
        .with_audience(audience)
        .with_jwt_id(jti);
    let future = Clock::now_since_epoch() + jwt_simple::prelude::Duration::from_secs(skew_seconds);
    claims.issued_at = Some(future);
    claims.invalid_before = Some(future);
    key.sign(claims).unwrap()
}

async fn private_key_jwt_authenticates_clients(backend: Backend) {
    use base64::Engine;
    let app = spawn_app(backend).await;
    let key = ES256KeyPair::generate().with_key_id("client-key-1");
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": "client-key-1", "alg": "ES256",
        "x": encode(&point[1..33]), "y": encode(&point[33..65]),
    });
    let client = app
        .admin_json(
            Method::POST,
            "/v1/clients",
            Some(json!({
                "name": "jwt client", "scopes": ["orders:read"],
                "audiences": [AUDIENCE], "default_audience": AUDIENCE,
                "jwks": {"keys": [jwk]}
            })),
        )
        .await;
    let id = client["client_id"].as_str().unwrap();
    assert_eq!(client["jwks"]["keys"][0]["kid"], "client-key-1");
    let token_url = app.url("/oauth/token");

    let send = |assertion: String| {
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
            form_value(ASSERTION_TYPE),
            assertion
        );
        let app = &app;
        async move { token_request(app, None, &body).await }
    };

    let valid = assertion(&key, id, &token_url, "jti-1", 60, 0);
    let (status, _, body) = send(valid.clone()).await;
    assert_eq!(status, 200, "a valid assertion gets a token: {body}");
    assert_eq!(body["scope"], "orders:read");

    let (status, _, body) = send(valid).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "replayed jti"
    );

    // An assertion in the last second of its life is accepted once, and its replay later
    // in that same second is still rejected.
    let mut accepted = None;
    for attempt in 0..5 {
        let last_second = assertion(&key, id, &token_url, &format!("jti-last-{attempt}"), 0, 0);
        let (status, _, _) = send(last_second.clone()).await;
        if status == 200 {
            accepted = Some(last_second);
            break;
        }
    }
    let last_second = accepted.expect("an assertion with exp = now is accepted within its second");
    let (status, _, body) = send(last_second).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "replayed jti in the assertion's last second"
    );

    let skewed = assertion(&key, id, &token_url, "jti-2", 60, 3);
    let (status, _, body) = send(skewed).await;
    assert_eq!(status, 200, "a few seconds of skew are tolerated: {body}");

    let cases = [
        (
            "wrong audience",
            assertion(&key, id, "https://elsewhere.example", "jti-3", 60, 0),
        ),
        (
            "far-future iat",
            assertion(&key, id, &token_url, "jti-4", 600, 120),
        ),
        (
            "issuer URL as audience works",
            assertion(&key, id, &app.address, "jti-5", 60, 0),
        ),
        (
            "unknown client",
            assertion(&key, "AAAAAAAAAAAAAAAA", &token_url, "jti-6", 60, 0),
        ),
        (
            "other key",
            assertion(
                &ES256KeyPair::generate().with_key_id("client-key-1"),
                id,
                &token_url,
                "jti-7",
                60,
                0,
            ),
        ),
    ];
    for (name, assertion) in cases {
        let (status, _, body) = send(assertion).await;
        if name.ends_with("works") {
            assert_eq!(status, 200, "{name}: {body}");
        } else {
            assert_eq!(status, 401, "{name}: {body}");
            assert_eq!(body["error"], "invalid_client", "{name}");
        }
    }

    let mut expired_claims = Claims::create(jwt_simple::prelude::Duration::from_secs(1))
        .with_issuer(id)
        .with_subject(id)
        .with_audience(&token_url)
        .with_jwt_id("jti-8");
    let past = Clock::now_since_epoch() - jwt_simple::prelude::Duration::from_secs(120);
    expired_claims.issued_at = Some(past);
    expired_claims.invalid_before = Some(past);
    expired_claims.expires_at = Some(past + jwt_simple::prelude::Duration::from_secs(60));
    let (status, _, body) = send(key.sign(expired_claims).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "expired exp"
    );

    let both = format!(
        "grant_type=client_credentials&client_id={id}&client_secret=x&client_assertion_type={}&client_assertion={}",
        form_value(ASSERTION_TYPE),
        assertion(&key, id, &token_url, "jti-9", 60, 0)
    );
    let (status, _, body) = token_request(&app, None, &both).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "two methods"
    );

    // The same method authenticates at the introspection endpoint.
    let introspect_url = app.url("/oauth/introspect");
    let token = {
        let (_, _, body) = send(assertion(&key, id, &token_url, "jti-10", 60, 0)).await;
        body["access_token"].as_str().unwrap().to_owned()
    };
    let body = format!(
        "token={}&client_assertion_type={}&client_assertion={}",
        form_value(&token),
        form_value(ASSERTION_TYPE),
        assertion(&key, id, &introspect_url, "jti-11", 60, 0)
    );
    let response = app
        .client
        .post(&introspect_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["active"], true);
}

#[tokio::test]
async fn signing_keys_rotate_command_takes_effect() {
    use crate::process::{Server, Store};

    let store = Store::new();
    let admin = store.create("admin", &["--scope", "admin"]);
    let admin_key = admin["key"].as_str().unwrap();
    let rotated = store.json(&["signing-keys", "rotate", "--delay-seconds", "0", "--json"]);
    let kid = rotated["kid"].as_str().unwrap();
    assert!(
        rotated["public_jwk"].get("d").is_none(),
        "no private key printed"
    );

    let server = Server::start(&store, "info").await;
    let http = reqwest::Client::new();
    let client: Value = http
        .post(format!("{}/v1/clients", server.address))
        .bearer_auth(admin_key)
        .json(&json!({"name": "c", "scopes": [], "audiences": ["a"], "default_audience": "a"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token: Value = http
        .post(format!("{}/oauth/token", server.address))
        .basic_auth(
            client["client_id"].as_str().unwrap(),
            client["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kid_of(token["access_token"].as_str().unwrap()), kid);
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", server.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid)
    );
    let log = server.stderr();
    assert!(
        !log.contains(client["client_secret"].as_str().unwrap()),
        "secret logged"
    );
    assert!(
        !log.contains(token["access_token"].as_str().unwrap()),
        "token logged"
    );
}

async fn every_endpoint_rejects_ambiguous_requests(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = create_client(&app).await;
    let id = client["client_id"].as_str().unwrap();
    let secret = client["client_secret"].as_str().unwrap();
    let encoded = form_value(secret);

    for (path, base) in [
        ("/oauth/token", "grant_type=client_credentials"),
        ("/oauth/introspect", "token=x"),
        ("/oauth/revoke", "token=x"),
    ] {
        let cases = [
            (
                "repeated parameter",
                Some((id, secret)),
                format!("{base}&{base}"),
            ),
            (
                "Basic and client_secret",
                Some((id, secret)),
                format!("{base}&client_id={id}&client_secret={encoded}"),
            ),
            (
                "client_id differs from Basic",
                Some((id, secret)),
                format!("{base}&client_id=AAAAAAAAAAAAAAAA"),
            ),
        ];
        for (name, basic, body) in cases {
            let (status, headers, json) = token_request_to(&app, path, basic, &body).await;
            assert_eq!(status, 400, "{path}, {name}: {json}");
            assert_eq!(json["error"], "invalid_request", "{path}, {name}");
            assert_eq!(headers["cache-control"], "no-store", "{path}, {name}");
            assert_eq!(headers["pragma"], "no-cache", "{path}, {name}");
        }

        let post = format!("{base}&client_id={id}&client_secret={encoded}");
        let (status, _, json) = token_request_to(&app, path, None, &post).await;
        assert_eq!(status, 200, "{path} accepts client_secret_post: {json}");
    }
}

/// Sends a form to `path` as [`token_request`] does for the token endpoint.
async fn token_request_to(
    app: &TestApp,
    path: &str,
    basic: BasicAuth<'_>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}
