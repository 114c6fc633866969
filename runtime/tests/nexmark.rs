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
/// Enough batches for auctions to close: 20 s of stream time, as auctions last 5 to 15 s.
const LONG_BATCHES: u64 = 200;

/// Runs example `query` scaled down (rate, interval and windows by 10) into a directory of
/// its own, with each `(from, to)` of `more` replaced in its text too; returns its output,
/// batch by batch (each batch sorted, as partitions interleave).
fn run(query: &str, dir: &Path, more: &[(&str, String)], batches: u64) -> Vec<Vec<String>> {
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
    support::run_job(&manifest, batches as usize);
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
    events_of(BATCHES)
}

/// The events of each of the first `batches` batches.
fn events_of(batches: u64) -> Vec<Vec<Json>> {
    let generator = TextGenerator::new(GeneratorConfig {
        name: "events".into(),
        rate: RATE,
        seed: SEED,
        format: GeneratorFormat::Nexmark,
        vocabulary: 10_000,
        line_bytes: 100,
    });
    (1..=batches)
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
fn model(mut per_batch: impl FnMut(&[Json]) -> Vec<Json>) -> Vec<Vec<String>> {
    events()
        .iter()
        .map(|b| sorted(as_read(per_batch(b))))
        .filter(|b| !b.is_empty())
        .collect()
}

/// A query over 10-batch tumbling windows (the examples' 10 s, scaled down), emitted at every
/// 10th batch: `per_window` gets each window's events, batch by batch.
fn tumbling(per_window: impl Fn(&[Vec<Json>]) -> Vec<Json>) -> Vec<Vec<String>> {
    events()
        .chunks(10)
        .filter(|w| w.len() == 10)
        .map(|window| sorted(as_read(per_window(window))))
        .collect()
}

/// A filtering query's model keeps some of the bids, not all: else the comparison could not
/// tell the filter from none, or from dropping everything.
fn assert_keeps_some_bids(expected: &[Vec<String>]) {
    let kept: usize = expected.iter().map(Vec::len).sum();
    let all: usize = events().iter().map(|b| bids(b).count()).sum();
    assert!(
        kept > 0 && kept < all,
        "the model keeps {kept} of {all} bids: some, not all"
    );
}

fn check(query: &str, expected: Vec<Vec<String>>) {
    let dir = tempfile::tempdir().expect("temp dir");
    check_in(query, dir.path(), &[], expected);
}

/// [`check`], in `dir`, with `more` replaced in the example's text.
fn check_in(query: &str, dir: &Path, more: &[(&str, String)], expected: Vec<Vec<String>>) {
    check_batches(query, dir, more, BATCHES, expected);
}

/// [`check_in`], over `batches` batches.
fn check_batches(
    query: &str,
    dir: &Path,
    more: &[(&str, String)],
    batches: u64,
    expected: Vec<Vec<String>>,
) {
    let got = run(query, dir, more, batches);
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
fn q3_joins_sellers_in_three_states_with_their_auctions_in_category_10() {
    // Each person seen in the three states, and the auctions waiting for their seller.
    let mut people: BTreeMap<u64, Json> = BTreeMap::new();
    let mut waiting: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut late = 0;
    let expected = model(|batch| {
        let mut rows = Vec::new();
        let mut row = |person: &Json, id: u64| {
            rows.push(json!({"key": person["id"], "value": {
                "name": person["name"], "city": person["city"], "state": person["state"], "id": id,
            }}))
        };
        for e in batch {
            let n = |f: &str| e[f].as_u64().expect(f);
            match e["type"].as_str() {
                Some("person")
                    if ["OR", "ID", "CA"].contains(&e["state"].as_str().unwrap_or("")) =>
                {
                    for id in waiting.remove(&n("id")).unwrap_or_default() {
                        late += 1;
                        row(e, id);
                    }
                    people.insert(n("id"), e.clone());
                }
                Some("auction") if n("category") == 10 => match people.get(&n("seller")) {
                    Some(person) => row(person, n("id")),
                    None => waiting.entry(n("seller")).or_default().push(n("id")),
                },
                _ => {}
            }
        }
        rows
    });
    let joined: usize = expected.iter().map(Vec::len).sum();
    assert!(
        joined > 0,
        "no auction in category 10 has a seller in the three states"
    );
    assert!(
        late > 0,
        "no auction came before its seller: the waiting path is untested"
    );
    check("q3", expected);
}

#[test]
fn q8_joins_new_people_with_new_sellers_per_tumbling_window() {
    let expected = tumbling(|window| {
        let of = |kind: &'static str| window.iter().flatten().filter(move |e| e["type"] == kind);
        let sellers: std::collections::BTreeSet<u64> = of("auction")
            .map(|a| a["seller"].as_u64().expect("seller"))
            .collect();
        of("person")
            .filter(|p| sellers.contains(&p["id"].as_u64().expect("id")))
            .map(|p| json!({"key": p["id"], "value": p["name"]}))
            .collect()
    });
    let people: usize = events()
        .iter()
        .flatten()
        .filter(|e| e["type"] == "person")
        .count();
    let joined: usize = expected.iter().map(Vec::len).sum();
    assert!(
        joined > 0 && joined < people,
        "{joined} of {people} people sell in their window: some, not all"
    );
    check("q8", expected);
}

#[test]
fn q12_counts_bids_per_bidder_in_each_tumbling_window() {
    let expected = tumbling(|window| {
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for e in window.iter().flat_map(|b| bids(b)) {
            *counts
                .entry(e["bidder"].as_u64().expect("bidder"))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(bidder, n)| json!({"key": bidder, "value": n}))
            .collect()
    });
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
    let expected = tumbling(|window| {
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
        vec![json!({
            "auction": best["auction"],
            "price": best["price"],
            "bidder": best["bidder"],
            "dateTime": best["dateTime"],
        })]
    });
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
    assert_keeps_some_bids(&expected);
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
fn q14_classifies_the_bids_in_a_price_range() {
    let expected = model(|b| {
        bids(b)
            .filter_map(|e| {
                let price = 0.908 * e["price"].as_u64().expect("price") as f64;
                let date_time = e["dateTime"].as_u64().expect("dateTime");
                let hour = date_time / 3_600_000 % 24;
                let kind = match hour {
                    8..=18 => "dayTime",
                    0..=6 | 20.. => "nightTime",
                    _ => "otherTime",
                };
                let url = e["url"].as_str().expect("url");
                (price > 1_000_000.0 && price < 50_000_000.0).then(|| {
                    json!({
                        "auction": e["auction"],
                        "bidder": e["bidder"],
                        "price": price,
                        "bidTimeType": kind,
                        "dateTime": date_time,
                        "cCounts": url.matches('c').count(),
                    })
                })
            })
            .collect()
    });
    assert_keeps_some_bids(&expected);
    check("q14", expected);
}

/// An auction that closed with a bid, as q4 and q6 see it.
struct Closed {
    id: u64,
    seller: u64,
    category: u64,
    expires: u64,
    final_price: u64,
}

/// The auctions closing in each of the first `batches` batches (their expiry within the
/// batch's stream time), each with its final price: the highest bid from its start until it
/// closes. Auctions without such a bid are left out. Also returns how many final prices the
/// bids that came before their auction in the stream (earlier than its start) would change,
/// were they counted.
fn closed_per_batch(batches: u64) -> (Vec<Vec<Closed>>, usize) {
    let events = events_of(batches);
    let mut bids: BTreeMap<u64, Vec<(usize, u64, u64)>> = BTreeMap::new();
    let mut auctions = Vec::new();
    for (i, e) in events.iter().flatten().enumerate() {
        let n = |f: &str| e[f].as_u64().expect(f);
        match e["type"].as_str() {
            Some("bid") => {
                bids.entry(n("auction"))
                    .or_default()
                    .push((i, n("dateTime"), n("price")))
            }
            Some("auction") => auctions.push((i, e)),
            _ => {}
        }
    }
    let mut closed: Vec<Vec<Closed>> = (0..batches).map(|_| Vec::new()).collect();
    let mut waited = 0;
    for (at, a) in auctions {
        let n = |f: &str| a[f].as_u64().expect(f);
        let (id, start, expires) = (n("id"), n("dateTime"), n("expires"));
        let batch = expires.div_ceil(INTERVAL_MS);
        let best = bids
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|(_, time, _)| (start..expires).contains(time))
            .map(|(_, _, price)| *price)
            .max();
        let Some(final_price) = best.filter(|_| batch <= batches) else {
            continue;
        };
        // Were every bid before the auction in the stream counted, whatever its time.
        let sooner = bids
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|(j, time, _)| *j < at || (start..expires).contains(time))
            .map(|(_, _, price)| *price)
            .max();
        waited += usize::from(sooner != Some(final_price));
        closed[batch as usize - 1].push(Closed {
            id,
            seller: n("seller"),
            category: n("category"),
            expires,
            final_price,
        });
    }
    (closed, waited)
}

/// Per-batch outputs with the empty batches left out.
fn nonempty(per_batch: Vec<Vec<Json>>) -> Vec<Vec<String>> {
    per_batch
        .into_iter()
        .map(|rows| sorted(as_read(rows)))
        .filter(|b| !b.is_empty())
        .collect()
}

#[test]
fn q4_averages_the_final_prices_of_closed_auctions_per_category() {
    let (closed, waited) = closed_per_batch(LONG_BATCHES);
    let count: usize = closed.iter().map(Vec::len).sum();
    assert!(count > 100, "only {count} auctions close with a bid");
    assert!(
        waited > 0,
        "no bid before its auction would change a final price: the waiting path is untested"
    );
    let mut totals: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let expected = nonempty(
        closed
            .iter()
            .map(|batch| {
                for c in batch {
                    let t = totals.entry(c.category).or_default();
                    *t = (t.0 + 1, t.1 + c.final_price);
                }
                totals
                    .iter()
                    .map(|(category, (n, sum))| {
                        json!({"key": category, "value": *sum as f64 / *n as f64})
                    })
                    .collect()
            })
            .collect(),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    check_batches("q4", dir.path(), &[], LONG_BATCHES, expected);
}

#[test]
fn q6_averages_each_sellers_last_ten_final_prices() {
    let (closed, _) = closed_per_batch(LONG_BATCHES);
    let mut per_seller: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let expected = nonempty(
        closed
            .iter()
            .map(|batch| {
                let mut sellers = std::collections::BTreeSet::new();
                for c in batch {
                    sellers.insert(c.seller);
                    per_seller
                        .entry(c.seller)
                        .or_default()
                        .push((c.expires, c.id, c.final_price));
                }
                sellers
                    .into_iter()
                    .map(|seller| {
                        let all = per_seller.get_mut(&seller).expect("the seller's");
                        all.sort_unstable();
                        let last = &all[all.len().saturating_sub(10)..];
                        let sum: u64 = last.iter().map(|(_, _, price)| price).sum();
                        json!({"key": seller, "value": sum as f64 / last.len() as f64})
                    })
                    .collect()
            })
            .collect(),
    );
    assert!(
        per_seller.values().any(|all| all.len() > 10),
        "no seller has more than ten closed auctions: the last ten are all of them"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    check_batches("q6", dir.path(), &[], LONG_BATCHES, expected);
}

/// A continuous query over the bids in their order: `emit` gets each bid and the state of its
/// key, and returns the key and value to output, if any.
fn continuous<S: Default>(
    mut emit: impl FnMut(&Json, &mut BTreeMap<String, S>) -> Option<Json>,
) -> Vec<Vec<String>> {
    let mut states = BTreeMap::new();
    model(move |b| bids(b).filter_map(|e| emit(e, &mut states)).collect())
}

#[test]
fn q17_keeps_running_statistics_per_auction_and_day() {
    #[derive(Default)]
    struct Stats {
        total: u64,
        ranks: [u64; 3],
        min: u64,
        max: u64,
        sum: u64,
    }
    let expected = continuous(|e, states: &mut BTreeMap<String, Stats>| {
        let n = |f: &str| e[f].as_u64().expect(f);
        let (auction, day, price) = (n("auction"), n("dateTime") / 86_400_000, n("price"));
        let s = states.entry(format!("{auction}/{day}")).or_default();
        if s.total == 0 {
            (s.min, s.max) = (price, price);
        }
        s.total += 1;
        s.ranks[match price {
            ..10_000 => 0,
            10_000..1_000_000 => 1,
            _ => 2,
        }] += 1;
        (s.min, s.max, s.sum) = (s.min.min(price), s.max.max(price), s.sum + price);
        Some(json!({"key": [auction, day], "value": {
            "auction": auction,
            "day": day,
            "totalBids": s.total,
            "rank1Bids": s.ranks[0],
            "rank2Bids": s.ranks[1],
            "rank3Bids": s.ranks[2],
            "minPrice": s.min,
            "maxPrice": s.max,
            "avgPrice": s.sum as f64 / s.total as f64,
            "sumPrice": s.sum,
        }}))
    });
    check("q17", expected);
}

#[test]
fn q18_emits_each_bidders_last_bid_on_each_auction() {
    let expected = continuous(|e, last: &mut BTreeMap<String, u64>| {
        let n = |f: &str| e[f].as_u64().expect(f);
        let at = n("dateTime");
        let kept = last
            .entry(format!("{}/{}", n("bidder"), n("auction")))
            .or_insert(at);
        (at >= *kept).then(|| {
            *kept = at;
            json!({"key": [e["bidder"], e["auction"]], "value": e})
        })
    });
    check("q18", expected);
}

#[test]
fn q19_emits_the_bids_that_enter_the_ten_highest_of_their_auction() {
    let (mut all, mut entered) = (0, 0);
    let expected = continuous(|e, tops: &mut BTreeMap<String, Vec<u64>>| {
        let price = e["price"].as_u64().expect("price");
        let top = tops.entry(e["auction"].to_string()).or_default();
        all += 1;
        if top.len() >= 10 && price <= top[9] {
            return None;
        }
        entered += 1;
        top.push(price);
        top.sort_unstable_by(|a, b| b.cmp(a));
        top.truncate(10);
        Some(json!({"key": e["auction"], "value": e}))
    });
    assert!(
        entered > 0 && entered < all,
        "{entered} of {all} bids enter a top ten: some, not all"
    );
    check("q19", expected);
}

#[test]
fn q21_reads_each_channels_id() {
    let expected = model(|b| {
        bids(b)
            .filter_map(|e| {
                let channel = e["channel"].as_str().expect("channel");
                let url = e["url"].as_str().expect("url");
                let named = ["apple", "google", "facebook", "baidu"]
                    .iter()
                    .position(|c| *c == channel.to_ascii_lowercase())
                    .map(|i| i.to_string());
                let from_url = regex::Regex::new("(&|^)channel_id=([^&]*)")
                    .expect("a regex")
                    .captures(url)
                    .map(|c| c[2].to_string());
                named.or(from_url).map(|id| {
                    json!({
                        "auction": e["auction"],
                        "bidder": e["bidder"],
                        "price": e["price"],
                        "channel": channel,
                        "channelId": id,
                    })
                })
            })
            .collect()
    });
    let from_url: usize = expected
        .iter()
        .flatten()
        .filter(|r| r.contains("channel-"))
        .count();
    assert!(from_url > 0, "no bid's channel id comes from its url");
    check("q21", expected);
}

#[test]
fn q22_splits_each_url_into_directories() {
    check(
        "q22",
        model(|b| {
            bids(b)
                .map(|e| {
                    let parts: Vec<&str> = e["url"].as_str().expect("url").split('/').collect();
                    let part = |i: usize| parts.get(i).map(|p| p.to_string());
                    json!({
                        "auction": e["auction"],
                        "bidder": e["bidder"],
                        "price": e["price"],
                        "channel": e["channel"],
                        "dir1": part(3),
                        "dir2": part(4),
                        "dir3": part(5),
                    })
                })
                .collect()
        }),
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
