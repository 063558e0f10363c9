//! Encryption at rest of the token signing keys: AES-256-GCM with a key-encryption key
//! that the operator supplies, so that a copy of the store alone cannot sign tokens.
//!
//! A sealed private key is stored as `VSK1`, a 12-byte random nonce, then the ciphertext
//! and its tag. The key id is the associated data, so a sealed key moved to another row
//! fails to open. A private key stored before sealing was configured is PKCS#8 DER, which
//! starts with an ASN.1 SEQUENCE byte, so the magic prefix distinguishes the two forms.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use zeroize::Zeroizing;

/// Marks a sealed private key.
const MAGIC: &[u8; 4] = b"VSK1";

/// The key-encryption key, 32 bytes, given in base64. Clones share one key.
#[derive(Clone)]
pub struct SealingKey(Arc<LessSafeKey>);

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey([REDACTED])")
    }
}

/// A signing key that cannot be sealed or opened. No variant includes key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the signing key encryption key is not valid: expected 32 bytes in base64, for \
         example from `openssl rand -base64 32`"
    )]
    InvalidKey,
    #[error(
        "signing key {kid} is encrypted in the store, but no encryption key is set: set \
         VALET_SIGNING_KEY_ENCRYPTION_KEY to the key the server was started with"
    )]
    KeyMissing { kid: String },
    #[error(
        "signing key {kid} could not be decrypted: the encryption key differs from the one \
         that encrypted it, or the stored key was altered"
    )]
    OpenFailed { kid: String },
    #[error("could not encrypt signing key {kid}")]
    SealFailed { kid: String },
}

impl SealingKey {
    /// Parses the base64 text of a 32-byte key.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::InvalidKey)?,
        );
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::InvalidKey)?;
        Ok(Self(Arc::new(LessSafeKey::new(key))))
    }

    /// Seals `der`, the private key of signing key `kid`.
    pub fn seal(&self, kid: &str, der: &[u8]) -> Result<Vec<u8>, SealError> {
        let failed = || SealError::SealFailed {
            kid: kid.to_owned(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| failed())?;
        let mut in_out = der.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| failed())?;
        let mut sealed = Vec::with_capacity(MAGIC.len() + NONCE_LEN + in_out.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }
}

/// Returns whether a stored private key is sealed.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// Returns the PKCS#8 DER of a stored private key: opened with `key` when it is sealed,
/// as it is otherwise.
pub fn open(
    key: Option<&SealingKey>,
    kid: &str,
    stored: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if !is_sealed(stored) {
        return Ok(Zeroizing::new(stored.to_vec()));
    }
    let key = key.ok_or_else(|| SealError::KeyMissing {
        kid: kid.to_owned(),
    })?;
    let failed = || SealError::OpenFailed {
        kid: kid.to_owned(),
    };
    let rest = &stored[MAGIC.len()..];
    if rest.len() < NONCE_LEN {
        return Err(failed());
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let plain_len = key
        .0
        .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut in_out)
        .map_err(|_| failed())?
        .len();
    in_out.truncate(plain_len);
    Ok(in_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn seal_then_open_returns_the_private_key() {
        let key = SealingKey::parse(KEY).unwrap();
        let der = b"\x30\x81\x87private key bytes";
        let sealed = key.seal("kid-1", der).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(der.len()).any(|window| window == der));
        assert_eq!(open(Some(&key), "kid-1", &sealed).unwrap().as_slice(), der);
    }

    #[test]
    fn open_rejects_wrong_kid_or_key() {
        let key = SealingKey::parse(KEY).unwrap();
        let sealed = key.seal("kid-1", b"\x30der").unwrap();
        assert!(matches!(
            open(Some(&key), "kid-2", &sealed),
            Err(SealError::OpenFailed { .. })
        ));
        let other = SealingKey::parse("ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=").unwrap();
        assert!(matches!(
            open(Some(&other), "kid-1", &sealed),
            Err(SealError::OpenFailed { .. })
        ));
        assert!(matches!(
            open(None, "kid-1", &sealed),
            Err(SealError::KeyMissing { .. })
        ));
        assert!(matches!(
            open(Some(&key), "kid-1", &sealed[..10]),
            Err(SealError::OpenFailed { .. })
        ));
    }

    #[test]
    fn open_passes_an_unsealed_key_through() {
        let der = b"\x30plain";
        assert_eq!(open(None, "kid", der).unwrap().as_slice(), der);
    }

    #[test]
    fn parse_rejects_keys_of_the_wrong_length() {
        assert!(matches!(
            SealingKey::parse("c2hvcnQ="),
            Err(SealError::InvalidKey)
        ));
        assert!(matches!(
            SealingKey::parse("not base64!"),
            Err(SealError::InvalidKey)
        ));
        assert_eq!(
            format!("{:?}", SealingKey::parse(KEY).unwrap()),
            "SealingKey([REDACTED])"
        );
    }
}
