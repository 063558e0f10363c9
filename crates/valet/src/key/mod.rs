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
/// nothing without the secret. The digits are held inline, so that taking the id of a
/// presented key, or copying one, allocates nothing. Word alignment lets an id, and the
/// errors and results that contain one, move as whole words on the verification path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(align(8))]
pub struct KeyId([u8; ID_LEN]);

impl KeyId {
    /// Parses a key id, rejecting anything but 8 base62 characters.
    pub fn parse(value: &str) -> Result<Self, InvalidKeyId> {
        let digits: [u8; ID_LEN] = value.as_bytes().try_into().map_err(|_| InvalidKeyId)?;
        if !digits.iter().copied().all(base62::is_digit) {
            return Err(InvalidKeyId);
        }
        Ok(Self(digits))
    }

    /// Draws a fresh random id from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let text = base62::random(ID_LEN)?;
        Ok(Self::parse(&text).expect("base62::random returns base62 digits"))
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a key id is ASCII")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyId").field(&self.as_str()).finish()
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Builds [`IdHasher`]s, for in-memory maps keyed by [`KeyId`].
pub type IdHashBuilder = std::hash::BuildHasherDefault<IdHasher>;

/// An unkeyed hash for maps keyed by [`KeyId`], cheaper than the standard library's SipHash.
///
/// SipHash's key guards a map against inserted keys chosen to collide. The maps that use
/// this hasher hold only ids that this server drew from the CSPRNG: cached keys, pending
/// uses and the filter of issued ids. So their entries are spread at random, and a
/// presented id can only probe them, never add to them.
/// Each 8-byte word is mixed in with a rotation and a multiplication by 2^64 divided by
/// the golden ratio (Fibonacci hashing, Knuth, The Art of Computer Programming, 6.4), which
/// spreads the bits into the high bits that the map's probing uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(&self) -> u64 {
        self.0
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
        // Four 64-bit words rather than 32 bytes: the same constant-time comparison, with
        // one optimisation barrier in `subtle` per word instead of per byte.
        fn words(hash: &[u8; 32]) -> [u64; 4] {
            std::array::from_fn(|i| {
                u64::from_ne_bytes(hash[i * 8..][..8].try_into().expect("8 bytes"))
            })
        }
        words(&self.0).ct_eq(&words(&other.0)).into()
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
        KeyId::parse(self.id).expect("parse checked the id")
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

        if let Some(parsed) = self.parse_canonical(raw) {
            return parsed;
        }

        // The general path, which names the first part that is wrong. Splitting without
        // collecting keeps it free of allocations.
        let mut parts = raw.split('_');
        let (Some(prefix), Some(env), Some(id), Some(secret), Some(checksum_part), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            let parts = raw.split('_').count();
            return Err(KeyFormatError::PartCount { parts });
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
        if !checksum_matches(body, checksum_part) {
            return Err(KeyFormatError::ChecksumMismatch);
        }

        Ok(ParsedKey { raw, env, id })
    }
}

impl KeyFormat {
    /// Parses `raw` when every part has its own length and separator in place, as in every
    /// key this server issued, by slicing at fixed offsets instead of searching for `_`.
    ///
    /// Returns `None` for any other layout, which [`KeyFormat::parse`] then splits to name
    /// the wrong part. When this returns, the general path would return the same: no part
    /// here can contain `_`, so splitting would find the same five parts.
    fn parse_canonical<'a>(&self, raw: &'a str) -> Option<Result<ParsedKey<'a>, KeyFormatError>> {
        let rest = raw
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('_')?
            .as_bytes();
        let env_end = 4;
        let id_start = env_end + 1;
        let secret_start = id_start + ID_LEN + 1;
        let checksum_start = secret_start + SECRET_LEN + 1;
        if rest.len() != checksum_start + CHECKSUM_LEN {
            return None;
        }
        let separators_in_place = [env_end, secret_start - 1, checksum_start - 1]
            .iter()
            .all(|&at| rest[at] == b'_');
        let env = match &rest[..env_end] {
            b"live" => KeyEnv::Live,
            b"test" => KeyEnv::Test,
            _ => return None,
        };
        let all_digits = |part: &[u8]| part.iter().all(|&byte| base62::is_digit(byte));
        let digits_valid = all_digits(&rest[id_start..secret_start - 1])
            && all_digits(&rest[secret_start..checksum_start - 1])
            && all_digits(&rest[checksum_start..]);
        if !separators_in_place || !digits_valid {
            return None;
        }

        let id = &raw[raw.len() - rest.len() + id_start..][..ID_LEN];
        let checksum_part = &raw[raw.len() - CHECKSUM_LEN..];
        let body = &raw[..raw.len() - CHECKSUM_LEN - 1];
        if !checksum_matches(body, checksum_part) {
            return Some(Err(KeyFormatError::ChecksumMismatch));
        }
        Some(Ok(ParsedKey { raw, env, id }))
    }
}

/// Returns whether `digits`, six base62 digits, are the checksum of `body`.
///
/// Six base62 digits encode each value below 62^6 in exactly one way, so comparing the
/// decoded value with the CRC is the same as comparing `digits` with `checksum(body)`,
/// without building the digits.
fn checksum_matches(body: &str, digits: &str) -> bool {
    base62::decode(digits) == Some(u64::from(crc32fast::hash(body.as_bytes())))
}

/// Computes the key checksum: CRC-32 (IEEE, as zlib computes it) of `body`, as 6 base62
/// digits, most significant first.
pub fn checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    base62::encode_fixed(u64::from(crc), CHECKSUM_LEN).expect("a CRC-32 fits in 6 base62 digits")
}

#[cfg(test)]
mod tests;
