//! Reading a manifest from YAML with errors that name the field path.

use crate::spec::StreamingJob;
use crate::validate::Problem;

/// Parses a StreamingJob from YAML text.
///
/// Syntax errors carry line and column; type errors and unknown fields carry the field path
/// (`spec.pipeline[2].window.slide`), so a user can find the mistake without reading our code.
pub fn parse_yaml(text: &str) -> Result<StreamingJob, Problem> {
    check_shape(text)?;
    // The fields that say how the operator deploys a job mean nothing to the job itself: the
    // same manifest runs locally and on a cluster, so they are set aside before parsing.
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| Problem::new("manifest", e.to_string()))?;
    if let Some(spec) = value
        .get_mut("spec")
        .and_then(yaml_serde::Value::as_mapping_mut)
    {
        for field in crate::spec::DEPLOYMENT_FIELDS {
            spec.remove(*field);
        }
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        // An error between fields has no field of its own: name the enclosing one.
        let path = path.strip_suffix(".?").unwrap_or(&path).to_string();
        let inner = err.into_inner();
        let mut message = inner.to_string();
        // The YAML parser names the enclosing mapping itself; our path is more precise.
        if let Some((prefix, rest)) = message.split_once(": ")
            && !prefix.contains(' ')
            && path.starts_with(prefix)
        {
            message = rest.to_string();
        }
        if path == "." || path.is_empty() {
            Problem::new("manifest", message)
        } else {
            Problem::new(path, message)
        }
    })
}

/// The `spec` of a manifest as JSON, the operator's deployment fields included (for
/// [`crate::upgrade::plan_resources`]). Parse it with [`parse_yaml`] first for its problems.
pub fn spec_json(text: &str) -> Result<serde_json::Value, Problem> {
    check_shape(text)?;
    let value: serde_json::Value =
        yaml_serde::from_str(text).map_err(|e| Problem::new("manifest", e.to_string()))?;
    match value.get("spec") {
        Some(spec) if spec.is_object() => Ok(spec.clone()),
        _ => Err(Problem::new("spec", "is missing or not a mapping")),
    }
}

/// The largest manifest read (the API server stores objects of up to about 1.5 MB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The deepest nesting of `[` and `{` read: a manifest needs a handful, and the YAML parser's
/// time grows with the square of the depth.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Refuses text too large or too deeply nested to be a manifest, before the YAML parser spends
/// its time on it.
fn check_shape(text: &str) -> Result<(), Problem> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Problem::new(
            "manifest",
            format!(
                "is {} bytes; a manifest may have at most {MAX_MANIFEST_BYTES}",
                text.len()
            ),
        ));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    for c in text.chars() {
        match (quote, c) {
            (_, '\n') => {
                comment = false;
                if quote == Some('#') {
                    quote = None;
                }
            }
            _ if comment => {}
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    if deepest > MAX_FLOW_DEPTH {
        return Err(Problem::new(
            "manifest",
            format!(
                "nests [ and {{ {deepest} levels deep; a manifest may nest at most {MAX_FLOW_DEPTH}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_or_deep_text_is_refused_before_parsing() {
        let deep = format!("spec: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let problem = parse_yaml(&deep).unwrap_err();
        assert!(problem.message.contains("100000 levels deep"), "{problem}");
        let big = "#".repeat(MAX_MANIFEST_BYTES + 1);
        assert!(parse_yaml(&big).unwrap_err().message.contains("at most"));
        // Brackets in quotes and comments are text, not nesting.
        let quoted = format!(
            "a: \"{}\" # {}\nb: '{}'\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(check_shape(&quoted).is_ok());
    }

    #[test]
    fn unknown_field_names_its_path() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: a}\nspec:\n  batchInterval: 1s\n  sources: [{name: s, generator: {rate: 1, speed: 2}}]\n  sinks: [{stdout: {}}]\n";
        let problem = parse_yaml(text).unwrap_err();
        assert_eq!(problem.path, "spec.sources[0].generator.speed");
        assert!(
            problem.message.contains("unknown field `speed`"),
            "{problem}"
        );
    }

    #[test]
    fn wrong_type_names_its_path() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: a}\nspec:\n  batchInterval: 1s\n  parallelism: many\n  sources: []\n  sinks: []\n";
        let problem = parse_yaml(text).unwrap_err();
        assert_eq!(problem.path, "spec.parallelism");
    }

    #[test]
    fn syntax_error_is_reported_not_panicked() {
        let problem = parse_yaml("spec: [unclosed").unwrap_err();
        assert!(problem.message.contains("line 1"), "{problem}");
    }
}
