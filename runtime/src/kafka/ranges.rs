//! Offset ranges: what a batch reads from each topic-partition, as written to the offset log,
//! and how a batch's ranges are cut over the job's partitions.
//!
//! Pure logic: no client, so it is tested on its own and the master and the workers agree on
//! the cut by construction (both run this code on the logged ranges).

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// The offsets `[from, until)` of one topic-partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    pub tp: TopicPartition,
    pub from: i64,
    pub until: i64,
}

impl OffsetRange {
    /// How many offsets it spans (records, control records and gaps alike).
    pub fn len(&self) -> u64 {
        u64::try_from(self.until - self.from).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ranges as the offset log holds them: `{"ranges": [[topic, partition, from, until]]}`.
pub fn to_json(ranges: &[OffsetRange]) -> Json {
    let rows: Vec<Json> = ranges
        .iter()
        .map(|r| json!([r.tp.topic, r.tp.partition, r.from, r.until]))
        .collect();
    json!({ "ranges": rows })
}

/// Reads what [`to_json`] wrote; the message says what is wrong (the range came from the
/// offset log or over the network).
pub fn from_json(range: &Json) -> Result<Vec<OffsetRange>, String> {
    let Some(rows) = range.get("ranges").and_then(Json::as_array) else {
        return Err("the range has no \"ranges\" list".into());
    };
    rows.iter()
        .map(|row| {
            let cells = row.as_array().filter(|c| c.len() == 4);
            let parsed = cells.and_then(|c| {
                Some(OffsetRange {
                    tp: TopicPartition {
                        topic: c[0].as_str()?.to_string(),
                        partition: i32::try_from(c[1].as_i64()?).ok()?,
                    },
                    from: c[2].as_i64()?,
                    until: c[3].as_i64()?,
                })
            });
            match parsed {
                Some(r) if r.from >= 0 && r.until >= r.from && r.tp.partition >= 0 => Ok(r),
                _ => Err(format!(
                    "{} is not [topic, partition, from, until]",
                    crate::error::shorten(&row.to_string(), 120)
                )),
            }
        })
        .collect()
}

/// Cuts a batch's ranges over `partitions` job partitions: the ranges, in topic-partition
/// order, are laid end to end and cut into `partitions` runs of (nearly) equal length, so a
/// busy topic-partition is read by several job partitions and many small ones share one.
/// Element `p` holds what job partition `p` reads.
pub fn cut(ranges: &[OffsetRange], partitions: usize) -> Vec<Vec<OffsetRange>> {
    let partitions = partitions.max(1);
    let mut sorted: Vec<&OffsetRange> = ranges.iter().filter(|r| !r.is_empty()).collect();
    sorted.sort_by(|a, b| a.tp.cmp(&b.tp).then(a.from.cmp(&b.from)));
    let total: u64 = sorted.iter().map(|r| r.len()).sum();
    let mut out = vec![Vec::new(); partitions];
    // Job partition p takes the offsets [p*total/P, (p+1)*total/P) of the laid-out ranges.
    let bound = |p: usize| -> u64 {
        u64::try_from(u128::from(total) * p as u128 / partitions as u128).unwrap_or(total)
    };
    let mut start = 0u64;
    let mut part = 0usize;
    for r in sorted {
        let end = start + r.len();
        let mut at = start;
        while at < end {
            while part + 1 < partitions && bound(part + 1) <= at {
                part += 1;
            }
            let stop = if part + 1 < partitions {
                bound(part + 1).min(end)
            } else {
                end
            };
            let from = r.from + i64::try_from(at - start).unwrap_or(0);
            let until = r.from + i64::try_from(stop - start).unwrap_or(0);
            out[part].push(OffsetRange {
                tp: r.tp.clone(),
                from,
                until,
            });
            at = stop;
        }
        start = end;
    }
    out
}

/// Positions (the next offset to read) by topic-partition, as the checkpoint holds them:
/// `{"topic": {"0": 42}}`.
pub fn positions_to_json(next: &BTreeMap<TopicPartition, i64>) -> Json {
    let mut topics = serde_json::Map::new();
    for (tp, offset) in next {
        let entry = topics
            .entry(tp.topic.clone())
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
        if let Json::Object(parts) = entry {
            parts.insert(tp.partition.to_string(), json!(offset));
        }
    }
    Json::Object(topics)
}

/// Reads what [`positions_to_json`] wrote.
pub fn positions_from_json(value: &Json) -> Option<BTreeMap<TopicPartition, i64>> {
    let mut next = BTreeMap::new();
    for (topic, parts) in value.as_object()? {
        for (partition, offset) in parts.as_object()? {
            let tp = TopicPartition::new(topic, partition.parse().ok()?);
            next.insert(tp, offset.as_i64()?);
        }
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(topic: &str, p: i32, from: i64, until: i64) -> OffsetRange {
        OffsetRange {
            tp: TopicPartition::new(topic, p),
            from,
            until,
        }
    }

    #[test]
    fn ranges_round_trip_and_bad_rows_are_named() {
        let ranges = vec![r("a", 0, 5, 9), r("b", 2, 0, 0)];
        assert_eq!(from_json(&to_json(&ranges)), Ok(ranges));
        let err = from_json(&json!({"ranges": [["a", 0, 9, 5]]})).expect_err("backwards");
        assert!(err.contains("[\"a\",0,9,5]"), "{err}");
        assert!(from_json(&json!({"files": []})).is_err());
    }

    #[test]
    fn one_busy_partition_is_cut_over_every_job_partition() {
        let parts = cut(&[r("t", 0, 100, 110)], 4);
        assert_eq!(
            parts,
            vec![
                vec![r("t", 0, 100, 102)],
                vec![r("t", 0, 102, 105)],
                vec![r("t", 0, 105, 107)],
                vec![r("t", 0, 107, 110)],
            ]
        );
    }

    #[test]
    fn many_partitions_share_job_partitions_and_every_offset_is_read_once() {
        let ranges: Vec<OffsetRange> = (0..7).map(|p| r("t", p, 0, 3 + i64::from(p))).collect();
        for partitions in 1..10 {
            let parts = cut(&ranges, partitions);
            assert_eq!(parts.len(), partitions);
            let mut seen: Vec<(i32, i64)> = parts
                .iter()
                .flatten()
                .flat_map(|x| (x.from..x.until).map(move |o| (x.tp.partition, o)))
                .collect();
            seen.sort_unstable();
            let want: Vec<(i32, i64)> = ranges
                .iter()
                .flat_map(|x| (x.from..x.until).map(move |o| (x.tp.partition, o)))
                .collect();
            assert_eq!(seen, want, "{partitions} partitions");
            let sizes: Vec<u64> = parts
                .iter()
                .map(|p| p.iter().map(OffsetRange::len).sum())
                .collect();
            let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                "{sizes:?} for {partitions} partitions"
            );
        }
        assert_eq!(cut(&[], 3), vec![Vec::new(), Vec::new(), Vec::new()]);
    }

    #[test]
    fn positions_round_trip() {
        let next: BTreeMap<TopicPartition, i64> = [
            (TopicPartition::new("a", 0), 3),
            (TopicPartition::new("a", 11), 7),
            (TopicPartition::new("b.c", 0), 0),
        ]
        .into();
        let json = positions_to_json(&next);
        assert_eq!(positions_from_json(&json), Some(next));
        assert_eq!(positions_from_json(&json!({"a": {"x": 1}})), None);
    }
}
