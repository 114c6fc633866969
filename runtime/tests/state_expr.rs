//! `updateStateByKey` with a CEL expression, against the built-in aggregation over the same
//! stream of the same run: running sums and counts as a map, keys dropped by `null`, a
//! failed evaluation counted and the key's state kept.

use std::path::Path;

use serde_json::Value as Json;

mod support;

const BATCHES: usize = 10;

fn run(dir: &Path, streams: &str, sinks: &str) -> String {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingJob
metadata: {{name: state-expr}}
spec:
  batchInterval: 100ms
  parallelism: 3
  sources: [{{name: events, generator: {{rate: 400, seed: 4, format: json, vocabulary: 20}}}}]
  streams:
    - name: amounts
      from: [events]
      pipeline:
        - parseJson: {{}}
        - keyBy: {{key: {{field: user}}, value: {{field: amount}}}}
{streams}  sinks:
{sinks}"
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("manifest");
    support::run_job(&path, BATCHES)
}

/// Each batch file of a files sink, in time order: key -> value.
fn batches(dir: &Path) -> Vec<std::collections::BTreeMap<String, Json>> {
    support::json_batches(dir)
        .into_iter()
        .map(|lines| {
            lines
                .into_iter()
                .map(|pair| (pair["key"].to_string(), pair["value"].clone()))
                .collect()
        })
        .collect()
}

#[test]
fn an_expression_keeps_any_state_as_the_built_ins_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |name: &str| dir.path().join(name).display().to_string();
    run(
        dir.path(),
        "    - name: builtin
      from: [amounts]
      pipeline: [{updateStateByKey: {op: sum}}]
    - name: counted
      from: [amounts]
      pipeline: [{updateStateByKey: {op: count}}]
    - name: expr
      from: [amounts]
      pipeline:
        - updateStateByKey:
            expr: \"{'sum': (state == null ? 0 : state.sum) + sum(values), 'n': (state == null ? 0 : state.n) + values.size()}\"
",
        &format!(
            "    - {{from: builtin, files: {{path: \"{}\", format: json}}}}\n    - {{from: counted, files: {{path: \"{}\", format: json}}}}\n    - {{from: expr, files: {{path: \"{}\", format: json}}}}\n",
            out("builtin"),
            out("counted"),
            out("expr")
        ),
    );
    let (sums, counts, exprs) = (
        batches(&dir.path().join("builtin")),
        batches(&dir.path().join("counted")),
        batches(&dir.path().join("expr")),
    );
    assert_eq!(exprs.len(), BATCHES);
    for (i, ((sum, count), expr)) in sums.iter().zip(&counts).zip(&exprs).enumerate() {
        assert_eq!(expr.len(), sum.len(), "batch {}: the same keys", i + 1);
        assert!(!expr.is_empty());
        for (key, state) in expr {
            assert_eq!(
                state["sum"].as_f64(),
                sum[key].as_f64(),
                "batch {}, key {key}",
                i + 1
            );
            assert_eq!(state["n"], count[key], "batch {}, key {key}", i + 1);
        }
    }
}

#[test]
fn null_drops_a_key_and_a_failed_evaluation_is_counted_keeping_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |name: &str| dir.path().join(name).display().to_string();
    let stderr = run(
        dir.path(),
        // Batches with values, counted to 3, then the key is dropped (and starts again).
        // user1's state reads a field of nothing: every evaluation for it fails.
        "    - name: cycles
      from: [amounts]
      pipeline:
        - updateStateByKey:
            expr: \"key == 'user1' ? state.missing : (state != null && state >= 3 ? null : (state == null ? 0 : state) + (size(values) > 0 ? 1 : 0))\"
",
        &format!(
            "    - {{from: cycles, files: {{path: \"{}\", format: json}}}}\n",
            out("cycles")
        ),
    );
    let cycles = batches(&dir.path().join("cycles"));
    assert_eq!(cycles.len(), BATCHES);
    let mut dropped = 0;
    for (i, batch) in cycles.iter().enumerate() {
        assert!(
            !batch.contains_key("\"user1\""),
            "batch {}: a key whose evaluation failed has state",
            i + 1
        );
        for (key, n) in batch {
            let n = n.as_i64().expect("a count");
            assert!((1..=3).contains(&n), "batch {}: {key} = {n}", i + 1);
            if n == 3
                && cycles
                    .get(i + 1)
                    .is_some_and(|next| !next.contains_key(key))
            {
                dropped += 1;
            }
        }
    }
    assert!(dropped > 0, "no key was dropped by null");
    assert!(
        stderr.contains("updateStateByKey") && stderr.contains("missing"),
        "the failed evaluation is not reported: {stderr}"
    );
}

#[test]
fn map_with_state_runs_record_by_record_and_emits_what_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |name: &str| dir.path().join(name).display().to_string();
    run(
        dir.path(),
        // Each record counts itself into its key's state and emits the count so far; a
        // record of user2 emits nothing.
        "    - name: counted
      from: [amounts]
      pipeline: [{updateStateByKey: {op: count}}]
    - name: numbered
      from: [amounts]
      pipeline:
        - mapWithState:
            expr: \"key == 'user2' ? {'state': state} : {'state': (state == null ? 0 : state) + 1, 'emit': (state == null ? 0 : state) + 1}\"
            timeout: 1h
",
        &format!(
            "    - {{from: counted, files: {{path: \"{}\", format: json}}}}\n    - {{from: numbered, files: {{path: \"{}\", format: json}}}}\n",
            out("counted"),
            out("numbered")
        ),
    );
    let totals = batches(&dir.path().join("counted"));
    let mut emitted: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for batch in support::json_batches(&dir.path().join("numbered")) {
        for pair in batch {
            emitted
                .entry(pair["key"].to_string())
                .or_default()
                .push(pair["value"].as_i64().expect("a count"));
        }
    }
    let last = totals.last().expect("a batch");
    assert!(!emitted.contains_key("\"user2\""), "user2 emitted");
    assert!(emitted.len() > 5, "{emitted:?}");
    for (key, mut numbers) in emitted {
        numbers.sort();
        let n = last[&key].as_i64().expect("a total");
        assert_eq!(
            numbers,
            (1..=n).collect::<Vec<_>>(),
            "{key}: one number per record"
        );
    }
}

#[test]
fn timers_fire_once_after_their_batch_and_bad_timers_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |name: &str| dir.path().join(name).display().to_string();
    let stderr = run(
        dir.path(),
        // Each record counts itself and sets its key's timer to the batch's own time: the timer
        // is due at the end of the batch, and emits the key's count once, after all its records.
        // One user's records set a timer without onTimer, another's a timer that is no time
        // (one each, so that both are among the errors a batch reports).
        "    - name: counted
      from: [amounts]
      pipeline: [{updateStateByKey: {op: count}}]
    - name: per-batch
      from: [amounts]
      pipeline:
        - mapWithState:
            expr: \"{'state': (state == null ? 0 : state) + 1, 'timer': batch.time}\"
            onTimer: \"{'state': state, 'emit': {'n': state, 'timer': timer, 'time': batch.time, 'streamTime': batch.streamTime}}\"
    - name: no-on-timer
      from: [amounts]
      pipeline: [{mapWithState: {expr: \"key == 'user3' ? {'state': 1, 'timer': batch.time} : {}\"}}]
    - name: bad-timer
      from: [amounts]
      pipeline: [{mapWithState: {expr: \"key == 'user4' ? {'state': 1, 'timer': 'soon'} : {}\", onTimer: \"{}\"}}]
",
        &["counted", "per-batch", "no-on-timer", "bad-timer"]
            .map(|name| {
                format!(
                    "    - {{from: {name}, files: {{path: \"{}\", format: json}}}}\n",
                    out(name)
                )
            })
            .concat(),
    );
    let totals = batches(&dir.path().join("counted"));
    let emitted = support::json_batches(&dir.path().join("per-batch"));
    assert_eq!(emitted.len(), BATCHES);
    let zero = emitted[0][0]["value"]["time"].as_i64().expect("a time")
        - emitted[0][0]["value"]["streamTime"]
            .as_i64()
            .expect("a stream time");
    for (i, (batch, totals)) in emitted.iter().zip(&totals).enumerate() {
        let stream_time = (i as i64 + 1) * 100;
        let keys: std::collections::BTreeSet<String> =
            batch.iter().map(|p| p["key"].to_string()).collect();
        assert!(!batch.is_empty(), "batch {}: no timer fired", i + 1);
        assert_eq!(
            keys.len(),
            batch.len(),
            "batch {}: a key fired twice",
            i + 1
        );
        for pair in batch {
            let v = &pair["value"];
            assert_eq!(v["n"], totals[&pair["key"].to_string()], "batch {}", i + 1);
            assert_eq!(v["streamTime"], stream_time, "batch {}", i + 1);
            assert_eq!(v["time"], zero + stream_time, "batch {}", i + 1);
            assert_eq!(
                v["timer"],
                v["time"],
                "batch {}: the timer's own time",
                i + 1
            );
        }
    }
    for (stream, why) in [
        ("no-on-timer", "has no onTimer"),
        ("bad-timer", "milliseconds since the Unix epoch"),
    ] {
        let out = support::json_batches(&dir.path().join(stream));
        assert!(out.iter().all(Vec::is_empty), "{stream} emitted {out:?}");
        assert!(
            stderr.contains(why),
            "{stream}: {why:?} is not reported: {stderr}"
        );
    }
}
