//! The graph of `spec.streams`: what each stream reads or joins, and an order in which every
//! stream comes after those. Validation reports from it and the runtime builds streams in
//! its order, so the two never disagree about a graph.

use std::collections::{BTreeMap, BTreeSet};

use crate::kinds::StepKind;
use crate::spec::StreamingJobSpec;

/// The streams of a job in dependency order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOrder {
    /// Indices of `spec.streams`, each after the streams it reads and joins.
    pub order: Vec<usize>,
    /// Streams on a cycle, or behind one, with the streams they wait for that are too.
    pub blocked: Vec<(usize, Vec<usize>)>,
}

/// The index of each stream by name (the first, when a name is repeated).
pub fn stream_index(spec: &StreamingJobSpec) -> BTreeMap<&str, usize> {
    let mut index = BTreeMap::new();
    for (i, stream) in spec.streams.iter().enumerate() {
        index.entry(stream.name.as_str()).or_insert(i);
    }
    index
}

/// Kahn's order over what each stream reads (`from`) and joins (`with`); names of sources,
/// and names of nothing, are not edges.
pub fn stream_order(spec: &StreamingJobSpec) -> StreamOrder {
    let index = stream_index(spec);
    let needs: Vec<BTreeSet<usize>> = spec
        .streams
        .iter()
        .map(|stream| {
            let joins = stream.pipeline.iter().filter_map(|step| match step.kind() {
                Some(StepKind::Join(_, j)) => Some(j.with.as_str()),
                _ => None,
            });
            stream
                .from
                .iter()
                .map(String::as_str)
                .chain(joins)
                .filter_map(|name| index.get(name).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; needs.len()];
    let mut order = Vec::with_capacity(needs.len());
    loop {
        let ready: Vec<usize> = (0..needs.len())
            .filter(|&i| !done[i] && needs[i].iter().all(|&k| done[k]))
            .collect();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            done[i] = true;
            order.push(i);
        }
    }
    let blocked = (0..needs.len())
        .filter(|&i| !done[i])
        .map(|i| (i, needs[i].iter().copied().filter(|&k| !done[k]).collect()))
        .collect();
    StreamOrder { order, blocked }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_come_after_what_they_read_and_join_and_cycles_are_left_out() {
        let spec = crate::parse_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: g}\nspec:\n  batchInterval: 1s\n  sources: [{name: s, generator: {rate: 1}}]\n  streams:\n    - {name: joined, from: [a], pipeline: [{join: {with: b}}]}\n    - {name: a, from: [s]}\n    - {name: b, from: [s, a]}\n    - {name: x, from: [y]}\n    - {name: y, from: [x, a]}\n  sinks: [{from: joined, stdout: {}}]\n",
        )
        .expect("manifest")
        .spec;
        let o = stream_order(&spec);
        assert_eq!(o.order, [1, 2, 0]);
        assert_eq!(o.blocked, [(3, vec![4]), (4, vec![3])]);
    }
}
