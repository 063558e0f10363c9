//! Redaction of anything that could be key material in text built from client input.

/// Replaces anything in `text` that could be key material with `[REDACTED]`: whatever
/// starts like a key of this server (`<prefix>_`), and any run of 32 or more letters and
/// digits, which could be a bare 43-character secret. Error messages built from client
/// input pass through here, so they never echo a key.
pub fn redact_keys(text: &str, prefix: &str) -> String {
    let marker = format!("{prefix}_");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let word_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if word_len == 0 {
            let next = rest.chars().next().expect("rest is not empty");
            out.push(next);
            rest = &rest[next.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        let longest_run = word.split('_').map(str::len).max().unwrap_or_default();
        if word.contains(&marker) || longest_run >= SECRET_LIKE_RUN {
            out.push_str("[REDACTED]");
        } else {
            out.push_str(word);
        }
        rest = &rest[word_len..];
    }
    out
}

/// Length from which a run of letters and digits is treated as a possible secret.
const SECRET_LIKE_RUN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_keys_hides_every_key() {
        let text = "unknown variant `vk_live_abc_def_ghi`, expected `live` or vk_test_x";
        assert_eq!(
            redact_keys(text, "vk"),
            "unknown variant `[REDACTED]`, expected `live` or [REDACTED]"
        );
    }

    #[test]
    fn redact_keys_hides_bare_secret() {
        let secret = "Y0LilxG5SDhWcMsppCtit8HvRoFrqvqT6K1htA0ALP3";
        let text = format!("unknown field `{secret}`, expected one of `key`, `scopes`");
        assert_eq!(
            redact_keys(&text, "vk"),
            "unknown field `[REDACTED]`, expected one of `key`, `scopes`"
        );
    }

    #[test]
    fn redact_keys_keeps_other_text() {
        assert_eq!(
            redact_keys("missing field `name`", "vk"),
            "missing field `name`"
        );
    }
}
