//! Semantics of the DStream operations against hand-computed expectations, driven in-process
//! batch by batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::dstream::{State, StateSpec};
use sluice::source::QueueSource;
use sluice::{StreamingConfig, StreamingContext};

fn ctx(parallelism: usize) -> StreamingContext {
    StreamingContext::new(
        StreamingConfig::new(Duration::from_secs(1))
            .parallelism(parallelism)
            .threads(2),
    )
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn window_length_equal_to_slide_tumbles() {
    let c = ctx(2);
    let q = QueueSource::new("q");
    for b in 1..=6 {
        q.push(vec![b]);
    }
    let out = c.source(q).window(secs(3), secs(3)).collect_batches();
    c.build().expect("build").run_batches(6).expect("run");
    let got: Vec<(u64, Vec<i32>)> = out
        .take()
        .into_iter()
        .map(|(b, r)| (b.index, sorted(r)))
        .collect();
    assert_eq!(got, vec![(3, vec![1, 2, 3]), (6, vec![4, 5, 6])]);
}

#[test]
fn window_longer_than_history_holds_what_exists() {
    let c = ctx(1);
    let q = QueueSource::new("q");
    q.push(vec!["a".to_string()]);
    let out = c.source(q).window(secs(5), secs(1)).collect_batches();
    c.build().expect("build").run_batches(7).expect("run");
    let sizes: Vec<usize> = out.take().into_iter().map(|(_, r)| r.len()).collect();
    // The record of batch 1 stays in the windows ending at batches 1 to 5, then leaves.
    assert_eq!(sizes, vec![1, 1, 1, 1, 1, 0, 0]);
}

#[test]
fn window_of_a_window_slides_on_multiples() {
    let c = ctx(2);
    let q = QueueSource::new("q");
    for b in 1..=8 {
        q.push(vec![b]);
    }
    let w = c
        .source(q)
        .window(secs(2), secs(2))
        .window(secs(4), secs(4));
    let out = w.collect_batches();
    c.build().expect("build").run_batches(8).expect("run");
    let got: Vec<(u64, Vec<i32>)> = out
        .take()
        .into_iter()
        .map(|(b, r)| (b.index, sorted(r)))
        .collect();
    assert_eq!(got, vec![(4, vec![1, 2, 3, 4]), (8, vec![5, 6, 7, 8])]);
}

#[test]
fn windows_that_do_not_fit_the_interval_are_refused() {
    let c = ctx(1);
    let q = QueueSource::<i32>::new("q");
    let s = c.source(q);
    s.window(Duration::from_millis(2500), secs(1))
        .collect_batches();
    let err = c.build().err().expect("must fail").to_string();
    assert!(
        err.contains("length 2500ms is not a multiple of the batch interval 1000ms"),
        "{err}"
    );

    let c = ctx(1);
    let s = c
        .source(QueueSource::<i32>::new("q"))
        .window(secs(4), secs(2));
    s.window(secs(6), secs(3)).collect_batches();
    let err = c.build().err().expect("must fail").to_string();
    assert!(
        err.contains("slide 3000ms is not a multiple of the parent stream's slide 2000ms"),
        "{err}"
    );
}

#[test]
fn state_sees_all_values_of_a_batch_and_keeps_idle_keys() {
    let c = ctx(3);
    let q = QueueSource::new("q");
    q.push(vec![
        ("a".to_string(), 1),
        ("b".to_string(), 10),
        ("a".to_string(), 2),
    ]);
    q.push(vec![]);
    q.push(vec![("a".to_string(), 4)]);
    let calls =
        c.source(q)
            .update_state_by_key(|values: Vec<i64>, state: Option<Vec<Vec<i64>>>| {
                let mut history = state.unwrap_or_default();
                history.push(values);
                Some(history)
            });
    let out = calls.collect_batches();
    c.build().expect("build").run_batches(3).expect("run");
    let last: BTreeMap<String, Vec<Vec<i64>>> =
        out.take().pop().expect("batches").1.into_iter().collect();
    assert_eq!(last["a"], vec![vec![1, 2], vec![], vec![4]]);
    assert_eq!(last["b"], vec![vec![10], vec![], vec![]]);
}

#[test]
fn state_removed_by_returning_none() {
    let c = ctx(2);
    let q = QueueSource::new("q");
    q.push(vec![("x".to_string(), 5)]);
    q.push(vec![("x".to_string(), -5)]);
    q.push(vec![]);
    let totals = c
        .source(q)
        .update_state_by_key(|v: Vec<i64>, s: Option<i64>| {
            let t = s.unwrap_or(0) + v.iter().sum::<i64>();
            (t != 0).then_some(t)
        });
    let out = totals.collect_batches();
    c.build().expect("build").run_batches(3).expect("run");
    let got: Vec<Vec<(String, i64)>> = out.take().into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, vec![vec![("x".into(), 5)], vec![], vec![]]);
}

#[test]
fn map_with_state_times_out_idle_keys_once() {
    let c = ctx(2);
    let q = QueueSource::new("q");
    q.push(vec![("u".to_string(), 1), ("v".to_string(), 1)]);
    q.push(vec![("v".to_string(), 1)]);
    q.push(vec![("v".to_string(), 1)]);
    q.push(vec![]);
    let spec = StateSpec::function(|_, k: &String, v: Option<i64>, s: &mut State<i64>| {
        if s.is_timing_out() {
            return Some(format!(
                "{k} timed out at {}",
                s.get().copied().unwrap_or(0)
            ));
        }
        let n = s.get().copied().unwrap_or(0) + v.unwrap_or(0);
        s.update(n);
        None
    })
    .timeout(secs(2));
    let mapped = c.source(q).map_with_state(spec);
    let emitted = mapped.emitted.collect_batches();
    let snapshots = mapped.snapshots.collect_batches();
    c.build().expect("build").run_batches(4).expect("run");
    let got: Vec<Vec<String>> = emitted.take().into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        got,
        vec![vec![], vec![], vec!["u timed out at 1".to_string()], vec![]]
    );
    let last = snapshots.take().pop().expect("batches").1;
    assert_eq!(last, vec![("v".to_string(), 3)]);
}

#[test]
fn joins_pair_every_match_and_keep_unmatched_on_the_left() {
    let c = ctx(3);
    let (l, r) = (QueueSource::new("l"), QueueSource::new("r"));
    l.push(vec![
        (1, "a".to_string()),
        (1, "b".to_string()),
        (2, "c".to_string()),
    ]);
    r.push(vec![(1, 10), (1, 11), (3, 30)]);
    let (left, right) = (c.source(l), c.source(r));
    let inner = left.join(&right).collect_batches();
    let outer = left.left_outer_join(&right).collect_batches();
    c.build().expect("build").run_batches(1).expect("run");
    assert_eq!(
        sorted(inner.take().remove(0).1),
        vec![
            (1, ("a".to_string(), 10)),
            (1, ("a".to_string(), 11)),
            (1, ("b".to_string(), 10)),
            (1, ("b".to_string(), 11))
        ]
    );
    let outer = sorted(outer.take().remove(0).1);
    assert_eq!(outer.len(), 5);
    assert!(outer.contains(&(2, ("c".to_string(), None))));
}

#[test]
fn a_stream_read_twice_is_computed_once_per_batch() {
    let c = ctx(2);
    let q = QueueSource::new("q");
    q.push(vec![1, 2, 3]);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let doubled = c.source(q).map(move |x: i64| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        x * 2
    });
    let a = doubled.collect_batches();
    let b = doubled.filter(|x| *x > 2).collect_batches();
    c.build().expect("build").run_batches(1).expect("run");
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(sorted(a.take().remove(0).1), vec![2, 4, 6]);
    assert_eq!(sorted(b.take().remove(0).1), vec![4, 6]);
}

/// Per-key sums of the batches in each window, computed by brute force.
fn expected_windows(
    batches: &[Vec<(u8, i64)>],
    len: usize,
    slide: usize,
) -> Vec<(u64, BTreeMap<u8, i64>)> {
    let mut out = Vec::new();
    for end in 1..=batches.len() {
        if end % slide != 0 {
            continue;
        }
        let mut sums = BTreeMap::new();
        for batch in &batches[end.saturating_sub(len)..end] {
            for (k, v) in batch {
                *sums.entry(*k).or_insert(0) += v;
            }
        }
        out.push((end as u64, sums));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// reduce_by_key_and_window with an inverse equals recomputing each window, and both equal
    /// a brute-force computation (ignoring keys whose sum is zero, which the inverse form drops).
    #[test]
    fn inverse_window_equals_full_recomputation(
        batches in prop::collection::vec(prop::collection::vec((0u8..6, -3i64..8), 0..12), 1..14),
        len in 1usize..5,
        slide_pick in 0usize..4,
        parallelism in 1usize..4,
    ) {
        let slide = [1, 1, 2, len][slide_pick].min(len).max(1);
        let len = len.div_ceil(slide) * slide;
        let c = ctx(parallelism);
        let q = QueueSource::new("q");
        for b in &batches {
            q.push(b.clone());
        }
        let s = c.source(q);
        let full = s.reduce_by_key_and_window(|a, b| a + b, secs(len as u64), secs(slide as u64)).collect_batches();
        // Sums can pass through zero and come back, so no key may be dropped here.
        let inv = s.reduce_by_key_and_window_inv(|a, b| a + b, |a, b| a - b, secs(len as u64), secs(slide as u64), None).collect_batches();
        // Counts at zero have nothing left to subtract: dropping them is safe.
        let counted = s.map(|(k, _)| k).count_by_value_and_window(secs(len as u64), secs(slide as u64)).collect_batches();
        c.build().expect("build").run_batches(batches.len() as u64).expect("run");
        let nonzero = |m: BTreeMap<u8, i64>| m.into_iter().filter(|(_, v)| *v != 0).collect::<BTreeMap<_, _>>();
        let expected: Vec<(u64, BTreeMap<u8, i64>)> = expected_windows(&batches, len, slide).into_iter().map(|(i, m)| (i, nonzero(m))).collect();
        let full: Vec<(u64, BTreeMap<u8, i64>)> = full.take().into_iter().map(|(b, r)| (b.index, nonzero(r.into_iter().collect()))).collect();
        let inv: Vec<(u64, BTreeMap<u8, i64>)> = inv.take().into_iter().map(|(b, r)| (b.index, nonzero(r.into_iter().collect()))).collect();
        prop_assert_eq!(&full, &expected);
        prop_assert_eq!(&inv, &expected);
        let ones: Vec<Vec<(u8, i64)>> = batches.iter().map(|b| b.iter().map(|(k, _)| (*k, 1)).collect()).collect();
        let expected_counts: Vec<(u64, BTreeMap<u8, u64>)> = expected_windows(&ones, len, slide)
            .into_iter()
            .map(|(i, m)| (i, m.into_iter().map(|(k, v)| (k, v as u64)).collect()))
            .collect();
        let counted: Vec<(u64, BTreeMap<u8, u64>)> = counted.take().into_iter().map(|(b, r)| (b.index, r.into_iter().collect())).collect();
        prop_assert_eq!(&counted, &expected_counts);
    }
}

type Pairs = Vec<(u8, i64)>;
type Full = (u8, (Option<i64>, Option<i64>));
type Grouped = (u8, (Vec<i64>, Vec<i64>));
/// The per-batch outputs of the five joins.
type JoinOutputs = (
    sluice::dstream::Collected<(u8, (i64, i64))>,
    sluice::dstream::Collected<(u8, (i64, Option<i64>))>,
    sluice::dstream::Collected<(u8, (Option<i64>, i64))>,
    sluice::dstream::Collected<Full>,
    sluice::dstream::Collected<Grouped>,
);

/// The batches of `batches` in each window ending at a multiple of `slide`, by brute force.
fn windows_of(batches: &[Pairs], len: usize, slide: usize) -> Vec<(u64, Pairs)> {
    (1..=batches.len())
        .filter(|end| end % slide == 0)
        .map(|end| {
            let records = batches[end.saturating_sub(len)..end].concat();
            (end as u64, records)
        })
        .collect()
}

/// Every join of one batch (or window), by brute force: for each key, its values on each side.
#[derive(Debug, Default, PartialEq)]
struct Joined {
    inner: Vec<(u8, (i64, i64))>,
    left: Vec<(u8, (i64, Option<i64>))>,
    right: Vec<(u8, (Option<i64>, i64))>,
    full: Vec<Full>,
    cogroup: Vec<Grouped>,
}

fn brute_force_joins(l: &[(u8, i64)], r: &[(u8, i64)]) -> Joined {
    let mut keys: Vec<u8> = l.iter().chain(r).map(|(k, _)| *k).collect();
    keys.sort();
    keys.dedup();
    let mut j = Joined::default();
    for k in keys {
        let vs: Vec<i64> = l.iter().filter(|(x, _)| *x == k).map(|(_, v)| *v).collect();
        let ws: Vec<i64> = r.iter().filter(|(x, _)| *x == k).map(|(_, w)| *w).collect();
        for v in &vs {
            for w in &ws {
                j.inner.push((k, (*v, *w)));
                j.left.push((k, (*v, Some(*w))));
                j.right.push((k, (Some(*v), *w)));
                j.full.push((k, (Some(*v), Some(*w))));
            }
            if ws.is_empty() {
                j.left.push((k, (*v, None)));
                j.full.push((k, (Some(*v), None)));
            }
        }
        if vs.is_empty() {
            for w in &ws {
                j.right.push((k, (None, *w)));
                j.full.push((k, (None, Some(*w))));
            }
        }
        j.cogroup.push((k, (sorted(vs), sorted(ws))));
    }
    j.inner.sort();
    j.left.sort();
    j.right.sort();
    j.full.sort();
    j
}

#[test]
fn every_join_keeps_what_its_kind_says() {
    let c = ctx(3);
    let (l, r) = (QueueSource::new("l"), QueueSource::new("r"));
    l.push(vec![(1, 1), (1, 2), (2, 3)]);
    r.push(vec![(1, 10), (3, 30)]);
    let (left, right) = (c.source(l), c.source(r));
    let right_outer = left.right_outer_join(&right).collect_batches();
    let full = left.full_outer_join(&right).collect_batches();
    let grouped = left.cogroup(&right).collect_batches();
    c.build().expect("build").run_batches(1).expect("run");
    assert_eq!(
        sorted(right_outer.take().remove(0).1),
        vec![(1, (Some(1), 10)), (1, (Some(2), 10)), (3, (None, 30))]
    );
    assert_eq!(
        sorted(full.take().remove(0).1),
        vec![
            (1, (Some(1), Some(10))),
            (1, (Some(2), Some(10))),
            (2, (Some(3), None)),
            (3, (None, Some(30)))
        ]
    );
    assert_eq!(
        sorted(grouped.take().remove(0).1),
        vec![
            (1, (vec![1, 2], vec![10])),
            (2, (vec![3], vec![])),
            (3, (vec![], vec![30]))
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every join, per batch and over a window of both streams, equals a brute-force join of
    /// the same records.
    #[test]
    fn joins_per_batch_and_over_windows_equal_brute_force(
        lefts in prop::collection::vec(prop::collection::vec((0u8..5, -3i64..8), 0..8), 1..8),
        rights in prop::collection::vec(prop::collection::vec((0u8..5, -3i64..8), 0..8), 1..8),
        len in 1usize..4,
        slide_pick in 0usize..3,
        parallelism in 1usize..4,
    ) {
        let batches = lefts.len().max(rights.len());
        let pad = |mut v: Vec<Pairs>| { v.resize(batches, Vec::new()); v };
        let (lefts, rights) = (pad(lefts), pad(rights));
        let slide = [1, 1, len][slide_pick].min(len).max(1);
        let len = len.div_ceil(slide) * slide;
        let c = ctx(parallelism);
        let (lq, rq) = (QueueSource::new("l"), QueueSource::new("r"));
        for (l, r) in lefts.iter().zip(&rights) {
            lq.push(l.clone());
            rq.push(r.clone());
        }
        let (left, right) = (c.source(lq), c.source(rq));
        let (wl, wr) = (
            left.window(secs(len as u64), secs(slide as u64)),
            right.window(secs(len as u64), secs(slide as u64)),
        );
        let per_batch = (
            left.join(&right).collect_batches(),
            left.left_outer_join(&right).collect_batches(),
            left.right_outer_join(&right).collect_batches(),
            left.full_outer_join(&right).collect_batches(),
            left.cogroup(&right).collect_batches(),
        );
        let windowed = (
            wl.join(&wr).collect_batches(),
            wl.left_outer_join(&wr).collect_batches(),
            wl.right_outer_join(&wr).collect_batches(),
            wl.full_outer_join(&wr).collect_batches(),
            wl.cogroup(&wr).collect_batches(),
        );
        c.build().expect("build").run_batches(batches as u64).expect("run");
        let gather = |outs: JoinOutputs| -> Vec<(u64, Joined)> {
            let (inner, left, right, full, cogroup): JoinOutputs = outs;
            let (inner, left, right, full, cogroup) =
                (inner.take(), left.take(), right.take(), full.take(), cogroup.take());
            (0..inner.len())
                .map(|i| {
                    let mut g: Vec<Grouped> = cogroup[i]
                        .1
                        .iter()
                        .map(|(k, (v, w))| (*k, (sorted(v.clone()), sorted(w.clone()))))
                        .collect();
                    g.sort();
                    (inner[i].0.index, Joined {
                        inner: sorted(inner[i].1.clone()),
                        left: sorted(left[i].1.clone()),
                        right: sorted(right[i].1.clone()),
                        full: sorted(full[i].1.clone()),
                        cogroup: g,
                    })
                })
                .collect()
        };
        let expected: Vec<(u64, Joined)> = (0..batches)
            .map(|i| ((i + 1) as u64, brute_force_joins(&lefts[i], &rights[i])))
            .collect();
        prop_assert_eq!(gather(per_batch), expected);
        let expected_windows: Vec<(u64, Joined)> = windows_of(&lefts, len, slide)
            .into_iter()
            .zip(windows_of(&rights, len, slide))
            .map(|((end, l), (_, r))| (end, brute_force_joins(&l, &r)))
            .collect();
        prop_assert_eq!(gather(windowed), expected_windows);
    }

    /// reduce, reduce_by_window and count_by_window equal brute force; flat_map_values and
    /// group_by_key_and_window too.
    #[test]
    fn whole_stream_reductions_equal_brute_force(
        batches in prop::collection::vec(prop::collection::vec((0u8..5, -3i64..8), 0..10), 1..12),
        len in 1usize..5,
        slide_pick in 0usize..3,
        parallelism in 1usize..4,
    ) {
        let slide = [1, 1, len][slide_pick].min(len).max(1);
        let len = len.div_ceil(slide) * slide;
        let (length, every) = (secs(len as u64), secs(slide as u64));
        let c = ctx(parallelism);
        let q = QueueSource::new("q");
        for b in &batches {
            q.push(b.clone());
        }
        let s = c.source(q);
        let values = s.map(|(_, v)| v);
        let reduced = values.reduce(|a, b| a + b).collect_batches();
        let by_window = values.reduce_by_window(|a, b| a.max(b), length, every).collect_batches();
        let counted = s.count_by_window(length, every).collect_batches();
        let spread = s.flat_map_values(|v| vec![v; (v.rem_euclid(3)) as usize]).collect_batches();
        let grouped = s.group_by_key_and_window(length, every).collect_batches();
        c.build().expect("build").run_batches(batches.len() as u64).expect("run");

        let got: Vec<Vec<i64>> = reduced.take().into_iter().map(|(_, r)| r).collect();
        let want: Vec<Vec<i64>> = batches
            .iter()
            .map(|b| if b.is_empty() { vec![] } else { vec![b.iter().map(|(_, v)| v).sum()] })
            .collect();
        prop_assert_eq!(got, want);

        let windows = windows_of(&batches, len, slide);
        let got: Vec<(u64, Vec<i64>)> = by_window.take().into_iter().map(|(b, r)| (b.index, r)).collect();
        let want: Vec<(u64, Vec<i64>)> = windows
            .iter()
            .map(|(end, recs)| (*end, recs.iter().map(|(_, v)| *v).max().into_iter().collect()))
            .collect();
        prop_assert_eq!(got, want);

        let got: Vec<(u64, Vec<u64>)> = counted.take().into_iter().map(|(b, r)| (b.index, r)).collect();
        let want: Vec<(u64, Vec<u64>)> = windows.iter().map(|(end, recs)| (*end, vec![recs.len() as u64])).collect();
        prop_assert_eq!(got, want);

        let got: Vec<Vec<(u8, i64)>> = spread.take().into_iter().map(|(_, r)| sorted(r)).collect();
        let want: Vec<Vec<(u8, i64)>> = batches
            .iter()
            .map(|b| sorted(b.iter().flat_map(|(k, v)| vec![(*k, *v); v.rem_euclid(3) as usize]).collect()))
            .collect();
        prop_assert_eq!(got, want);

        let got: Vec<(u64, BTreeMap<u8, Vec<i64>>)> = grouped
            .take()
            .into_iter()
            .map(|(b, r)| (b.index, r.into_iter().map(|(k, vs)| (k, sorted(vs))).collect()))
            .collect();
        let want: Vec<(u64, BTreeMap<u8, Vec<i64>>)> = windows
            .iter()
            .map(|(end, recs)| {
                let mut m: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
                for (k, v) in recs {
                    m.entry(*k).or_default().push(*v);
                }
                (*end, m.into_iter().map(|(k, vs)| (k, sorted(vs))).collect())
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    /// repartition keeps every record and evens the partitions out: a batch gathered into
    /// one partition is dealt out perfectly, any other within one record per partition.
    #[test]
    fn repartition_keeps_records_and_evens_partitions(
        batches in prop::collection::vec(prop::collection::vec((0u8..5, -3i64..8), 0..40), 1..6),
        parallelism in 1usize..5,
    ) {
        let c = ctx(parallelism);
        let q = QueueSource::new("q");
        for b in &batches {
            q.push(b.clone());
        }
        let s = c.source(q);
        let parts = |stream: &sluice::DStream<(u8, i64)>| {
            stream
                .repartition()
                .map_partitions("parts", |_, records: Vec<(u8, i64)>| Ok(vec![records]))
                .collect_batches()
        };
        let spread = parts(&s);
        // Everything in one partition first: the skew a single hot input partition makes.
        let gathered = s.map(|r| ((), r)).group_by_key().flat_map(|((), rs)| rs);
        let dealt = parts(&gathered);
        c.build().expect("build").run_batches(batches.len() as u64).expect("run");

        for (out, most_over) in [(spread, parallelism), (dealt, 1)] {
            for ((_, partitions), batch) in out.take().into_iter().zip(&batches) {
                prop_assert_eq!(partitions.len(), parallelism);
                let sizes: Vec<usize> = partitions.iter().map(Vec::len).collect();
                let (max, min) = (sizes.iter().max().copied(), sizes.iter().min().copied());
                prop_assert!(
                    max.unwrap_or(0) - min.unwrap_or(0) <= most_over,
                    "partition sizes {:?}",
                    sizes
                );
                prop_assert_eq!(sorted(partitions.concat()), sorted(batch.clone()));
            }
        }
    }
}
