//! A jsonwebtoken crypto provider that keeps signing keys parsed between tokens.
//!
//! jsonwebtoken's aws-lc-rs provider parses the PKCS#8 key, which includes deriving and
//! checking the public key, on every token it signs. That parse cost as much as the
//! signature itself. This provider parses each key once, keeps the aws-lc-rs key pair, and
//! signs with it; verification and JWK helpers stay jsonwebtoken's own.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, aws_lc};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, EncodingKey};
use sha2::{Digest, Sha256};

/// Parsed key pairs, by SHA-256 of their PKCS#8 document. Keys are never removed, because
/// a server uses a handful of signing keys over its life.
static PARSED: LazyLock<RwLock<HashMap<[u8; 32], Arc<KeyPair>>>> = LazyLock::new(Default::default);

/// The provider Valet installs: cached signing, jsonwebtoken's aws-lc-rs verification.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: aws_lc::DEFAULT_PROVIDER.verifier_factory,
    key_utils: aws_lc::DEFAULT_PROVIDER.key_utils.clone(),
});

/// Installs the provider for the process; later calls change nothing.
pub fn install() {
    let _ = LazyLock::force(&PROVIDER).install_default();
}

enum KeyPair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

struct CachedSigner {
    key: Arc<KeyPair>,
    algorithm: Algorithm,
}

impl signature::Signer<Vec<u8>> for CachedSigner {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match self.key.as_ref() {
            KeyPair::Es256(key) => key
                .sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(signature::Error::from_source),
            KeyPair::EdDsa(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for CachedSigner {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if !matches!(algorithm, Algorithm::ES256 | Algorithm::EdDSA) {
        return (aws_lc::DEFAULT_PROVIDER.signer_factory)(algorithm, key);
    }
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if let Some(parsed) = PARSED.read().expect("signer cache lock").get(&digest) {
        return Ok(Box::new(CachedSigner {
            key: parsed.clone(),
            algorithm: *algorithm,
        }));
    }

    let parsed = match algorithm {
        Algorithm::ES256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.as_bytes())
                .map(KeyPair::Es256)
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?
        }
        _ => Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
            .map(KeyPair::EdDsa)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?,
    };
    let parsed = Arc::new(parsed);
    PARSED
        .write()
        .expect("signer cache lock")
        .insert(digest, parsed.clone());
    Ok(Box::new(CachedSigner {
        key: parsed,
        algorithm: *algorithm,
    }))
}
