use proptest::prelude::*;

use super::*;

const SECRET_A: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";

/// Keys whose checksums were computed independently with Python's `zlib.crc32`.
const VECTORS: &[(&str, &str)] = &[
    (
        "vk",
        "vk_live_3fK9aZ1q_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg_3jycpD",
    ),
    (
        "vk",
        "vk_test_00000000_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz_1ObvFz",
    ),
    (
        "acme2",
        "acme2_live_Zz09Yy18_gfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA9876543210_2dhIbL",
    ),
];

fn format(prefix: &str) -> KeyFormat {
    KeyFormat::new(KeyPrefix::parse(prefix).unwrap())
}

#[test]
fn checksum_matches_zlib_vectors() {
    assert_eq!(checksum(""), "000000");
    assert_eq!(checksum(&format!("vk_live_3fK9aZ1q_{SECRET_A}")), "3jycpD");
}

#[test]
fn parse_accepts_fixed_vectors() {
    for (prefix, key) in VECTORS {
        let parsed = format(prefix)
            .parse(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let id = key.split('_').nth(2).unwrap();
        assert_eq!(parsed.id().as_str(), id);
    }
}

#[test]
fn assemble_reproduces_fixed_vector() {
    let id = KeyId::parse("3fK9aZ1q").unwrap();
    let key = format("vk").assemble(KeyEnv::Live, &id, SECRET_A);
    assert_eq!(key.expose(), VECTORS[0].1);
}

#[test]
fn parse_names_the_wrong_part() {
    let good = VECTORS[0].1;
    let cases: Vec<(String, KeyFormatError)> = vec![
        (String::new(), KeyFormatError::Empty),
        (
            "x".repeat(MAX_KEY_LEN + 1),
            KeyFormatError::TooLong {
                len: MAX_KEY_LEN + 1,
            },
        ),
        ("vk_live_abc".into(), KeyFormatError::PartCount { parts: 3 }),
        (
            format!("{good}_extra"),
            KeyFormatError::PartCount { parts: 6 },
        ),
        (
            good.replacen("vk_", "sk_", 1),
            KeyFormatError::Prefix {
                expected: "vk".into(),
            },
        ),
        (good.replacen("_live_", "_prod_", 1), KeyFormatError::Env),
        (good.replacen("3fK9aZ1q", "3fK9aZ1", 1), KeyFormatError::Id),
        (good.replacen("3fK9aZ1q", "3fK9aZ1-", 1), KeyFormatError::Id),
        (good.replacen("0123", "012", 1), KeyFormatError::Secret),
        (good.replacen("0123", "01é", 1), KeyFormatError::Secret),
        (
            good.replacen("3jycpD", "3jycp", 1),
            KeyFormatError::ChecksumFormat,
        ),
        (
            good.replacen("3jycpD", "3jycpE", 1),
            KeyFormatError::ChecksumMismatch,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            format("vk").parse(&input).err(),
            Some(expected),
            "input {input:?}"
        );
    }
}

#[test]
fn parse_rejects_other_prefix_vector() {
    let err = format("vk").parse(VECTORS[2].1).unwrap_err();
    assert_eq!(
        err,
        KeyFormatError::Prefix {
            expected: "vk".into()
        }
    );
}

#[test]
fn format_error_never_repeats_secret() {
    let tampered = VECTORS[0].1.replacen("3jycpD", "3jycpE", 1);
    let message = format("vk").parse(&tampered).unwrap_err().to_string();
    assert!(!message.contains(SECRET_A));
}

#[test]
fn prefix_parse_enforces_pattern() {
    for good in ["vk", "acme2", "abcdefghij"] {
        assert!(KeyPrefix::parse(good).is_ok(), "{good}");
    }
    for bad in ["", "v", "Vk", "1k", "v_k", "abcdefghijk", "vk-1"] {
        assert!(KeyPrefix::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn raw_key_debug_is_redacted() {
    let id = KeyId::parse("3fK9aZ1q").unwrap();
    let key = format("vk").assemble(KeyEnv::Live, &id, SECRET_A);
    assert_eq!(format!("{key:?}"), "RawKey([REDACTED])");
}

#[test]
fn hash_matches_only_same_key() {
    let a = KeyHash::of(VECTORS[0].1);
    assert!(a.matches(&KeyHash::of(VECTORS[0].1)));
    assert!(!a.matches(&KeyHash::of(VECTORS[1].1)));
}

fn any_env() -> impl Strategy<Value = KeyEnv> {
    prop_oneof![Just(KeyEnv::Live), Just(KeyEnv::Test)]
}

proptest! {
    #[test]
    fn generated_key_parses(env in any_env()) {
        let fmt = format("vk");
        let id = KeyId::generate().unwrap();
        let key = fmt.generate(env, &id).unwrap();
        let parsed = fmt.parse(key.expose()).unwrap();
        prop_assert_eq!(parsed.id(), id);
        prop_assert_eq!(parsed.env(), env);
    }

    #[test]
    fn single_changed_character_is_rejected(
        env in any_env(),
        position in 0usize..MAX_KEY_LEN,
        replacement in any::<char>(),
    ) {
        let fmt = format("vk");
        let id = KeyId::generate().unwrap();
        let key = fmt.generate(env, &id).unwrap();
        let original = key.expose();
        let position = position % original.chars().count();
        let mut chars: Vec<char> = original.chars().collect();
        prop_assume!(chars[position] != replacement);
        chars[position] = replacement;
        let changed: String = chars.into_iter().collect();
        prop_assert!(fmt.parse(&changed).is_err());
    }
}
