//! Keys that sign access tokens: generation, the public JWK, and the jsonwebtoken keys.
//!
//! Key material comes from the operating system's CSPRNG and is handled by RustCrypto
//! (`p256`, `ed25519-dalek`). Tokens are signed by `jsonwebtoken`, so nothing here
//! implements a cryptographic primitive.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::key::base62;

/// Signature algorithm of a signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// ECDSA on P-256 with SHA-256, the default.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl SigningAlgorithm {
    /// Returns the JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Parses a JOSE `alg` name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    pub(crate) fn jwt_algorithm(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl std::str::FromStr for SigningAlgorithm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
            .ok_or_else(|| format!("unknown signing algorithm {text:?}: use ES256 or EdDSA"))
    }
}

/// A signing key as stored. `Debug` never shows the private key.
#[derive(Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// PKCS#8 DER of the private key.
    pub private_key: Zeroizing<Vec<u8>>,
    pub public_jwk: Value,
    pub created_at: OffsetDateTime,
    /// Tokens are signed with this key from this instant on.
    pub signs_from: OffsetDateTime,
    /// After this instant the key is neither used nor published.
    pub retired_at: Option<OffsetDateTime>,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("signs_from", &self.signs_from)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Error while creating or loading a signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("could not draw random bytes from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("signing key {kid} is unusable: {reason}")]
    Unusable { kid: String, reason: String },
}

impl SigningKeyRecord {
    /// Generates a new key with a random `kid`, to sign from `signs_from` on.
    pub fn generate(
        algorithm: SigningAlgorithm,
        now: OffsetDateTime,
        signs_from: OffsetDateTime,
    ) -> Result<Self, SigningError> {
        let kid = base62::random(16).map_err(SigningError::Random)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        let (private_key, public_jwk) = loop {
            getrandom::fill(seed.as_mut()).map_err(SigningError::Random)?;
            if let Some(pair) = key_pair(algorithm, &seed, &kid) {
                break pair;
            }
        };
        Ok(Self {
            kid,
            algorithm,
            private_key,
            public_jwk,
            created_at: now,
            signs_from,
            retired_at: None,
        })
    }

    /// Builds the jsonwebtoken key that signs with this record.
    pub fn encoding_key(&self) -> EncodingKey {
        match self.algorithm {
            SigningAlgorithm::Es256 => EncodingKey::from_ec_der(&self.private_key),
            SigningAlgorithm::EdDsa => EncodingKey::from_ed_der(&self.private_key),
        }
    }

    /// Builds the jsonwebtoken key that verifies tokens signed with this record, from its
    /// public JWK.
    pub fn decoding_key(&self) -> Option<jsonwebtoken::DecodingKey> {
        let x = self.public_jwk["x"].as_str()?;
        match self.algorithm {
            SigningAlgorithm::Es256 => {
                let y = self.public_jwk["y"].as_str()?;
                jsonwebtoken::DecodingKey::from_ec_components(x, y).ok()
            }
            SigningAlgorithm::EdDsa => jsonwebtoken::DecodingKey::from_ed_components(x).ok(),
        }
    }

    /// Returns the jsonwebtoken algorithm of this key.
    pub fn jwt_algorithm(&self) -> Algorithm {
        self.algorithm.jwt_algorithm()
    }
}

/// Derives the PKCS#8 private key and public JWK from 32 random bytes; returns `None`
/// for the rare P-256 seed that is not a valid scalar.
fn key_pair(
    algorithm: SigningAlgorithm,
    seed: &[u8; 32],
    kid: &str,
) -> Option<(Zeroizing<Vec<u8>>, Value)> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    use p256::pkcs8::EncodePrivateKey;

    match algorithm {
        SigningAlgorithm::Es256 => {
            let secret = p256::SecretKey::from_slice(seed).ok()?;
            let der = secret.to_pkcs8_der().ok()?;
            let point = secret.public_key().to_sec1_point(false);
            let bytes = point.as_bytes();
            // An uncompressed SEC1 point is 0x04, then x and y of 32 bytes each.
            let (x, y) = (&bytes[1..33], &bytes[33..65]);
            let jwk = json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
                "kid": kid,
                "alg": "ES256",
                "use": "sig",
            });
            Some((Zeroizing::new(der.as_bytes().to_vec()), jwk))
        }
        SigningAlgorithm::EdDsa => {
            let signing = ed25519_dalek::SigningKey::from_bytes(seed);
            let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing).ok()?;
            let jwk = json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
            });
            Some((Zeroizing::new(der.as_bytes().to_vec()), jwk))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens() {
        let now = OffsetDateTime::now_utc();
        for algorithm in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let key = SigningKeyRecord::generate(algorithm, now, now).unwrap();
            let mut header = jsonwebtoken::Header::new(key.jwt_algorithm());
            header.kid = Some(key.kid.clone());
            let token = jsonwebtoken::encode(&header, &json!({"sub": "x"}), &key.encoding_key());
            assert!(token.is_ok(), "{algorithm:?}: {:?}", token.err());
            assert_eq!(key.public_jwk["kid"], key.kid);
        }
    }

    #[test]
    fn debug_hides_private_key() {
        let now = OffsetDateTime::now_utc();
        let key = SigningKeyRecord::generate(SigningAlgorithm::Es256, now, now).unwrap();
        let text = format!("{key:?}");
        assert!(!text.contains("private_key"), "{text}");
    }
}
