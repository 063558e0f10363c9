//! Checks shared by the fuzz targets in `fuzz_targets/`.

/// Length from which a run of ASCII letters and digits could be a bare key secret. It
/// matches the threshold of `valet::redact::redact_keys`.
pub const SECRET_LIKE_RUN: usize = 32;

/// Asserts that `text`, a message built from fuzzer input, contains nothing that could be
/// key material of `prefix`: no `<prefix>_` and no run of 32 or more ASCII letters and
/// digits.
pub fn assert_no_key_text(text: &str, prefix: &str) {
    let marker = format!("{prefix}_");
    assert!(
        !text.contains(&marker),
        "message repeats key-like text: {text:?}"
    );
    let longest_run = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::len)
        .max()
        .unwrap_or_default();
    assert!(
        longest_run < SECRET_LIKE_RUN,
        "message repeats a secret-like run: {text:?}"
    );
}

/// Splits `data` at its first newline into the line before it and the rest. Without a
/// newline, the line is `None` and the rest is all of `data`.
pub fn split_line(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    }
}
