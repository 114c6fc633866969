//! The SQL the PostgreSQL sink sends, and how a manifest value becomes a column's text: pure
//! functions, so every statement is tested without a server.

use crate::manifest::Value;

/// The table that marks, per sink and partition, the newest batch written.
pub const MARKS_TABLE: &str = "sluice_batches";

/// `name` as a quoted identifier (manifest names are checked to hold no quote; doubling one
/// keeps this safe whatever it is given).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`, or `"name"` (found by the search path).
pub fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote(s), quote(name)),
        None => quote(name),
    }
}

/// A column of the target table as the sink writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type without modifiers (`character varying`, not `character varying(10)`): a
    /// value is cast to it, and the table's own check of the modifier (a length, a precision)
    /// still applies on assignment, so nothing is silently cut.
    pub base_type: String,
    /// `json` or `jsonb`: every value is written as JSON (text too, quoted).
    pub json: bool,
}

/// The statement that writes a batch's rows: one text array per column, each element cast
/// to its column's type; with `key`, an upsert on those columns.
pub fn insert(table: &str, columns: &[Column], key: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("u.c{i}::{}", c.base_type))
        .collect();
    let arrays: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let mut sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS u({})",
        names.join(", "),
        casts.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    );
    if !key.is_empty() {
        let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !key.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        sql.push_str(&format!(" ON CONFLICT ({}) DO ", keys.join(", ")));
        if updates.is_empty() {
            sql.push_str("NOTHING");
        } else {
            sql.push_str(&format!("UPDATE SET {}", updates.join(", ")));
        }
    }
    sql
}

/// The marks table, created when missing, in the target table's schema.
pub fn create_marks(schema: Option<&str>) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (sink text NOT NULL, part integer NOT NULL, batch_time bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sink, part))",
        qualified(schema, MARKS_TABLE)
    )
}

/// The statements of one partition's transaction around its rows: make sure its mark exists,
/// lock it and read it, and move it on.
pub struct MarkStatements {
    pub ensure: String,
    pub lock: String,
    pub advance: String,
}

pub fn mark_statements(schema: Option<&str>) -> MarkStatements {
    let marks = qualified(schema, MARKS_TABLE);
    MarkStatements {
        ensure: format!(
            "INSERT INTO {marks} (sink, part, batch_time) VALUES ($1, $2, -1) ON CONFLICT DO NOTHING"
        ),
        lock: format!("SELECT batch_time FROM {marks} WHERE sink = $1 AND part = $2 FOR UPDATE"),
        advance: format!(
            "UPDATE {marks} SET batch_time = $3, written_at = now() WHERE sink = $1 AND part = $2"
        ),
    }
}

/// The columns of a table, with their types without modifiers (none when it does not exist:
/// `to_regclass` gives NULL rather than an error).
pub const TABLE_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, NULL), t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// A value as the text PostgreSQL reads for its column: NULL for null; JSON for json columns,
/// lists and maps; numbers and bools as PostgreSQL writes them.
pub fn column_text(value: &Value, json: bool) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        _ if json => value.to_json().to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => "NaN".to_string(),
        Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        }
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.to_string(),
        Value::List(_) | Value::Map(_) => value.to_json().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            base_type: ty.into(),
            json: ty.starts_with("json"),
        }
    }

    #[test]
    fn appends_and_upserts_cast_each_column() {
        let cols = [col("word", "text"), col("n", "bigint")];
        assert_eq!(
            insert("\"counts\"", &cols, &[]),
            "INSERT INTO \"counts\" (\"word\", \"n\") SELECT u.c0::text, u.c1::bigint FROM unnest($1::text[], $2::text[]) AS u(c0, c1)"
        );
        assert!(
            insert("\"counts\"", &cols, &["word".into()])
                .ends_with(" ON CONFLICT (\"word\") DO UPDATE SET \"n\" = EXCLUDED.\"n\"")
        );
        assert!(
            insert("\"counts\"", &cols, &["word".into(), "n".into()])
                .ends_with(" ON CONFLICT (\"word\", \"n\") DO NOTHING")
        );
    }

    #[test]
    fn names_are_quoted_whatever_they_hold() {
        assert_eq!(qualified(Some("app"), "t"), "\"app\".\"t\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert!(create_marks(None).contains("\"sluice_batches\""));
        assert!(
            mark_statements(Some("s"))
                .lock
                .contains("\"s\".\"sluice_batches\"")
        );
    }

    #[test]
    fn values_become_column_text() {
        assert_eq!(column_text(&Value::Null, false), None);
        assert_eq!(column_text(&Value::Null, true), None);
        assert_eq!(column_text(&Value::Int(-3), false).as_deref(), Some("-3"));
        assert_eq!(
            column_text(&Value::Float(f64::NEG_INFINITY), false).as_deref(),
            Some("-Infinity")
        );
        assert_eq!(
            column_text(&Value::Float(0.5), false).as_deref(),
            Some("0.5")
        );
        assert_eq!(
            column_text(&Value::Bool(true), false).as_deref(),
            Some("true")
        );
        assert_eq!(
            column_text(&Value::Str("a".into()), false).as_deref(),
            Some("a")
        );
        assert_eq!(
            column_text(&Value::Str("a".into()), true).as_deref(),
            Some("\"a\"")
        );
        let list = Value::List(vec![Value::Int(1), Value::Str("x".into())]);
        assert_eq!(column_text(&list, false).as_deref(), Some("[1,\"x\"]"));
    }
}
