//! OAuth clients: registered machine identities whose secrets are Valet API keys.

use time::OffsetDateTime;

use crate::key::base62;
use crate::model::InvalidField;

/// Number of base62 characters in a client id.
pub const CLIENT_ID_LEN: usize = 16;
/// Token lifetime when the client names none: 15 minutes.
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: i64 = 900;
/// Maximum token lifetime of a client: 24 hours.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 86_400;
/// Maximum number of audiences a client may be allowed.
pub const MAX_AUDIENCES: usize = 32;

/// A registered client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRecord {
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    /// Scopes the client may be granted.
    pub scopes: Vec<String>,
    /// Audiences the client may request with `resource` or `audience`.
    pub audiences: Vec<String>,
    /// Audience of a token whose request names none.
    pub default_audience: Option<String>,
    pub token_lifetime_seconds: i64,
    pub created_at: OffsetDateTime,
    /// Public JWK set for `private_key_jwt` authentication, if the client uses it.
    pub jwks: Option<serde_json::Value>,
    /// Number of updates so far. An update is written only over the version it read.
    pub version: i64,
}

/// Draws a new client id from the operating system's CSPRNG.
pub fn generate_client_id() -> Result<String, getrandom::Error> {
    base62::random(CLIENT_ID_LEN)
}

/// Returns whether `text` has the shape of a client id, so malformed ids never reach the
/// store.
pub fn is_client_id(text: &str) -> bool {
    text.len() == CLIENT_ID_LEN && text.bytes().all(base62::is_digit)
}

/// Checks a token lifetime in seconds.
pub fn check_lifetime(seconds: i64) -> Result<i64, InvalidField> {
    if !(1..=MAX_TOKEN_LIFETIME_SECONDS).contains(&seconds) {
        return Err(InvalidField::new(
            "token_lifetime_seconds",
            format!("must be between 1 and {MAX_TOKEN_LIFETIME_SECONDS} (24 hours)"),
        ));
    }
    Ok(seconds)
}

/// Checks audience URIs or names: 1 to 256 printable ASCII characters, no spaces.
pub fn check_audiences(values: &[String]) -> Result<Vec<String>, InvalidField> {
    if values.len() > MAX_AUDIENCES {
        return Err(InvalidField::new(
            "audiences",
            format!("at most {MAX_AUDIENCES} audiences"),
        ));
    }
    let mut audiences: Vec<String> = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        check_audience("audiences", value).map_err(|err| {
            InvalidField::new("audiences", format!("item {index}: {}", err.reason))
        })?;
        if !audiences.contains(value) {
            audiences.push(value.clone());
        }
    }
    Ok(audiences)
}

/// Checks one audience value for `field`.
pub fn check_audience(field: &'static str, value: &str) -> Result<(), InvalidField> {
    let valid = (1..=256).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(InvalidField::new(
            field,
            "an audience is 1 to 256 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

/// Maximum number of keys in a client's JWK set.
pub const MAX_CLIENT_KEYS: usize = 8;

/// Checks a client's JWK set for `private_key_jwt`: an object with `keys`, each an ES256
/// (EC P-256) or EdDSA (OKP Ed25519) public key that jsonwebtoken accepts, and no private
/// key parameters.
pub fn check_jwks(jwks: &serde_json::Value) -> Result<serde_json::Value, InvalidField> {
    let invalid = |reason: &str| InvalidField::new("jwks", reason.to_owned());
    let keys = jwks
        .get("keys")
        .and_then(|keys| keys.as_array())
        .ok_or_else(|| invalid("must be a JWK set: an object with a `keys` array"))?;
    if keys.is_empty() || keys.len() > MAX_CLIENT_KEYS {
        return Err(invalid(&format!("must hold 1 to {MAX_CLIENT_KEYS} keys")));
    }
    crate::model::check_no_nul("jwks", jwks)?;
    for (index, key) in keys.iter().enumerate() {
        if key.get("d").is_some() {
            return Err(invalid(&format!(
                "key {index} contains a private key (`d`); register only the public key"
            )));
        }
        let kind = (key["kty"].as_str(), key["crv"].as_str());
        if !matches!(
            kind,
            (Some("EC"), Some("P-256")) | (Some("OKP"), Some("Ed25519"))
        ) {
            return Err(invalid(&format!(
                "key {index} must be an EC P-256 or OKP Ed25519 key"
            )));
        }
        let parsed: Result<jsonwebtoken::jwk::Jwk, _> = serde_json::from_value(key.clone());
        let usable = parsed
            .ok()
            .is_some_and(|jwk| jsonwebtoken::DecodingKey::from_jwk(&jwk).is_ok());
        if !usable || !is_public_point(key) {
            return Err(invalid(&format!("key {index} is not a valid public JWK")));
        }
    }
    Ok(jwks.clone())
}

/// Returns whether the coordinates of an EC P-256 or OKP Ed25519 JWK are a valid public
/// key. `DecodingKey::from_jwk` of jsonwebtoken 12 accepts an `x` of 3 bytes, so without
/// this check a key that can never verify an assertion would be registered.
fn is_public_point(key: &serde_json::Value) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let coordinate = |name: &str| {
        key[name]
            .as_str()
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
            .filter(|bytes| bytes.len() == 32)
    };
    match key["kty"].as_str() {
        Some("EC") => {
            let (Some(x), Some(y)) = (coordinate("x"), coordinate("y")) else {
                return false;
            };
            let point = [&[0x04][..], &x, &y].concat();
            p256::PublicKey::from_sec1_bytes(&point).is_ok()
        }
        Some("OKP") => coordinate("x")
            .and_then(|x| <[u8; 32]>::try_from(x).ok())
            .is_some_and(|x| ed25519_dalek::VerifyingKey::from_bytes(&x).is_ok()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_shape_is_checked() {
        let id = generate_client_id().unwrap();
        assert!(is_client_id(&id));
        assert!(!is_client_id("short"));
        assert!(!is_client_id("AAAAAAAAAAAAAAA-"));
    }

    #[test]
    fn public_point_must_be_on_the_curve() {
        use base64::Engine;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let secret = p256::SecretKey::from_slice(&[7; 32]).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        let (x, y) = (encode(&point[1..33]), encode(&point[33..65]));
        let ec =
            |x: &str, y: &str| serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        assert!(is_public_point(&ec(&x, &y)));
        assert!(!is_public_point(&ec("AAAA", &y)), "short x");
        assert!(!is_public_point(&ec(&y, &x)), "swapped coordinates");

        let okp = |x: &str| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x});
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        assert!(is_public_point(&okp(&encode(
            signing.verifying_key().as_bytes()
        ))));
        assert!(!is_public_point(&okp("AAAA")), "short x");
    }

    #[test]
    fn lifetime_and_audiences_are_bounded() {
        assert!(check_lifetime(900).is_ok());
        assert!(check_lifetime(0).is_err());
        assert!(check_lifetime(86_401).is_err());
        assert!(check_audiences(&["https://api.example".into()]).is_ok());
        assert!(check_audiences(&["has space".into()]).is_err());
    }
}
