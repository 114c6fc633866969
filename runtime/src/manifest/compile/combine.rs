//! Steps that combine streams or whole batches: joins of two keyed streams (`join`, the outer
//! joins, `cogroup`), and `reduce`, `reduceByWindow` and `countByWindow`, which aggregate all
//! of a batch's or window's records into one.

use std::collections::BTreeMap;

use sluice_crds::{Aggregation, JoinKind, JoinStep, WindowStep, WindowedReduceStep};

use super::steps::{reduce_accs, window_accs};
use super::{Compiler, Stream};
use crate::dstream::DStream;
use crate::manifest::value::Value;

impl Compiler {
    /// A join of `s` with the keyed stream `j.with`: values become `[value, other]` (`null`
    /// for a side without a match), or `[[values], [others]]` for a cogroup.
    pub(super) fn join(
        &mut self,
        s: DStream<(Value, Value)>,
        kind: JoinKind,
        j: &JoinStep,
        path: &str,
        streams: &BTreeMap<String, Stream>,
    ) -> Stream {
        let Some(Stream::Keyed(other)) = streams.get(&j.with) else {
            self.problem(
                format!("{path}.{}.with", kind.name()),
                format!("{:?} names no keyed stream of spec.streams", j.with),
            );
            return Stream::Keyed(s);
        };
        let pair = |a: Value, b: Value| Value::List(vec![a, b]);
        let side = |v: Option<Value>| v.unwrap_or(Value::Null);
        Stream::Keyed(match kind {
            JoinKind::Inner => s.join(other).map_values(move |(v, w)| pair(v, w)),
            JoinKind::LeftOuter => s
                .left_outer_join(other)
                .map_values(move |(v, w)| pair(v, side(w))),
            JoinKind::RightOuter => s
                .right_outer_join(other)
                .map_values(move |(v, w)| pair(side(v), w)),
            JoinKind::FullOuter => s
                .full_outer_join(other)
                .map_values(move |(v, w)| pair(side(v), side(w))),
            JoinKind::Cogroup => s
                .cogroup(other)
                .map_values(move |(vs, ws)| pair(Value::List(vs), Value::List(ws))),
        })
    }

    /// `reduce`: the aggregate of the batch's records (a keyed stream's values), one record.
    pub(super) fn reduce(&mut self, stream: Stream, op: Aggregation, path: &str) -> Stream {
        let reduced = reduce_accs(&as_one_key(stream), op, format!("{path}.reduce"));
        Stream::Records(reduced.map(|(_, acc)| acc.finish()))
    }

    /// `reduceByWindow`: the aggregate of a sliding window's records (or values), one record
    /// per window; each batch is aggregated once, and the window merges its batches' results
    /// (or, with `inverse`, updates the last window with what entered and left).
    pub(super) fn reduce_by_window(
        &mut self,
        stream: Stream,
        w: &WindowedReduceStep,
        path: &str,
    ) -> Stream {
        let p = format!("{path}.reduceByWindow");
        let length = self.duration(&format!("{p}.length"), Some(&w.length));
        let slide = self.duration(&format!("{p}.slide"), w.slide.as_deref());
        let reduced = reduce_accs(&as_one_key(stream), w.op, p);
        let windowed = window_accs(&reduced, w.inverse == Some(true), length, slide);
        Stream::Records(windowed.map(|(_, v)| v))
    }

    /// `countByWindow`: the records (or pairs) of a sliding window, one count per window.
    pub(super) fn count_by_window<T: crate::data::Data>(
        &mut self,
        s: &DStream<T>,
        w: &WindowStep,
        path: &str,
    ) -> Stream {
        let p = format!("{path}.countByWindow");
        let length = self.duration(&format!("{p}.length"), Some(&w.length));
        let slide = self.duration(&format!("{p}.slide"), w.slide.as_deref());
        Stream::Records(
            s.count_by_window(length, slide)
                .map(|n| Value::Int(i64::try_from(n).unwrap_or(i64::MAX))),
        )
    }
}

/// The records (a keyed stream's values) under one key, so a per-key aggregation gives one
/// result for the whole batch.
fn as_one_key(stream: Stream) -> DStream<(Value, Value)> {
    match stream {
        Stream::Records(s) => s.map(|v| (Value::Null, v)),
        Stream::Keyed(s) => s.map(|(_, v)| (Value::Null, v)),
    }
}
