//! The job fingerprint: what a checkpoint must match to be resumed.

use sha2::{Digest, Sha256};

use crate::duration::parse_duration;
use crate::spec::{PipelineStep, SourceSpec, StreamingJobSpec, defaults};

/// A short hex digest of everything that shapes a job's state: batch interval, parallelism,
/// sources and pipeline, with defaults applied (writing `parallelism: 4` or `1000ms` for `1s`
/// changes nothing). Sinks, checkpoint settings and metadata may change across a restart.
pub fn fingerprint(spec: &StreamingJobSpec) -> String {
    let shaping = serde_json::json!({
        "batchInterval": ms(&spec.batch_interval),
        "parallelism": spec.parallelism.unwrap_or(defaults::PARALLELISM),
        "sources": spec.sources.iter().map(source_with_defaults).collect::<Vec<_>>(),
        "pipeline": spec.pipeline.iter().map(|s| step_with_defaults(s, &spec.batch_interval)).collect::<Vec<_>>(),
    });
    digest(&shaping.to_string())
}

/// The fingerprint of checkpoints written before defaults were applied to it: what such a
/// checkpoint's `job.json` holds, and still matches.
pub fn fingerprint_v1(spec: &StreamingJobSpec) -> String {
    let shaping = serde_json::json!({
        "batchInterval": spec.batch_interval,
        "parallelism": spec.parallelism,
        "sources": spec.sources,
        "pipeline": spec.pipeline,
    });
    digest(&shaping.to_string())
}

/// A duration in milliseconds, or the text where it is not one (validation says so).
fn ms(text: &str) -> serde_json::Value {
    parse_duration(text).map_or_else(
        |_| text.into(),
        |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).into(),
    )
}

fn source_with_defaults(source: &SourceSpec) -> SourceSpec {
    let mut s = source.clone();
    if let Some(g) = s.generator.as_mut() {
        g.seed.get_or_insert(defaults::GENERATOR_SEED);
        g.format.get_or_insert_default();
        g.vocabulary.get_or_insert(defaults::GENERATOR_VOCABULARY);
        g.line_bytes.get_or_insert(defaults::GENERATOR_LINE_BYTES);
    }
    if let Some(k) = s.kafka.as_mut() {
        k.starting_offsets.get_or_insert_with(|| "latest".into());
        k.metadata.get_or_insert(false);
    }
    if let Some(f) = s.files.as_mut() {
        let remember = f
            .remember_for
            .get_or_insert_with(|| format!("{}s", defaults::FILES_REMEMBER_FOR_SECONDS));
        *remember = ms(remember).to_string();
    }
    s
}

fn step_with_defaults(step: &PipelineStep, interval: &str) -> PipelineStep {
    let mut s = step.clone();
    let window = |length: &mut String, slide: &mut Option<String>| {
        *length = ms(length).to_string();
        let slide = slide.get_or_insert_with(|| interval.to_string());
        *slide = ms(slide).to_string();
    };
    if let Some(w) = s.window.as_mut() {
        window(&mut w.length, &mut w.slide);
    }
    if let Some(w) = s.count_by_value_and_window.as_mut() {
        window(&mut w.length, &mut w.slide);
    }
    if let Some(w) = s.reduce_by_key_and_window.as_mut() {
        window(&mut w.length, &mut w.slide);
        w.inverse.get_or_insert(false);
    }
    if let Some(f) = s.flat_map.as_mut() {
        f.lowercase.get_or_insert(false);
    }
    s
}

/// The first 8 bytes of the SHA-256 of `text`, in hex: the same on every build and platform
/// (unlike `std`'s `DefaultHasher`), so that what is keyed by it stays put across upgrades.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_never_change() {
        // SHA-256 of "" and of "abc": pinned, so that no toolchain or dependency update can
        // move what is keyed by them (pods roll when the manifest hash changes).
        assert_eq!(digest(""), "e3b0c44298fc1c14");
        assert_eq!(digest("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn written_defaults_do_not_change_the_fingerprint() {
        let spec = |yaml: &str| {
            crate::parse_yaml(&format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: t}}\nspec:\n{yaml}  sinks: [{{stdout: {{}}}}]\n"
            ))
            .expect("manifest")
            .spec
        };
        let short = spec(
            "  batchInterval: 1s\n  sources: [{name: g, generator: {rate: 5}}]\n  pipeline: [{window: {length: 2s}}]\n",
        );
        let long = spec(
            "  batchInterval: 1000ms\n  parallelism: 4\n  sources: [{name: g, generator: {rate: 5, seed: 1, vocabulary: 10000}}]\n  pipeline: [{window: {length: 2000ms, slide: 1s}}]\n",
        );
        assert_eq!(fingerprint(&short), fingerprint(&long));
        assert_ne!(fingerprint_v1(&short), fingerprint_v1(&long));
        let other = spec(
            "  batchInterval: 1s\n  parallelism: 8\n  sources: [{name: g, generator: {rate: 5}}]\n  pipeline: [{window: {length: 2s}}]\n",
        );
        assert_ne!(fingerprint(&short), fingerprint(&other));
    }
}
