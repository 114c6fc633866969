//! Jobs as graphs: named streams from two sources, joined per batch and over windows, each
//! stream written by its own sink, and every join checked against a brute-force join of the
//! streams' own outputs from the same run.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;
use support::json_batches as batches;

mod support;

const BATCHES: usize = 12;
const WINDOW: usize = 3;

fn manifest(dir: &Path) -> String {
    let out = |name: &str| dir.join(name).display().to_string();
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingJob
metadata: {{name: graph}}
spec:
  batchInterval: 100ms
  parallelism: 3
  sources:
    - {{name: buys, generator: {{rate: 300, seed: 5, format: json, vocabulary: 12}}}}
    - {{name: visits, generator: {{rate: 200, seed: 9, format: json, vocabulary: 12}}}}
  streams:
    - name: spent
      from: [buys]
      pipeline:
        - parseJson: {{}}
        - filter: {{expr: \"record.action == 'buy'\"}}
        - keyBy: {{key: {{field: user}}, value: {{field: amount}}}}
    - name: seen
      from: [visits]
      pipeline:
        - parseJson: {{}}
        - keyBy: {{key: {{field: user}}, value: {{field: action}}}}
    - {{name: inner, from: [spent], pipeline: [{{join: {{with: seen}}}}]}}
    - {{name: left, from: [spent], pipeline: [{{leftOuterJoin: {{with: seen}}}}]}}
    - {{name: right, from: [spent], pipeline: [{{rightOuterJoin: {{with: seen}}}}]}}
    - {{name: full, from: [spent], pipeline: [{{fullOuterJoin: {{with: seen}}}}]}}
    - {{name: grouped, from: [spent], pipeline: [{{cogroup: {{with: seen}}}}]}}
    - name: spent-w
      from: [spent]
      pipeline: [{{window: {{length: {WINDOW}00ms}}}}]
    - name: seen-w
      from: [seen]
      pipeline: [{{window: {{length: {WINDOW}00ms}}}}]
    - {{name: windowed, from: [spent-w], pipeline: [{{join: {{with: seen-w}}}}]}}
    - name: per-window
      from: [spent]
      pipeline:
        - reduceByWindow: {{op: sum, length: {WINDOW}00ms}}
    - {{name: spread, from: [spent], pipeline: [{{repartition: {{}}}}]}}
    - name: counted
      from: [spent, spent]
      pipeline:
        - countByWindow: {{length: {WINDOW}00ms}}
  sinks:
    - {{from: spent, files: {{path: \"{spent}\", format: json}}}}
    - {{from: seen, files: {{path: \"{seen}\", format: json}}}}
    - {{from: inner, files: {{path: \"{inner}\", format: json}}}}
    - {{from: left, files: {{path: \"{left}\", format: json}}}}
    - {{from: right, files: {{path: \"{right}\", format: json}}}}
    - {{from: full, files: {{path: \"{full}\", format: json}}}}
    - {{from: grouped, files: {{path: \"{grouped}\", format: json}}}}
    - {{from: windowed, files: {{path: \"{windowed}\", format: json}}}}
    - {{from: per-window, files: {{path: \"{per_window}\", format: json}}}}
    - {{from: counted, files: {{path: \"{counted}\", format: json}}}}
    - {{from: spread, files: {{path: \"{spread}\", format: json}}}}
",
        spent = out("spent"),
        seen = out("seen"),
        inner = out("inner"),
        left = out("left"),
        right = out("right"),
        full = out("full"),
        grouped = out("grouped"),
        windowed = out("windowed"),
        per_window = out("per-window"),
        counted = out("counted"),
        spread = out("spread"),
    )
}

/// Pairs as (key, value) texts.
fn pairs(records: &[Json]) -> Vec<(String, Json)> {
    records
        .iter()
        .map(|r| (r["key"].to_string(), r["value"].clone()))
        .collect()
}

/// A batch's records as sorted texts, lists inside sorted (a cogroup lists values in
/// arrival order, which partitions interleave).
fn canonical(records: Vec<Json>) -> Vec<String> {
    fn sort_lists(v: Json) -> Json {
        match v {
            Json::Array(items) => {
                let mut items: Vec<Json> = items.into_iter().map(sort_lists).collect();
                items.sort_by_key(|i| i.to_string());
                Json::Array(items)
            }
            Json::Object(m) => {
                Json::Object(m.into_iter().map(|(k, v)| (k, sort_lists(v))).collect())
            }
            other => other,
        }
    }
    let mut out: Vec<String> = records
        .into_iter()
        .map(|r| sort_lists(r).to_string())
        .collect();
    out.sort();
    out
}

/// Every join of two batches of pairs, by brute force: (inner, left, right, full, cogroup).
fn brute_force(l: &[(String, Json)], r: &[(String, Json)]) -> [Vec<Json>; 5] {
    let mut keys: BTreeMap<&str, (Vec<&Json>, Vec<&Json>)> = BTreeMap::new();
    for (k, v) in l {
        keys.entry(k).or_default().0.push(v);
    }
    for (k, w) in r {
        keys.entry(k).or_default().1.push(w);
    }
    let mut out: [Vec<Json>; 5] = Default::default();
    for (k, (vs, ws)) in keys {
        let key: Json = serde_json::from_str(k).expect("key");
        let rec = |v: Json| serde_json::json!({"key": key, "value": v});
        for v in &vs {
            for w in &ws {
                for joined in &mut out[..4] {
                    joined.push(rec(serde_json::json!([v, w])));
                }
            }
            if ws.is_empty() {
                out[1].push(rec(serde_json::json!([v, null])));
                out[3].push(rec(serde_json::json!([v, null])));
            }
        }
        if vs.is_empty() {
            for w in &ws {
                out[2].push(rec(serde_json::json!([null, w])));
                out[3].push(rec(serde_json::json!([null, w])));
            }
        }
        out[4].push(rec(serde_json::json!([vs, ws])));
    }
    out
}

#[test]
fn streams_joined_per_batch_and_over_windows_equal_brute_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, manifest(dir.path())).expect("manifest");
    support::run_job(&path, BATCHES);
    let read = |name: &str| batches(&dir.path().join(name));
    let (spent, seen) = (read("spent"), read("seen"));
    assert_eq!(spent.len(), BATCHES, "one file per batch");
    assert!(
        spent.iter().all(|b| !b.is_empty()) && seen.iter().all(|b| !b.is_empty()),
        "every batch has both sides"
    );
    // Repartitioned, the same pairs.
    let spread = read("spread");
    assert_eq!(spread.len(), BATCHES, "spread: one file per batch");
    for (i, (got, want)) in spread.into_iter().zip(&spent).enumerate() {
        assert_eq!(
            canonical(got),
            canonical(want.clone()),
            "spread: batch {}",
            i + 1
        );
    }
    let spent_pairs: Vec<Vec<(String, Json)>> = spent.iter().map(|b| pairs(b)).collect();
    let seen_pairs: Vec<Vec<(String, Json)>> = seen.iter().map(|b| pairs(b)).collect();
    let mut matched = 0;
    for (kind, name) in ["inner", "left", "right", "full", "grouped"]
        .iter()
        .enumerate()
    {
        let got = read(name);
        assert_eq!(got.len(), BATCHES, "{name}: one file per batch");
        for (i, batch) in got.into_iter().enumerate() {
            let want = brute_force(&spent_pairs[i], &seen_pairs[i]);
            if kind == 0 {
                matched += want[0].len();
            }
            assert_eq!(
                canonical(batch),
                canonical(want[kind].clone()),
                "{name}: batch {}",
                i + 1
            );
        }
    }
    assert!(
        matched > 0,
        "no batch had a match: the test would prove little"
    );

    // Over windows: each window's union of batches, joined.
    let window = |all: &[Vec<(String, Json)>], end: usize| -> Vec<(String, Json)> {
        all[end.saturating_sub(WINDOW)..end].concat()
    };
    let windowed = read("windowed");
    assert_eq!(windowed.len(), BATCHES, "the windows slide every batch");
    for (i, batch) in windowed.into_iter().enumerate() {
        let want = brute_force(&window(&spent_pairs, i + 1), &window(&seen_pairs, i + 1));
        assert_eq!(
            canonical(batch),
            canonical(want[0].clone()),
            "window ending at batch {}",
            i + 1
        );
    }

    // Whole-window aggregates: the sum of the amounts, and the count of pairs (a stream read
    // twice in a union counts twice).
    let sums = read("per-window");
    let counts = read("counted");
    for end in 1..=BATCHES {
        let pairs = window(&spent_pairs, end);
        let sum: f64 = pairs.iter().map(|(_, v)| v.as_f64().expect("amount")).sum();
        let got = sums[end - 1][0].as_f64().expect("a number");
        assert!(
            (got - sum).abs() < 1e-6 * sum.abs().max(1.0),
            "sum of window {end}: {got} against {sum}"
        );
        assert_eq!(
            counts[end - 1],
            vec![Json::from(2 * pairs.len())],
            "count of window {end}"
        );
    }
}
