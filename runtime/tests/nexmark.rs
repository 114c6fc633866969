//! The Nexmark queries of `examples/nexmark`, each run by `sluice run` on a small stream and
//! compared with a brute-force model of the query over the same generated events.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as Json, json};
use sluice::source::{GeneratorConfig, TextGenerator};
use sluice_crds::GeneratorFormat;

mod support;

/// The examples' generator, scaled down: events per second of stream time and the seed.
const RATE: u64 = 10_000;
const SEED: u64 = 42;
/// 100 ms batches (the examples' 1 s, scaled down with their windows).
const INTERVAL_MS: u64 = 100;
const BATCHES: u64 = 30;

/// Runs example `query` scaled down (rate, interval and windows by 10) into a directory of
/// its own, with each `(from, to)` of `more` replaced in its text too; returns its output,
/// batch by batch (each batch sorted, as partitions interleave).
fn run(query: &str, dir: &Path, more: &[(&str, String)]) -> Vec<Vec<String>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(repo.join(format!("examples/nexmark/{query}.yaml")))
        .expect("the example");
    let out = dir.join(query);
    let text = example
        .replace(
            "batchInterval: 1s",
            &format!("batchInterval: {INTERVAL_MS}ms"),
        )
        .replace("rate: 100000", &format!("rate: {RATE}"))
        .replace("length: 10s, slide: 10s", "length: 1s, slide: 1s")
        .replace("length: 10s, slide: 2s", "length: 1s, slide: 200ms")
        .replace(
            &format!("/tmp/sluice/nexmark/{query}"),
            &out.display().to_string(),
        );
    let text = more
        .iter()
        .fold(text, |text, (from, to)| text.replace(from, to));
    assert!(
        text.contains(&format!("seed: {SEED}")) && text.contains(&out.display().to_string()),
        "the example's generator or sink changed: {text}"
    );
    let manifest = dir.join(format!("{query}.yaml"));
    std::fs::write(&manifest, text).expect("write the manifest");
    support::run_job(&manifest, BATCHES as usize);
    support::json_batches(&out)
        .into_iter()
        .map(sorted)
        .filter(|b| !b.is_empty())
        .collect()
}

fn sorted(records: Vec<Json>) -> Vec<String> {
    let mut texts: Vec<String> = records.iter().map(Json::to_string).collect();
    texts.sort();
    texts
}

/// The events of each batch, as the job's generator makes them.
fn events() -> Vec<Vec<Json>> {
    let generator = TextGenerator::new(GeneratorConfig {
        name: "events".into(),
        rate: RATE,
        seed: SEED,
        format: GeneratorFormat::Nexmark,
        vocabulary: 10_000,
        line_bytes: 100,
    });
    (1..=BATCHES)
        .map(|b| {
            let start = generator.lines_before((b - 1) * INTERVAL_MS);
            let end = generator.lines_before(b * INTERVAL_MS);
            generator
                .lines(start, end, 1)
                .concat()
                .iter()
                .map(|l| serde_json::from_str(l).expect("an event is JSON"))
                .collect()
        })
        .collect()
}

fn bids(batch: &[Json]) -> impl Iterator<Item = &Json> {
    batch.iter().filter(|e| e["type"] == "bid")
}

/// The model's records as the job's output reads back: written as text and parsed, as
/// [`support::json_batches`] parses the job's (serde_json's parser may put a float one unit in
/// the last place off the value the text was printed from; both sides then are).
fn as_read(records: Vec<Json>) -> Vec<Json> {
    records
        .iter()
        .map(|r| serde_json::from_str(&r.to_string()).expect("JSON"))
        .collect()
}

/// A per-batch query over the model's events, batches with no output left out.
fn model(per_batch: impl Fn(&[Json]) -> Vec<Json>) -> Vec<Vec<String>> {
    events()
        .iter()
        .map(|b| sorted(as_read(per_batch(b))))
        .filter(|b| !b.is_empty())
        .collect()
}

fn check(query: &str, expected: Vec<Vec<String>>) {
    let dir = tempfile::tempdir().expect("temp dir");
    check_in(query, dir.path(), &[], expected);
}

/// [`check`], in `dir`, with `more` replaced in the example's text.
fn check_in(query: &str, dir: &Path, more: &[(&str, String)], expected: Vec<Vec<String>>) {
    let got = run(query, dir, more);
    let records: usize = expected.iter().map(Vec::len).sum();
    assert!(records > 0, "{query}: the model expects no output at all");
    assert_eq!(
        got.len(),
        expected.len(),
        "{query}: batches with output differ"
    );
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        let first = g.iter().zip(e).find(|(a, b)| a != b);
        assert!(
            g.len() == e.len() && first.is_none(),
            "{query}: output {i} differs ({} records, the model {}); first difference {first:?}",
            g.len(),
            e.len()
        );
    }
}

#[test]
fn q0_passes_every_bid_through() {
    check("q0", model(|b| bids(b).cloned().collect()));
}

#[test]
fn q1_converts_each_price_to_euros() {
    check(
        "q1",
        model(|b| {
            bids(b)
                .map(|e| {
                    let price = e["price"].as_u64().expect("price") as f64;
                    json!({"auction": e["auction"], "bidder": e["bidder"], "price": 0.908 * price, "dateTime": e["dateTime"]})
                })
                .collect()
        }),
    );
}

#[test]
fn q2_selects_the_bids_on_every_123rd_auction() {
    let expected = model(|b| {
        bids(b)
            .filter(|e| e["auction"].as_u64().is_some_and(|a| a % 123 == 0))
            .map(|e| json!({"auction": e["auction"], "price": e["price"]}))
            .collect()
    });
    assert!(expected.len() >= 3, "too few bids selected to check");
    check("q2", expected);
}

#[test]
fn q12_counts_bids_per_bidder_in_each_tumbling_window() {
    // Windows of 10 batches, emitted at every 10th.
    let events = events();
    let expected: Vec<Vec<String>> = events
        .chunks(10)
        .filter(|w| w.len() == 10)
        .map(|window| {
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for e in window.iter().flat_map(|b| bids(b)) {
                *counts
                    .entry(e["bidder"].as_u64().expect("bidder"))
                    .or_default() += 1;
            }
            sorted(
                counts
                    .into_iter()
                    .map(|(bidder, n)| json!({"key": bidder, "value": n}))
                    .collect(),
            )
        })
        .collect();
    check("q12", expected);
}

#[test]
fn q5_finds_the_auction_with_the_most_bids_in_each_sliding_window() {
    // Windows of 10 batches, sliding by 2: emitted at every second batch, over the 10 batches
    // up to it (fewer at the start).
    let events = events();
    let expected: Vec<Vec<String>> = (2..=events.len())
        .step_by(2)
        .map(|end| {
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for e in events[end.saturating_sub(10)..end]
                .iter()
                .flat_map(|b| bids(b))
            {
                *counts
                    .entry(e["auction"].as_u64().expect("auction"))
                    .or_default() += 1;
            }
            // The most bids; of tied auctions, the largest id.
            let hot = counts.into_iter().max_by_key(|&(auction, n)| (n, auction));
            sorted(
                hot.map(|(auction, n)| json!({"key": auction, "value": n}))
                    .into_iter()
                    .collect(),
            )
        })
        .filter(|w| !w.is_empty())
        .collect();
    check("q5", expected);
}

#[test]
fn q7_keeps_the_highest_bid_of_each_tumbling_window() {
    let events = events();
    let expected: Vec<Vec<String>> = events
        .chunks(10)
        .filter(|w| w.len() == 10)
        .map(|window| {
            // The highest price; of tied bids, the largest bid (its fields in name order).
            let key = |e: &&Json| {
                let n = |f: &str| e[f].as_u64().expect(f);
                let channel = e["channel"].as_str().expect("channel").to_string();
                (
                    n("price"),
                    n("auction"),
                    n("bidder"),
                    channel,
                    n("dateTime"),
                )
            };
            let best = window
                .iter()
                .flat_map(|b| bids(b))
                .max_by_key(key)
                .expect("a bid in every window");
            sorted(vec![json!({
                "auction": best["auction"],
                "price": best["price"],
                "bidder": best["bidder"],
                "dateTime": best["dateTime"],
            })])
        })
        .collect();
    check("q7", expected);
}

#[test]
fn q13_joins_each_bid_with_the_side_input() {
    // A side input of the even keys only, so that the bids on odd keys are dropped: the
    // example's own file covers every key.
    let dir = tempfile::tempdir().expect("temp dir");
    let side = dir.path().join("side-input.csv");
    let text: String = (0..10_000)
        .step_by(2)
        .map(|k| format!("{k},v{k}\n"))
        .collect();
    std::fs::write(&side, text).expect("write the side input");
    let expected = model(|b| {
        bids(b)
            .filter_map(|e| {
                let key = e["auction"].as_u64().expect("auction") % 10_000;
                key.is_multiple_of(2).then(|| {
                    json!({"key": key, "value": {
                        "auction": e["auction"],
                        "bidder": e["bidder"],
                        "price": e["price"],
                        "dateTime": e["dateTime"],
                        "value": format!("v{key}"),
                    }})
                })
            })
            .collect()
    });
    let bids_in: usize = events().iter().map(|b| bids(b).count()).sum();
    let joined: usize = expected.iter().map(Vec::len).sum();
    assert!(
        joined > 0 && joined < bids_in,
        "the model keeps {joined} of {bids_in} bids: some, not all"
    );
    check_in(
        "q13",
        dir.path(),
        &[(
            "examples/nexmark/side-input.csv",
            side.display().to_string(),
        )],
        expected,
    );
}

#[test]
fn the_side_input_of_q13_has_a_value_for_every_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("examples/nexmark/side-input.csv"))
        .expect("the side input");
    let keys: Vec<u64> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(',').expect("key,value");
            assert_eq!(v, format!("side-{k}"));
            k.parse().expect("a number")
        })
        .collect();
    assert_eq!(keys, (0..10_000).collect::<Vec<u64>>());
}

#[test]
fn nexmark_events_have_the_standard_shape() {
    let all: Vec<Json> = events().concat();
    let of = |t: &str| all.iter().filter(|e| e["type"] == t).count();
    assert_eq!(all.len() as u64, RATE * BATCHES * INTERVAL_MS / 1000);
    assert_eq!(
        (of("person"), of("auction"), of("bid")),
        (all.len() / 50, all.len() * 3 / 50, all.len() * 46 / 50)
    );
    // Event time is generation time: the stream time of the event's index.
    for (i, e) in all.iter().enumerate().step_by(997) {
        assert_eq!(e["dateTime"], (i as u64 * 1000 / RATE));
    }
}
