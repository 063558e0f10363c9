//! The raw key string, held only between generation and the one response that shows it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A whole key string, secret included.
///
/// `Debug` prints `[REDACTED]` and the memory is zeroed on drop. The only way to read the
/// text is [`RawKey::expose`], which the create and roll responses call once.
pub struct RawKey(SecretString);

impl RawKey {
    /// Wraps a key string.
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    /// Returns the key text, for the single response that hands it to its holder.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey([REDACTED])")
    }
}
