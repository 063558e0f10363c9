//! Plain-text tables and detail views for human-readable CLI output.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::{ClientObject, KeyObject, SecretObject};

/// Formats rows under headers, padding each column to its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Renders one table row per key, with the columns an operator scans first.
pub fn key_rows(keys: &[KeyObject]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.name.clone(),
                key.owner.clone().unwrap_or_else(|| "-".into()),
                key.env.to_string(),
                key.scopes.join(" "),
                status(key).to_owned(),
                time_text(Some(key.created_at)),
            ]
        })
        .collect();
    render(
        &["ID", "NAME", "OWNER", "ENV", "SCOPES", "STATUS", "CREATED"],
        &rows,
    )
}

/// Renders every field of one key, one per line.
pub fn key_detail(key: &KeyObject) -> String {
    let metadata = serde_json::to_string(&key.metadata).unwrap_or_default();
    let fields = [
        ("id", key.id.clone()),
        ("name", key.name.clone()),
        ("owner", key.owner.clone().unwrap_or_else(|| "-".into())),
        ("env", key.env.to_string()),
        ("scopes", key.scopes.join(" ")),
        ("status", status(key).to_owned()),
        ("metadata", metadata),
        ("created_at", time_text(Some(key.created_at))),
        ("expires_at", time_text(key.expires_at)),
        ("revoked_at", time_text(key.revoked_at)),
        ("last_used_at", time_text(key.last_used_at)),
        (
            "successor_id",
            key.successor_id.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{label:<13} {value}\n"));
    }
    out
}

/// Formats one table row per client, with the columns an operator scans first.
pub fn client_rows(clients: &[ClientObject]) -> String {
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|client| {
            vec![
                client.client_id.clone(),
                client.name.clone(),
                client.owner.clone().unwrap_or_else(|| "-".into()),
                list_text(&client.scopes),
                list_text(&client.audiences),
                client.token_lifetime_seconds.to_string(),
                time_text(Some(client.created_at)),
            ]
        })
        .collect();
    render(
        &[
            "CLIENT ID",
            "NAME",
            "OWNER",
            "SCOPES",
            "AUDIENCES",
            "LIFETIME",
            "CREATED",
        ],
        &rows,
    )
}

/// Formats every field of one client, one per line, labelled with its JSON name.
pub fn client_detail(client: &ClientObject) -> String {
    detail(&client_fields(client))
}

/// Formats a client and its first secret, with the secret on the last line.
pub fn created_client_detail(client: &ClientObject, secret: &SecretObject) -> String {
    let mut fields = client_fields(client);
    fields.extend(secret_fields(secret));
    detail(&fields)
}

/// Formats a new secret of the client `client_id`, with the secret on the last line.
pub fn secret_detail(client_id: &str, secret: &SecretObject) -> String {
    let mut fields = vec![("client_id", client_id.to_owned())];
    fields.extend(secret_fields(secret));
    detail(&fields)
}

fn client_fields(client: &ClientObject) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", client.client_id.clone()),
        ("name", client.name.clone()),
        ("owner", client.owner.clone().unwrap_or_else(|| "-".into())),
        ("scopes", list_text(&client.scopes)),
        ("audiences", list_text(&client.audiences)),
        (
            "default_audience",
            client
                .default_audience
                .clone()
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "token_lifetime_seconds",
            client.token_lifetime_seconds.to_string(),
        ),
        ("jwks", jwks_text(client.jwks.as_ref())),
        ("created_at", time_text(Some(client.created_at))),
    ]
}

/// Summarises a client's JWK set as its number of keys and their `kid` values. The keys
/// themselves are too long for one line, and `--json` prints the whole set.
fn jwks_text(jwks: Option<&serde_json::Value>) -> String {
    let Some(jwks) = jwks else {
        return "-".into();
    };
    let keys = jwks["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let kids: Vec<&str> = keys
        .iter()
        .map(|key| key["kid"].as_str().unwrap_or("(no kid)"))
        .collect();
    let noun = if keys.len() == 1 { "key" } else { "keys" };
    format!("{} {noun}: {}", keys.len(), kids.join(" "))
}

/// Lists the secret's fields. No expiry, 0 in JSON, is shown as `-`.
fn secret_fields(secret: &SecretObject) -> Vec<(&'static str, String)> {
    let expires_at = match secret.client_secret_expires_at {
        0 => None,
        seconds => OffsetDateTime::from_unix_timestamp(seconds).ok(),
    };
    vec![
        ("client_secret_key_id", secret.client_secret_key_id.clone()),
        ("client_secret_expires_at", time_text(expires_at)),
        ("client_secret", secret.client_secret.expose().to_owned()),
    ]
}

/// Formats labelled values one per line, each value starting in the same column.
fn detail(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or_default();
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{label:<width$} {value}\n"));
    }
    out
}

/// Joins list items with spaces, or `-` for an empty list.
fn list_text(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(" ")
    }
}

fn status(key: &KeyObject) -> &'static str {
    let now = OffsetDateTime::now_utc();
    if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else if key.successor_id.is_some() {
        "rolled"
    } else {
        "active"
    }
}

fn time_text(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_pads_columns() {
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()]];
        assert_eq!(render(&["ID", "NAME"], &rows), "ID  NAME\na   long value\n");
    }

    #[test]
    fn detail_aligns_values() {
        let fields = [("id", "a".to_owned()), ("long_label", "b".to_owned())];
        assert_eq!(detail(&fields), "id         a\nlong_label b\n");
    }

    #[test]
    fn jwks_text_names_kids() {
        let jwks = serde_json::json!({"keys": [{"kid": "k1"}, {"kty": "EC"}]});
        assert_eq!(jwks_text(Some(&jwks)), "2 keys: k1 (no kid)");
        assert_eq!(jwks_text(None), "-");
    }

    #[test]
    fn list_text_marks_empty_list() {
        assert_eq!(list_text(&[]), "-");
        assert_eq!(list_text(&["a".to_owned(), "b".to_owned()]), "a b");
    }
}
