//! Plain-text tables and detail views for human-readable CLI output.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::KeyObject;

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

/// One table row per key: the columns an operator scans first.
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

/// Every field of one key, one per line.
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
}
