//! The API key format: `<prefix>_<env>_<id>_<secret>_<checksum>`.
//!
//! This module alone defines how a key is laid out. It generates keys from the operating
//! system's CSPRNG, parses untrusted strings without touching the store, and hashes a key
//! for storage. Nothing here does I/O.

pub mod base62;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::secret::RawKey;

/// Number of base62 characters in a key id.
pub const ID_LEN: usize = 8;
/// Number of base62 characters in a key secret: 43 × log2(62) ≈ 256.03 bits.
pub const SECRET_LEN: usize = 43;
/// Number of base62 characters in the checksum; 62^6 > 2^32, so any CRC-32 fits.
pub const CHECKSUM_LEN: usize = 6;
/// Maximum length of a key string with any valid prefix; longer input is rejected before splitting.
pub const MAX_KEY_LEN: usize = 10 + 1 + 4 + 1 + ID_LEN + 1 + SECRET_LEN + 1 + CHECKSUM_LEN;

/// The product tag that starts every key, such as `vk`: `[a-z][a-z0-9]{1,9}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Parses a prefix, rejecting anything outside `[a-z][a-z0-9]{1,9}`.
    pub fn parse(value: &str) -> Result<Self, InvalidPrefix> {
        let bytes = value.as_bytes();
        let valid = (2..=10).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(InvalidPrefix(value.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    /// Returns the prefix as written in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self("vk".to_owned())
    }
}

impl FromStr for KeyPrefix {
    type Err = InvalidPrefix;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error for a key prefix outside `[a-z][a-z0-9]{1,9}`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid key prefix {0:?}: use 2 to 10 characters, a lowercase letter then lowercase letters or digits"
)]
pub struct InvalidPrefix(String);

/// The environment a key belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEnv {
    #[default]
    Live,
    Test,
}

impl KeyEnv {
    /// Returns the environment as written in keys and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

impl FromStr for KeyEnv {
    type Err = InvalidEnv;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "live" => Ok(Self::Live),
            "test" => Ok(Self::Test),
            _ => Err(InvalidEnv(value.to_owned())),
        }
    }
}

impl fmt::Display for KeyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an environment name other than `live` or `test`.
#[derive(Debug, thiserror::Error)]
#[error("invalid key environment {0:?}: use `live` or `test`")]
pub struct InvalidEnv(String);

/// The public lookup id of a key: 8 base62 characters.
///
/// Ids are public by design. They appear in lists, logs and support tickets, and reveal
/// nothing without the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id, rejecting anything but 8 base62 characters.
    pub fn parse(value: &str) -> Result<Self, InvalidKeyId> {
        if value.len() != ID_LEN || !value.bytes().all(base62::is_digit) {
            return Err(InvalidKeyId);
        }
        Ok(Self(value.to_owned()))
    }

    /// Draws a fresh random id from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        base62::random(ID_LEN).map(Self)
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error for a key id that is not 8 base62 characters.
#[derive(Debug, thiserror::Error)]
#[error("invalid key id: a key id is 8 characters from 0-9, A-Z and a-z")]
pub struct InvalidKeyId;

/// SHA-256 of a whole key string, the only form of a key that the store holds.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes the whole key string.
    pub fn of(raw: &str) -> Self {
        Self(Sha256::digest(raw.as_bytes()).into())
    }

    /// Wraps 32 bytes read from the store; returns `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Returns the digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares two hashes in constant time, so timing reveals nothing about the stored hash.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// A key string that passed every format check, borrowed from the caller's input.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    raw: &'a str,
    env: KeyEnv,
    id: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// Returns the key's environment.
    pub fn env(&self) -> KeyEnv {
        self.env
    }

    /// Returns the key's public id.
    pub fn id(&self) -> KeyId {
        KeyId(self.id.to_owned())
    }

    /// Hashes the whole key for comparison with the stored hash.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.raw)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("env", &self.env)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Reason a string is not a valid key for this server. Messages name the part that is wrong
/// and never repeat the input, because it may hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("key is empty")]
    Empty,
    #[error("key is {len} bytes long; keys are at most {MAX_KEY_LEN}")]
    TooLong { len: usize },
    #[error(
        "key has {parts} {} separated by `_`; expected 5: prefix, environment, id, secret and checksum",
        if *parts == 1 { "part" } else { "parts" }
    )]
    PartCount { parts: usize },
    #[error("key prefix does not match this server's prefix `{expected}`")]
    Prefix { expected: String },
    #[error("key environment must be `live` or `test`")]
    Env,
    #[error("key id must be {ID_LEN} characters from 0-9, A-Z and a-z")]
    Id,
    #[error("key secret must be {SECRET_LEN} characters from 0-9, A-Z and a-z")]
    Secret,
    #[error("key checksum must be {CHECKSUM_LEN} characters from 0-9, A-Z and a-z")]
    ChecksumFormat,
    #[error("key checksum does not match: the key was mistyped or truncated")]
    ChecksumMismatch,
}

/// Generates and parses keys for one prefix.
#[derive(Clone, Debug, Default)]
pub struct KeyFormat {
    prefix: KeyPrefix,
}

impl KeyFormat {
    /// Creates a format for keys that start with `prefix`.
    pub fn new(prefix: KeyPrefix) -> Self {
        Self { prefix }
    }

    /// Returns the prefix this format writes and accepts.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// Builds a new key for `id` with a fresh secret from the operating system's CSPRNG.
    pub fn generate(&self, env: KeyEnv, id: &KeyId) -> Result<RawKey, getrandom::Error> {
        let secret = zeroize::Zeroizing::new(base62::random(SECRET_LEN)?);
        Ok(self.assemble(env, id, &secret))
    }

    /// Writes a key from its parts and appends the checksum. `secret` is written as given,
    /// so keys for use come from [`KeyFormat::generate`]; this is the inverse of
    /// [`KeyFormat::parse`] for tests and fuzzing.
    pub fn assemble(&self, env: KeyEnv, id: &KeyId, secret: &str) -> RawKey {
        let mut body = String::with_capacity(MAX_KEY_LEN);
        body.push_str(self.prefix.as_str());
        body.push('_');
        body.push_str(env.as_str());
        body.push('_');
        body.push_str(id.as_str());
        body.push('_');
        body.push_str(secret);
        let checksum = checksum(&body);
        body.push('_');
        body.push_str(&checksum);
        RawKey::new(body)
    }

    /// Parses an untrusted string, checking every part and the checksum.
    ///
    /// This does no I/O, so malformed input never reaches the store.
    pub fn parse<'a>(&self, raw: &'a str) -> Result<ParsedKey<'a>, KeyFormatError> {
        if raw.is_empty() {
            return Err(KeyFormatError::Empty);
        }
        if raw.len() > MAX_KEY_LEN {
            return Err(KeyFormatError::TooLong { len: raw.len() });
        }

        let parts: Vec<&str> = raw.split('_').collect();
        let [prefix, env, id, secret, checksum_part] = parts[..] else {
            return Err(KeyFormatError::PartCount { parts: parts.len() });
        };

        if prefix != self.prefix.as_str() {
            return Err(KeyFormatError::Prefix {
                expected: self.prefix.to_string(),
            });
        }
        let env = env.parse::<KeyEnv>().map_err(|_| KeyFormatError::Env)?;
        if id.len() != ID_LEN || !id.bytes().all(base62::is_digit) {
            return Err(KeyFormatError::Id);
        }
        if secret.len() != SECRET_LEN || !secret.bytes().all(base62::is_digit) {
            return Err(KeyFormatError::Secret);
        }
        if checksum_part.len() != CHECKSUM_LEN || !checksum_part.bytes().all(base62::is_digit) {
            return Err(KeyFormatError::ChecksumFormat);
        }

        // The checksum covers everything before the last `_`.
        let body = &raw[..raw.len() - CHECKSUM_LEN - 1];
        if checksum(body).as_bytes() != checksum_part.as_bytes() {
            return Err(KeyFormatError::ChecksumMismatch);
        }

        Ok(ParsedKey { raw, env, id })
    }
}

/// Computes the key checksum: CRC-32 (IEEE, as zlib computes it) of `body`, as 6 base62
/// digits, most significant first.
pub fn checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    base62::encode_fixed(u64::from(crc), CHECKSUM_LEN).expect("a CRC-32 fits in 6 base62 digits")
}

#[cfg(test)]
mod tests;
