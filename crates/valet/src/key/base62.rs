//! Base62 digits in the order `0-9`, `A-Z`, `a-z`, as the key format uses them.

/// The 62 digits, indexed by value.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Returns whether `byte` is one of the 62 digits.
pub fn is_digit(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

/// Encodes `value` as exactly `width` digits, most significant first, left-padded with `0`.
///
/// Returns `None` when `value` needs more than `width` digits.
pub fn encode_fixed(mut value: u64, width: usize) -> Option<String> {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    if value != 0 {
        return None;
    }
    Some(String::from_utf8(digits).expect("base62 digits are ASCII"))
}

/// Decodes digits written by [`encode_fixed`]; returns `None` on a non-digit or overflow.
pub fn decode(text: &str) -> Option<u64> {
    let mut value: u64 = 0;
    for byte in text.bytes() {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'A'..=b'Z' => byte - b'A' + 10,
            b'a'..=b'z' => byte - b'a' + 36,
            _ => return None,
        };
        value = value.checked_mul(62)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// Fills a string of `len` digits drawn uniformly from the operating system's CSPRNG.
///
/// Rejection sampling keeps the draw uniform: a random byte is used only when it is below
/// 248 (4 × 62), so every digit is equally likely.
pub fn random(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut pool)?;
        for &byte in &pool {
            if byte < 248 && out.len() < len {
                out.push(ALPHABET[(byte % 62) as usize] as char);
            }
        }
    }
    pool.fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_fixed_pads_and_orders_digits() {
        assert_eq!(encode_fixed(0, 6).as_deref(), Some("000000"));
        assert_eq!(encode_fixed(61, 6).as_deref(), Some("00000z"));
        assert_eq!(encode_fixed(62, 6).as_deref(), Some("000010"));
        assert_eq!(encode_fixed(u32::MAX as u64, 6).as_deref(), Some("4gfFC3"));
    }

    #[test]
    fn decode_inverts_encode_fixed() {
        for value in [0, 1, 61, 62, 12_345_678, u64::from(u32::MAX), u64::MAX] {
            let text = encode_fixed(value, 11).unwrap();
            assert_eq!(decode(&text), Some(value), "{text}");
        }
        assert_eq!(decode("zzzzzzzzzzzz"), None);
        assert_eq!(decode("ab-c"), None);
    }

    #[test]
    fn encode_fixed_rejects_overflow() {
        assert_eq!(encode_fixed(62, 1), None);
    }

    #[test]
    fn random_draws_only_digits() {
        let drawn = random(500).unwrap();
        assert_eq!(drawn.len(), 500);
        assert!(drawn.bytes().all(is_digit));
    }

    #[test]
    fn random_draws_every_digit_about_equally() {
        // 62,000 draws give each digit 1,000 on average with a standard deviation near 31,
        // so a bound of 800 to 1,200 fails only for a biased draw.
        let drawn = random(62_000).unwrap();
        let mut counts = [0u32; 62];
        for byte in drawn.bytes() {
            let index = ALPHABET.iter().position(|&digit| digit == byte).unwrap();
            counts[index] += 1;
        }
        for (index, count) in counts.iter().enumerate() {
            assert!(
                (800..=1200).contains(count),
                "digit {} drawn {count} times",
                ALPHABET[index] as char
            );
        }
    }
}
