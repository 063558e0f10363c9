//! Domain types for stored keys and the validated values that change them.
//!
//! Input is parsed into these types once, at the edge, so the service and the store can
//! rely on their limits. None of them ever contains a raw key.

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::key::{KeyEnv, KeyHash, KeyId};

/// Maximum number of characters in a key name or owner.
pub const MAX_TEXT_CHARS: usize = 200;
/// Maximum number of characters in one scope.
pub const MAX_SCOPE_CHARS: usize = 128;
/// Maximum number of scopes on one key or in one request.
pub const MAX_SCOPES: usize = 64;
/// Maximum size of a key's metadata, serialized as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Error for a field value outside its allowed range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Human-readable key name: 1 to 200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    /// Parses a name for the field `field`.
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        parse_text("name", value).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's own id for the customer or service a key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    /// Parses an owner: 1 to 200 characters, no control characters.
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        parse_text("owner", value).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_text(field: &'static str, value: &str) -> Result<String, InvalidField> {
    let chars = value.chars().count();
    if value.trim().is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if chars > MAX_TEXT_CHARS {
        return Err(InvalidField::new(
            field,
            format!("is {chars} characters long; the maximum is {MAX_TEXT_CHARS}"),
        ));
    }
    if value.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(InvalidField::new(
            field,
            "must not contain control characters, or invisible or direction-changing ones such as U+200B or U+202E",
        ));
    }
    Ok(value.to_owned())
}

/// Returns whether `c` is an invisible formatting character (zero-width, bidirectional
/// override, line separator) that can make two different values look alike in a listing.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// One scope, as RFC 6749 section 3.3 defines a scope token: printable ASCII other than
/// space, `"` and `\`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    /// Parses one scope token.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, InvalidField> {
        if value.is_empty() {
            return Err(InvalidField::new(field, "a scope must not be empty"));
        }
        if value.len() > MAX_SCOPE_CHARS {
            return Err(InvalidField::new(
                field,
                format!("a scope is at most {MAX_SCOPE_CHARS} characters"),
            ));
        }
        let valid = value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        // The value is not repeated, because a misplaced key can arrive in a scope field.
        if !valid {
            return Err(InvalidField::new(
                field,
                "a scope may contain only printable ASCII other than space, `\"` and `\\`",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes in the order first given, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Parses a list of scopes for the field `field`, dropping repeats.
    pub fn parse<S: AsRef<str>>(field: &'static str, values: &[S]) -> Result<Self, InvalidField> {
        if values.len() > MAX_SCOPES {
            return Err(InvalidField::new(
                field,
                format!("{} scopes given; the maximum is {MAX_SCOPES}", values.len()),
            ));
        }
        let mut scopes: Vec<Scope> = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let scope = Scope::parse(field, value.as_ref())
                .map_err(|err| InvalidField::new(field, format!("item {index}: {}", err.reason)))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(Self(scopes))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the scopes as plain strings, for storage and responses.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }
}

/// Free-form JSON object attached to a key, at most 4 KiB as compact JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    /// Checks that `value` is a JSON object within the size limit.
    pub fn parse(value: Value) -> Result<Self, InvalidField> {
        let Value::Object(map) = value else {
            return Err(InvalidField::new("metadata", "must be a JSON object"));
        };
        let size = serde_json::to_vec(&map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(InvalidField::new(
                "metadata",
                format!("is {size} bytes as JSON; the maximum is {MAX_METADATA_BYTES}"),
            ));
        }
        if object_contains_nul(&map) {
            return Err(nul_error("metadata"));
        }
        Ok(Self(map))
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Rejects JSON that contains U+0000 in a string or an object member name.
///
/// PostgreSQL cannot store that character in `jsonb` and fails the whole insert, so it is
/// rejected on every backend, and a request means the same on SQLite and PostgreSQL.
pub fn check_no_nul(field: &'static str, value: &Value) -> Result<(), InvalidField> {
    if contains_nul(value) {
        return Err(nul_error(field));
    }
    Ok(())
}

fn nul_error(field: &'static str) -> InvalidField {
    InvalidField::new(
        field,
        "must not contain the character U+0000 (\\u0000) in a string or a member name",
    )
}

/// Returns whether `value` contains U+0000 anywhere. The recursion is bounded because
/// serde_json refuses to parse JSON nested 128 levels deep or more.
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => object_contains_nul(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn object_contains_nul(map: &Map<String, Value>) -> bool {
    map.iter()
        .any(|(name, item)| name.contains('\0') || contains_nul(item))
}

/// A key as stored, without its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub env: KeyEnv,
    pub metadata: Map<String, Value>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    pub successor_id: Option<KeyId>,
    /// The OAuth client this key is a secret of, if any.
    pub client_id: Option<String>,
}

impl KeyRecord {
    /// Returns whether the key has expired at `now`, in microseconds since the Unix epoch
    /// (see [`now_micros`]). A key expires at its `expires_at`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| to_micros(at) <= now)
    }

    /// Returns the first of `required` that the key lacks, if any.
    pub fn missing_scope<'a>(&self, required: &'a Scopes) -> Option<&'a Scope> {
        required
            .iter()
            .find(|scope| !self.scopes.iter().any(|held| held == scope.as_str()))
    }
}

/// A stored key together with the hash its presented form must match.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub record: KeyRecord,
    pub hash: KeyHash,
}

/// Everything the store needs to insert a key.
#[derive(Clone, Debug)]
pub struct NewKeyRecord {
    pub id: KeyId,
    pub hash: KeyHash,
    pub name: KeyName,
    pub owner: Option<Owner>,
    pub scopes: Scopes,
    pub env: KeyEnv,
    pub metadata: Metadata,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub client_id: Option<String>,
}

/// The new key of a roll. Its name, owner, scopes and metadata are copied from the old
/// key inside the roll's transaction, so a concurrent update cannot be lost.
#[derive(Clone, Debug)]
pub struct Successor {
    pub id: KeyId,
    pub hash: KeyHash,
    /// Environment the raw key was generated for; the roll fails unless the old key has it.
    pub env: KeyEnv,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// Fields to change on a key; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    pub name: Option<KeyName>,
    /// `Some(None)` clears the owner.
    pub owner: Option<Option<Owner>>,
    pub scopes: Option<Scopes>,
    pub metadata: Option<Metadata>,
}

impl KeyUpdate {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.owner.is_none()
            && self.scopes.is_none()
            && self.metadata.is_none()
    }
}

/// Latest expiry a key may have: the end of year 9999 UTC, the last instant that RFC 3339
/// can write.
pub const MAX_EXPIRY: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999999 UTC);

/// Checks a requested expiry and returns it in UTC, truncated to whole microseconds.
///
/// The expiry must lie after `now` and no later than [`MAX_EXPIRY`]; an offset such as
/// `-00:01` can move a year-9999 timestamp past that limit.
pub fn parse_expiry(
    at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, InvalidField> {
    let too_late = || InvalidField::new("expires_at", "must be no later than 9999-12-31T23:59:59Z");
    let utc = at
        .checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(too_late)?;
    if utc <= now {
        return Err(InvalidField::new("expires_at", "must be in the future"));
    }
    if utc > MAX_EXPIRY {
        return Err(too_late());
    }
    Ok(utc
        .replace_nanosecond(utc.nanosecond() / 1_000 * 1_000)
        .expect("a truncated nanosecond is in range"))
}

/// Returns the current time, truncated to whole microseconds so that it survives a round
/// trip through either store unchanged.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .expect("a truncated nanosecond is in range")
}

/// Returns the current time in whole microseconds since the Unix epoch, as [`now`] would
/// give it after [`to_micros`], without working out a calendar date.
///
/// Verification reads the clock on every request, and building an [`OffsetDateTime`]
/// costs more than the clock read itself.
pub fn now_micros() -> i64 {
    let (sign, since) = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => (1, after),
        Err(before) => (-1, before.duration()),
    };
    sign * i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// Converts a timestamp to whole microseconds since the Unix epoch.
pub fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// Converts microseconds since the Unix epoch back to a UTC timestamp.
pub fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_parse_follows_rfc6749_charset() {
        for good in ["admin", "keys:verify", "orders.read", "a!#[]~"] {
            assert!(Scope::parse("scopes", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "has space",
            "quote\"",
            "back\\slash",
            "tab\t",
            "é",
            &"s".repeat(129),
        ] {
            assert!(Scope::parse("scopes", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes_parse_drops_repeats() {
        let scopes = Scopes::parse("scopes", &["a", "b", "a"]).unwrap();
        assert_eq!(scopes.to_strings(), vec!["a", "b"]);
    }

    #[test]
    fn scopes_parse_limits_count() {
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(Scopes::parse("scopes", &many).is_err());
    }

    #[test]
    fn text_parse_rejects_empty_long_and_control() {
        assert!(KeyName::parse("billing worker").is_ok());
        assert!(KeyName::parse("  ").is_err());
        assert!(KeyName::parse(&"n".repeat(201)).is_err());
        assert!(Owner::parse("acme\n").is_err());
        assert!(Owner::parse("acme\u{200B}").is_err());
        assert!(KeyName::parse("\u{202E}evil").is_err());
        assert!(KeyName::parse("Zürich café").is_ok());
    }

    #[test]
    fn metadata_parse_requires_small_object() {
        assert!(Metadata::parse(serde_json::json!({"team": "billing"})).is_ok());
        assert!(Metadata::parse(serde_json::json!([1, 2])).is_err());
        let big = serde_json::json!({ "blob": "x".repeat(MAX_METADATA_BYTES) });
        assert!(Metadata::parse(big).is_err());
    }

    #[test]
    fn nul_is_rejected_anywhere_in_json() {
        let clean = serde_json::json!({"a": ["b", {"c": 1}]});
        assert!(check_no_nul("metadata", &clean).is_ok());
        for value in [
            serde_json::json!({"a": "x\u{0}"}),
            serde_json::json!({"a\u{0}": 1}),
            serde_json::json!({"a": [{"b": ["\u{0}"]}]}),
        ] {
            let err = check_no_nul("metadata", &value).unwrap_err();
            assert_eq!(err.field, "metadata", "{value}");
        }
        let map = serde_json::json!({"a": "\u{0}"});
        assert!(Metadata::parse(map).is_err());
    }

    #[test]
    fn parse_expiry_bounds_range() {
        let now = now();
        let past = now - time::Duration::seconds(1);
        assert!(parse_expiry(past, now).is_err());
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let beyond = OffsetDateTime::parse("9999-12-31T23:59:59-00:01", rfc3339).unwrap();
        assert!(parse_expiry(beyond, now).is_err(), "year 10000 in UTC");
        let local = time::macros::datetime!(2099-01-01 02:00)
            .assume_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        let utc = parse_expiry(local, now).unwrap();
        assert_eq!(utc, time::macros::datetime!(2099-01-01 00:00 UTC));
        assert_eq!(from_micros(to_micros(utc)), Some(utc));
    }

    #[test]
    fn micros_round_trip() {
        let at = now();
        assert_eq!(from_micros(to_micros(at)), Some(at));
    }

    #[test]
    fn now_micros_matches_now() {
        let before = to_micros(now());
        let read = now_micros();
        let after = to_micros(now());
        assert!(
            before <= read && read <= after,
            "{before} <= {read} <= {after}"
        );
    }
}
