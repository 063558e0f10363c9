//! API keys: asked of the Valet server's `POST /v1/keys/verify`, and the answers kept for
//! at most the revocation bound the service chose.
//!
//! The cache is keyed by the SHA-256 of the key, never the key. Rejections are cached apart
//! from admissions, so a flood of made-up keys cannot push valid keys out. Every answer is
//! final except a valid one, which a revocation can change; so a valid answer is used for
//! at most the bound, and a key's own expiry is checked on every use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{Identity, Inner, KeyEnv, Principal};
use crate::rejection::Rejection;

/// The response body of `POST /v1/keys/verify`.
#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
    code: String,
    key: Option<KeyObject>,
}

/// The fields of Valet's key object that make an identity.
#[derive(Deserialize)]
struct KeyObject {
    id: String,
    owner: Option<String>,
    scopes: Vec<String>,
    env: KeyEnv,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    successor_id: Option<String>,
    client_id: Option<String>,
}

impl From<KeyObject> for Identity {
    fn from(key: KeyObject) -> Self {
        // A rolled key in its grace period stops at its expiry.
        let sunset = key.successor_id.as_ref().and(key.expires_at);
        Identity::new(Inner {
            principal: Principal::Key {
                id: key.id,
                client_id: key.client_id,
            },
            scopes: key.scopes,
            owner: key.owner,
            env: Some(key.env),
            expires_at: key.expires_at,
            sunset,
        })
    }
}

type KeyDigest = [u8; 32];

/// Verification results kept for `ttl`, at most `capacity` of them.
struct AnswerCache<T> {
    entries: Mutex<HashMap<KeyDigest, (T, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

impl<T: Clone> AnswerCache<T> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    fn get(&self, digest: &KeyDigest) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (value, stored) = entries.get(digest)?;
        (stored.elapsed() < self.ttl).then(|| value.clone())
    }

    fn insert(&self, digest: KeyDigest, value: T) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (_, stored)| stored.elapsed() < ttl);
            // Still full of fresh answers: start over rather than scan for the oldest.
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(digest, (value, Instant::now()));
    }

    fn remove(&self, digest: &KeyDigest) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
    }
}

/// Checks API keys against one Valet server.
pub struct KeyChecker {
    http: reqwest::Client,
    verify_url: String,
    verifier_key: SecretString,
    admitted: AnswerCache<Identity>,
    rejected: AnswerCache<&'static str>,
}

impl KeyChecker {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        verifier_key: SecretString,
        revocation_bound: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            http,
            verify_url: format!("{base_url}/v1/keys/verify"),
            verifier_key,
            admitted: AnswerCache::new(revocation_bound, capacity),
            rejected: AnswerCache::new(revocation_bound, capacity),
        }
    }

    /// Returns the identity of `key`, from the cache or from the server.
    pub async fn check(&self, key: &str) -> Result<Identity, Rejection> {
        let digest: KeyDigest = Sha256::digest(key.as_bytes()).into();
        let now = OffsetDateTime::now_utc();
        if let Some(identity) = self.admitted.get(&digest) {
            if !identity.has_expired(now) {
                return Ok(identity);
            }
            self.admitted.remove(&digest);
            return Err(Rejection::InvalidToken("the API key has expired"));
        }
        if let Some(reason) = self.rejected.get(&digest) {
            return Err(Rejection::InvalidToken(reason));
        }

        let answer = self.ask(key).await?;
        match (answer.valid, answer.key) {
            (true, Some(object)) => {
                let identity = Identity::from(object);
                self.admitted.insert(digest, identity.clone());
                Ok(identity)
            }
            _ => {
                let reason = rejection_reason(&answer.code);
                self.rejected.insert(digest, reason);
                Err(Rejection::InvalidToken(reason))
            }
        }
    }

    async fn ask(&self, key: &str) -> Result<VerifyAnswer, Rejection> {
        let response = self
            .http
            .post(&self.verify_url)
            .bearer_auth(self.verifier_key.expose_secret())
            .json(&serde_json::json!({ "key": key }))
            .send()
            .await
            .map_err(|err| {
                // reqwest errors name the URL, never the body that carried the key.
                tracing::warn!(error = %err, "could not reach the Valet server to verify a key");
                Rejection::Unavailable
            })?;
        let status = response.status();
        if !status.is_success() {
            // 401 or 403 here means this service's own verifier key is wrong, which is an
            // outage for its callers, not their fault.
            tracing::error!(
                status = status.as_u16(),
                url = %self.verify_url,
                "the Valet server rejected to verify a key; check the verifier key and its \
                 `keys:verify` scope"
            );
            return Err(Rejection::Unavailable);
        }
        response.json::<VerifyAnswer>().await.map_err(|err| {
            tracing::error!(error = %err, "the Valet server's verify response could not be parsed");
            Rejection::Unavailable
        })
    }
}

/// Text for a rejected key, by Valet's verification code. Unknown codes from a newer server
/// are rejections too.
fn rejection_reason(code: &str) -> &'static str {
    match code {
        "MALFORMED" => "the credential is not a Valet API key",
        "EXPIRED" => "the API key has expired",
        "REVOKED" => "the API key was revoked",
        _ => "the API key is not valid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_cache_forgets_after_its_ttl() {
        let cache = AnswerCache::new(Duration::from_millis(50), 10);
        cache.insert([1; 32], "rejected");
        assert_eq!(cache.get(&[1; 32]), Some("rejected"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&[1; 32]), None);
    }

    #[test]
    fn answer_cache_stays_within_capacity() {
        let cache = AnswerCache::new(Duration::from_secs(60), 3);
        for byte in 0..10u8 {
            cache.insert([byte; 32], byte);
        }
        assert!(cache.entries.lock().unwrap().len() <= 3);
        assert_eq!(cache.get(&[9; 32]), Some(9));
    }

    #[test]
    fn answer_cache_with_zero_ttl_keeps_nothing() {
        let cache = AnswerCache::new(Duration::ZERO, 10);
        cache.insert([1; 32], 1);
        assert_eq!(cache.get(&[1; 32]), None);
    }
}
