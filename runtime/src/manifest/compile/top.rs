//! `top`: the `keep` records (or pairs) of a batch, or of a window, with the largest `by`.
//!
//! Each partition keeps its own `n` largest, the partitions' lists meet in one partition and
//! are cut to `n` again: a batch moves at most `n` records per partition, whatever its size.

use std::sync::Arc;

use sluice_crds::TopStep;

use super::{Compiler, Stream, per_record};
use crate::data::{Data, KeyMap};
use crate::dstream::DStream;
use crate::dstream::shuffle::combine_shuffled;
use crate::manifest::expr::Expr;
use crate::manifest::value::Value;

/// Records with their `by`, largest first.
type Ranked<T> = Vec<(Value, T)>;

impl Compiler {
    /// `top`: the `keep` records (pairs) with the largest `by`, largest first.
    pub(super) fn top(&mut self, stream: Stream, t: &TopStep, path: &str) -> Stream {
        let op = format!("{path}.top");
        let by = match Expr::compile(&t.by) {
            Ok(e) => Arc::new(e),
            Err(m) => {
                self.problem(format!("{op}.by"), m);
                return stream;
            }
        };
        let n = t.keep.clamp(1, sluice_crds::MAX_TOP) as usize;
        match stream {
            Stream::Records(s) => Stream::Records(top_of(&s, op, n, move |root, r: &Value| {
                by.eval_record(root, r)
            })),
            Stream::Keyed(s) => {
                Stream::Keyed(top_of(&s, op, n, move |root, (k, v): &(Value, Value)| {
                    by.eval_pair(root, k, v)
                }))
            }
        }
    }
}

/// The `n` records of each batch of `s` with the largest `by`, largest first; of equal ones,
/// the larger record, so that every run (and every replay) keeps the same.
fn top_of<T: Data + Ord>(
    s: &DStream<T>,
    op: String,
    n: usize,
    by: impl Fn(&cel::Context<'_, '_>, &T) -> Result<Value, String> + Send + Sync + 'static,
) -> DStream<T> {
    let ranked = {
        let op = op.clone();
        s.map_partitions(&op.clone(), move |cx, records| {
            let mut ranked = per_record(cx, &op, records, |root, r, out| {
                out.push((by(root, &r)?, r));
                Ok(())
            })?;
            keep_largest(&mut ranked, n);
            Ok(ranked)
        })
    };
    let gathered = combine_shuffled(
        &ranked,
        &op,
        |_, ranked: Ranked<T>, map: &mut KeyMap<(), Ranked<T>>| {
            if !ranked.is_empty() {
                map.insert((), ranked);
            }
            Ok(())
        },
        move |kept: &mut Ranked<T>, more: Ranked<T>| {
            kept.extend(more);
            keep_largest(kept, n);
        },
    );
    gathered.map_partitions(&op, |_, lists| {
        Ok(lists
            .into_iter()
            .flat_map(|((), ranked)| ranked.into_iter().map(|(_, r)| r))
            .collect())
    })
}

/// Keeps the `n` largest of `ranked` (by `by`, then by the record), largest first.
fn keep_largest<T: Ord>(ranked: &mut Ranked<T>, n: usize) {
    let largest_first = |a: &(Value, T), b: &(Value, T)| b.cmp(a);
    if ranked.len() > n {
        ranked.select_nth_unstable_by(n, largest_first);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(largest_first);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_n_largest_are_kept_largest_first_and_ties_by_the_record() {
        let mut ranked: Ranked<Value> = [(3, "c"), (9, "a"), (3, "z"), (1, "x"), (9, "b")]
            .into_iter()
            .map(|(by, r)| (Value::Int(by), Value::Str(r.into())))
            .collect();
        keep_largest(&mut ranked, 3);
        let kept: Vec<(i64, &str)> = ranked
            .iter()
            .map(|(by, r)| match (by, r) {
                (Value::Int(b), Value::Str(s)) => (*b, s.as_str()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kept, vec![(9, "b"), (9, "a"), (3, "z")]);
        let mut few: Ranked<Value> = vec![(Value::Int(1), Value::Null)];
        keep_largest(&mut few, 3);
        assert_eq!(few.len(), 1);
    }
}
