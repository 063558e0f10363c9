//! `Secret`: text that is key material, such as a raw API key or an access token.
//!
//! Its `Debug` and `Display` print `[REDACTED]`, and its memory is zeroed on drop, so a
//! secret that reaches a log line, an error message or a panic shows nothing. The only way
//! to read the text is [`Secret::expose`], which marks every place that does.

use std::fmt;
use std::marker::PhantomData;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The kind of a [`Secret`], named in its `Debug` output.
pub trait SecretKind {
    const NAME: &'static str;
}

/// Text that is key material. See the module documentation.
pub struct Secret<K> {
    text: SecretString,
    kind: PhantomData<K>,
}

impl<K> Secret<K> {
    /// Wraps `text`, which is zeroed when the secret is dropped.
    pub fn new(text: String) -> Self {
        Self {
            text: SecretString::from(text),
            kind: PhantomData,
        }
    }

    /// Returns the text, for the one place that must send or check it.
    pub fn expose(&self) -> &str {
        self.text.expose_secret()
    }
}

impl<K: SecretKind> fmt::Debug for Secret<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}([REDACTED])", K::NAME)
    }
}

impl<K> fmt::Display for Secret<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de, K> Deserialize<'de> for Secret<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// A whole API key, secret part included, or a client secret, which is an API key.
pub enum ApiKeyKind {}

impl SecretKind for ApiKeyKind {
    const NAME: &'static str = "RawKey";
}

/// A signed access token.
pub enum AccessTokenKind {}

impl SecretKind for AccessTokenKind {
    const NAME: &'static str = "AccessToken";
}

/// A key string as generated or presented.
pub type RawKey = Secret<ApiKeyKind>;

/// An access token as issued.
pub type AccessToken = Secret<AccessTokenKind>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let key = RawKey::new("vk_live_abcdefgh_secret".to_owned());
        assert_eq!(format!("{key:?}"), "RawKey([REDACTED])");
        assert_eq!(format!("{key}"), "[REDACTED]");
        let token = AccessToken::new("eyJ.payload.signature".to_owned());
        assert_eq!(format!("{token:?}"), "AccessToken([REDACTED])");
        assert_eq!(key.expose(), "vk_live_abcdefgh_secret");
    }

    #[test]
    fn secret_deserializes_from_a_json_string() {
        #[derive(Debug, Deserialize)]
        struct Body {
            #[allow(dead_code)]
            key: RawKey,
        }
        let body: Body = serde_json::from_str(r#"{"key": "vk_live_x"}"#).unwrap();
        assert_eq!(body.key.expose(), "vk_live_x");
        assert!(!format!("{body:?}").contains("vk_live_x"));
    }
}
