//! Fuzzes the parsers of raw key text: `KeyFormat::parse`, `KeyPrefix::parse`,
//! `KeyId::parse`, base62 decoding and `redact_keys`.
//!
//! Input: an optional first line with the server's key prefix (`vk` when the line is
//! missing or not a valid prefix), then the presented key text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use valet::key::{self, KeyFormat, KeyHash, KeyId, KeyPrefix, MAX_KEY_LEN, base62};
use valet::redact::redact_keys;
use valet_fuzz::{assert_no_key_text, split_line};

fuzz_target!(|data: &[u8]| {
    let (prefix_line, rest) = split_line(data);
    let prefix = prefix_line
        .and_then(|line| std::str::from_utf8(line).ok())
        .and_then(check_prefix)
        .unwrap_or_default();
    // The HTTP layer hands the parser a `&str`, so other bytes never reach it.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };

    let format = KeyFormat::new(prefix);
    check_key(&format, text);
    check_redaction(format.prefix().as_str(), text);
    check_id(text);
    check_base62(text);
});

/// Parses a prefix and checks that an accepted one matches `[a-z][a-z0-9]{1,9}` and
/// prints as written.
fn check_prefix(line: &str) -> Option<KeyPrefix> {
    let prefix = KeyPrefix::parse(line).ok()?;
    let bytes = line.as_bytes();
    assert!((2..=10).contains(&bytes.len()));
    assert!(bytes[0].is_ascii_lowercase());
    assert!(
        bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    assert_eq!(prefix.as_str(), line);
    assert_eq!(prefix.to_string(), line);
    Some(prefix)
}

/// Parses `text` as a key. An accepted key must be written back identically from its
/// parts, and every single-character change of it must be rejected.
fn check_key(format: &KeyFormat, text: &str) {
    let prefix = format.prefix().as_str();
    let parsed = match format.parse(text) {
        Ok(parsed) => parsed,
        Err(err) => {
            assert_no_key_text(&err.to_string(), prefix);
            return;
        }
    };

    assert!(text.len() <= MAX_KEY_LEN);
    let parts: Vec<&str> = text.split('_').collect();
    assert_eq!(parts.len(), 5, "{parts:?}");
    assert_eq!(parts[0], prefix);
    assert_eq!(parts[1], parsed.env().as_str());
    let id = parsed.id();
    assert_eq!(id.as_str(), parts[2]);
    assert_eq!(KeyId::parse(id.as_str()).ok(), Some(id.clone()));
    assert_eq!(key::checksum(&text[..text.len() - 7]), parts[4]);

    let written = format.assemble(parsed.env(), &id, parts[3]);
    assert_eq!(
        written.expose(),
        text,
        "parse then assemble changed the key"
    );
    assert!(parsed.hash().matches(&KeyHash::of(text)));
    assert_eq!(redact_keys(text, prefix), "[REDACTED]");

    // CRC-32 detects every error burst of up to 32 bits, so no single changed character
    // can keep the checksum valid.
    for position in 0..text.len() {
        let mut changed = text.as_bytes().to_vec();
        changed[position] = match changed[position] {
            b'z' => b'0',
            b'_' => b'a',
            other => {
                base62::ALPHABET[base62::ALPHABET
                    .iter()
                    .position(|digit| *digit == other)
                    .expect("a parsed key is base62 digits and `_`")
                    + 1]
            }
        };
        let changed = String::from_utf8(changed).expect("ASCII stays UTF-8");
        assert!(
            format.parse(&changed).is_err(),
            "a key with byte {position} changed was accepted"
        );
    }
}

/// Checks that `redact_keys` leaves nothing key-like and is idempotent.
fn check_redaction(prefix: &str, text: &str) {
    let redacted = redact_keys(text, prefix);
    assert_no_key_text(&redacted, prefix);
    assert_eq!(redact_keys(&redacted, prefix), redacted);
}

fn check_id(text: &str) {
    let Ok(id) = KeyId::parse(text) else {
        return;
    };
    assert_eq!(id.as_str(), text);
    assert_eq!(text.len(), key::ID_LEN);
    assert!(text.bytes().all(base62::is_digit));
}

/// Checks that decoding base62 inverts fixed-width encoding, and that checksums are 6
/// digits holding a 32-bit value.
fn check_base62(text: &str) {
    if text.len() <= 64
        && let Some(value) = base62::decode(text)
    {
        assert_eq!(
            base62::encode_fixed(value, text.len()).as_deref(),
            Some(text)
        );
    }
    let checksum = key::checksum(text);
    assert_eq!(checksum.len(), key::CHECKSUM_LEN);
    let value = base62::decode(&checksum).expect("a checksum is base62");
    assert!(value <= u64::from(u32::MAX));
}
