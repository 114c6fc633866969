//! PostgreSQL settings in a manifest (the sink), parsed and checked in one place: the
//! validator reports problems by field, and the runtime connects with what [`parse_url`]
//! gives, so the two never read a URL differently.

use crate::spec::PostgresSink;

/// The TLS settings a URL may ask for, as libpq reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by a trusted CA (the system's, or `sslrootcert`).
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

/// A connection URL, taken apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostgresUrl {
    pub user: Option<String>,
    /// Hosts and ports, tried in order (libpq's `host1:5432,host2:5432`).
    pub hosts: Vec<(String, u16)>,
    pub database: String,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a PEM file of CAs trusted besides the system's.
    pub ca_file: Option<String>,
    pub connect_timeout_seconds: Option<u64>,
    pub application_name: Option<String>,
}

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

const URL_EXAMPLE: &str = "write e.g. postgres://sluice@db.example:5432/analytics?sslmode=require";

/// `%xx` escapes decoded; `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|t| t.into_owned())
}

/// Reads `postgres://[user@]host[:port][,host[:port]...]/database[?key=value&...]`. Errors
/// never repeat a password.
pub fn parse_url(url: &str) -> Result<PostgresUrl, String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(format!("is not a postgres:// URL; {URL_EXAMPLE}"));
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let Some((authority, database)) = before_query.split_once('/') else {
        return Err(format!("names no database; {URL_EXAMPLE}"));
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut parsed = PostgresUrl::default();
    if let Some(userinfo) = userinfo {
        if userinfo.contains(':') {
            return Err("holds a password, which does not belong in a manifest; set SLUICE_POSTGRES_PASSWORD in the environment (on Kubernetes: spec.postgresCredentials)".to_string());
        }
        let user = percent_decode(userinfo)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("has no valid user name before '@'; {URL_EXAMPLE}"))?;
        parsed.user = Some(user);
    }
    for entry in hosts.split(',') {
        let (host, port) = match entry.rsplit_once(':') {
            // An IPv6 address in brackets holds colons of its own.
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (entry, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("has port {p:?}, not 1-65535; {URL_EXAMPLE}")),
            },
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !host_ok {
            return Err(format!(
                "has host {:?}, not a host name or address; {URL_EXAMPLE}",
                crate::shorten(host, 80)
            ));
        }
        parsed.hosts.push((host.to_string(), port));
    }
    parsed.database = percent_decode(database)
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .ok_or_else(|| format!("names no database after the host; {URL_EXAMPLE}"))?;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value =
            percent_decode(value).ok_or_else(|| format!("has a malformed value of {key:?}"))?;
        match key {
            "sslmode" => {
                parsed.ssl_mode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(format!(
                            "has sslmode={:?}; use disable, prefer, require, verify-ca or verify-full",
                            crate::shorten(&value, 40)
                        ));
                    }
                }
            }
            "sslrootcert" if !value.is_empty() => parsed.ca_file = Some(value),
            "connect_timeout" => match value.parse::<u64>() {
                Ok(s) if (1..=3600).contains(&s) => parsed.connect_timeout_seconds = Some(s),
                _ => return Err("has connect_timeout not 1-3600 (seconds)".to_string()),
            },
            "application_name" => parsed.application_name = Some(value),
            "password" | "passfile" | "sslpassword" | "sslkey" => {
                return Err(format!(
                    "has {key}, a credential, which does not belong in a manifest; set SLUICE_POSTGRES_PASSWORD in the environment (on Kubernetes: spec.postgresCredentials)"
                ));
            }
            other => {
                return Err(format!(
                    "has the setting {:?}, which Sluice does not pass on; use sslmode, sslrootcert, connect_timeout or application_name",
                    crate::shorten(other, 40)
                ));
            }
        }
    }
    Ok(parsed)
}

/// The problem of a name Sluice writes quoted into SQL: letters, digits, `_` and `$`, not
/// starting with a digit or `$`, at most 63 bytes.
pub fn identifier_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    (!ok).then(|| {
        format!(
            "{:?} is not a PostgreSQL name Sluice writes; use 1-63 letters, digits, '_' or '$', starting with a letter or '_'",
            crate::shorten(name, 80)
        )
    })
}

/// The table's schema (when named) and name.
pub fn split_table(table: &str) -> (Option<&str>, &str) {
    match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    }
}

/// Every problem of a PostgreSQL sink, as (field below `postgres.`, message).
pub fn sink_problems(p: &PostgresSink) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(e) = parse_url(&p.url) {
        out.push(("url".to_string(), e));
    }
    let (schema, name) = split_table(&p.table);
    for part in schema.into_iter().chain([name]) {
        if let Some(problem) = identifier_problem(part) {
            out.push((
                "table".to_string(),
                format!("{problem}; write name or schema.name"),
            ));
            break;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, column) in p.columns.iter().enumerate() {
        if let Some(problem) = identifier_problem(&column.name) {
            out.push((format!("columns[{i}].name"), problem));
        } else if !seen.insert(column.name.as_str()) {
            out.push((
                format!("columns[{i}].name"),
                format!("{:?} is written twice; name each column once", column.name),
            ));
        }
        let set = [
            column.field.is_some(),
            column.expr.is_some(),
            column.batch_time == Some(true),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            out.push((
                format!("columns[{i}]"),
                "set at most one of field, expr or batchTime".to_string(),
            ));
        }
    }
    let mut keys = std::collections::BTreeSet::new();
    for (i, key) in p.key.iter().enumerate() {
        if let Some(problem) = identifier_problem(key) {
            out.push((format!("key[{i}]"), problem));
        } else if !keys.insert(key.as_str()) {
            out.push((format!("key[{i}]"), format!("{key:?} is named twice")));
        } else if !p.columns.is_empty() && !p.columns.iter().any(|c| &c.name == key) {
            out.push((
                format!("key[{i}]"),
                format!("{key:?} is not one of the columns written; add it to columns"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart() {
        let u = parse_url(
            "postgres://app@db-0.db:6543,db-1.db/analytics?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5",
        )
        .expect("valid");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(
            u.hosts,
            [("db-0.db".to_string(), 6543), ("db-1.db".to_string(), 5432)]
        );
        assert_eq!(u.database, "analytics");
        assert_eq!(u.ssl_mode, SslMode::VerifyFull);
        assert_eq!(u.ca_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(u.connect_timeout_seconds, Some(5));
        let v6 = parse_url("postgresql://[::1]:5433/x%20y").expect("valid");
        assert_eq!(v6.hosts, [("::1".to_string(), 5433)]);
        assert_eq!(v6.database, "x y");
        assert_eq!(v6.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn bad_urls_are_named_and_passwords_never_repeated() {
        for (url, says) in [
            ("mysql://db/x", "not a postgres:// URL"),
            ("postgres://db", "names no database"),
            ("postgres://db/", "names no database"),
            ("postgres://db:0/x", "not 1-65535"),
            ("postgres://db:http/x", "not 1-65535"),
            ("postgres://a b/x", "not a host name"),
            ("postgres://db/x?sslmode=always", "sslmode"),
            ("postgres://db/x?gssencmode=require", "does not pass on"),
            ("postgres://db/x?connect_timeout=0", "connect_timeout"),
        ] {
            let err = parse_url(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
        for url in [
            "postgres://app:hunter2@db/x",
            "postgres://db/x?password=hunter2",
        ] {
            let err = parse_url(url).expect_err(url);
            assert!(err.contains("SLUICE_POSTGRES_PASSWORD"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn names_tables_columns_and_keys_are_checked() {
        assert_eq!(identifier_problem("word_counts$2"), None);
        for bad in ["", "1st", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(identifier_problem(bad).is_some(), "{bad:?}");
        }
        let sink = PostgresSink {
            url: "postgres://db/x".into(),
            table: "public.my-table".into(),
            columns: vec![
                crate::spec::PostgresColumn {
                    name: "word".into(),
                    field: Some("w".into()),
                    expr: Some("key".into()),
                    batch_time: None,
                },
                crate::spec::PostgresColumn {
                    name: "word".into(),
                    ..Default::default()
                },
                crate::spec::PostgresColumn {
                    name: "at".into(),
                    expr: Some("key".into()),
                    batch_time: Some(true),
                    ..Default::default()
                },
            ],
            key: vec!["n".into()],
        };
        let fields: Vec<String> = sink_problems(&sink).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "table",
                "columns[0]",
                "columns[1].name",
                "columns[2]",
                "key[0]"
            ],
            "{fields:?}"
        );
    }
}
