//! Reading a manifest from YAML with errors that name the field path.

use crate::spec::StreamingJob;
use crate::validate::Problem;

/// Parses a StreamingJob from YAML text.
///
/// Syntax errors carry line and column; type errors and unknown fields carry the field path
/// (`spec.pipeline[2].window.slide`), so a user can find the mistake without reading our code.
pub fn parse_yaml(text: &str) -> Result<StreamingJob, Problem> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
