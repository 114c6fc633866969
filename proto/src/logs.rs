//! How every Sluice binary logs: text for people (coloured on a terminal unless `NO_COLOR` is
//! set) or one JSON object per line for log collectors. Shared because the operator reads a
//! job's last log lines (its termination message) in either format.

use std::str::FromStr;

/// The log format, `--log-format` / `SLUICE_LOG_FORMAT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message` and the event's other
    /// fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format: use text or json")),
        }
    }
}

/// Whether text logs on a stream that `is_terminal` get colours: never when `NO_COLOR` is set
/// to anything but the empty string (no-color.org).
pub fn colours(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Logs to standard error in `format`, with `filter` (`info`, `sluice=debug`, ...); a filter
/// that does not parse is reported and `info` used instead.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("log filter {filter:?} does not parse ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(colours(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var("NO_COLOR").ok().as_deref(),
            ))
            .compact()
            .try_init(),
    };
}

/// The message of a log line in either format: a JSON line's `fields.message`, else the line.
pub fn message_of(line: &str) -> std::borrow::Cow<'_, str> {
    let json = line.trim_start().starts_with('{');
    match json.then(|| serde_json::from_str::<serde_json::Value>(line).ok()) {
        Some(Some(v)) => match v["fields"]["message"].as_str() {
            Some(m) => m.to_string().into(),
            None => line.into(),
        },
        _ => line.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_no_color_turns_colours_off() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().is_err());
        assert!(colours(true, None));
        assert!(colours(true, Some("")));
        assert!(!colours(true, Some("1")));
        assert!(!colours(false, None));
    }

    #[test]
    fn a_json_lines_message_is_found() {
        let line = r#"{"timestamp":"2026-12-01T12:00:00Z","level":"ERROR","fields":{"message":"the job failed: bad"}}"#;
        assert_eq!(message_of(line), "the job failed: bad");
        assert_eq!(message_of("plain words"), "plain words");
        assert_eq!(message_of("{not json"), "{not json");
    }
}
