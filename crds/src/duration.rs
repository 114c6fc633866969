//! Durations as users write them in manifests (`100ms`, `2s`, `1m30s`).
//!
//! Manifests keep durations as strings so that `kubectl explain` and YAML stay readable; this
//! module is the one place that turns them into numbers.

use std::time::Duration;

/// Parses a manifest duration such as `100ms`, `2s` or `1m 30s`.
///
/// Returns a message fit to follow a field path when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty; write a duration such as 500ms, 2s or 1m".to_string());
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 500ms, 2s or 1m"))
}

/// Formats a duration the way users write it (`2s`, `1m 30s`, `100ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn rejects_garbage_with_advice() {
        let err = parse_duration("fast").unwrap_err();
        assert!(err.contains("\"fast\" is not a duration"), "{err}");
        assert!(parse_duration("").unwrap_err().contains("is empty"));
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
    }
}
