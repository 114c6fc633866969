//! S3 locations in a manifest (checkpoints and sinks), parsed and checked in one place.

/// Splits `s3://bucket/prefix` into bucket and prefix (without slashes at the ends).
pub fn parse_s3_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// What is wrong with an `s3://bucket/prefix` URI, if anything.
pub fn s3_uri_problem(uri: &str) -> Option<String> {
    let Some(rest) = uri.strip_prefix("s3://") else {
        return Some(format!(
            "{uri:?} is not an S3 URI; write s3://bucket/prefix"
        ));
    };
    let bucket = rest.split('/').next().unwrap_or("");
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| format!("{bucket:?} is not an S3 bucket name (3-63 lower-case letters, digits, '-' and '.'); write s3://bucket/prefix"))
}

/// What is wrong with an S3 endpoint URL, if anything; credentials in it are refused (and
/// never repeated in the message).
pub fn endpoint_problem(endpoint: &str) -> Option<String> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) || endpoint.len() < 10
    {
        return Some(format!(
            "{:?} is not a URL; write e.g. http://minio.storage:9000",
            redact_userinfo(endpoint)
        ));
    }
    let has_userinfo = endpoint.split_once("://").is_some_and(|(_, rest)| {
        rest.split('/')
            .next()
            .is_some_and(|host| host.contains('@'))
    });
    has_userinfo.then(|| {
        format!(
            "{:?} carries credentials; give them in a Secret (spec.checkpointCredentials), never in the manifest",
            redact_userinfo(endpoint)
        )
    })
}

/// `endpoint` with any `user:password@` replaced, for messages.
fn redact_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rsplit_once('@') {
        Some((_, host)) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{host}{}", &rest[host_end..])
        }
        None => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_endpoints_are_checked_once_for_every_use() {
        assert_eq!(
            parse_s3_uri("s3://b/jobs/wc/"),
            Some(("b".into(), "jobs/wc".into()))
        );
        assert_eq!(parse_s3_uri("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_s3_uri("s3:///x"), None);
        assert_eq!(parse_s3_uri("file:///x"), None);
        assert!(s3_uri_problem("s3://my-bucket/x").is_none());
        assert!(s3_uri_problem("s3://B/x").is_some());
        assert!(s3_uri_problem("/tmp/x").is_some());
        assert!(s3_uri_problem("s3://").is_some_and(|m| m.contains("\"\" is not an S3 bucket")));
        assert!(endpoint_problem("http://minio:9000").is_none());
        let secret = endpoint_problem("http://user:pw@minio:9000").expect("refused");
        assert!(!secret.contains("pw"), "{secret}");
        assert!(endpoint_problem("minio:9000").is_some());
    }
}
