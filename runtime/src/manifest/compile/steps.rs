//! Pipeline steps: one DStream operation each, on plain records or on (key, value) pairs.

use std::sync::Arc;

use sluice_crds::{Aggregation, PipelineStep, Selector, StepKind, WindowStep};

use std::collections::BTreeMap;

use super::{Compiler, Pipeline, Sel, Splitter, Stream, per_record};
use crate::data::KeyMap;
use crate::dstream::DStream;
use crate::dstream::windowed_reduce::Inverse;
use crate::error::Result;
use crate::exec::BatchContext;
use crate::manifest::aggregate::Acc;
use crate::manifest::expr::Expr;
use crate::manifest::value::{StrKey, Text, Value};
use crate::sink::ToText;

impl Compiler {
    /// Compiles step `i` (and the next, when they fuse); returns the stream and steps used.
    pub(super) fn step(
        &mut self,
        stream: Stream,
        steps: &[PipelineStep],
        pipeline: &Pipeline,
        i: usize,
        streams: &BTreeMap<String, Stream>,
    ) -> (Stream, usize) {
        let path = format!("{}[{i}]", pipeline.base);
        let Some(kind) = steps[i].kind() else {
            self.problem(&path, "set exactly one operation");
            return (stream, 1);
        };
        // flatMap (split or regex) followed by a count fuses into one map-side combine over the
        // text, so words are counted without allocating a record each.
        if let (StepKind::FlatMap(fm), Some(next), Stream::Records(records)) =
            (kind, steps.get(i + 1).and_then(PipelineStep::kind), &stream)
        {
            let counts = matches!(
                next,
                StepKind::CountByValue(_) | StepKind::CountByValueAndWindow(_)
            );
            if counts
                && fm.expr.is_none()
                && let Some(splitter) = self.splitter(&format!("{path}.flatMap"), fm)
            {
                let op = format!("{path}.flatMap");
                let counted = count_pieces(records, splitter, fm.lowercase.unwrap_or(false), op);
                let next_path = format!("{}[{}]", pipeline.base, i + 1);
                return (self.finish_count(counted, next, &next_path), 2);
            }
        }
        let out = match (stream, kind) {
            (stream, StepKind::Reduce(r)) => self.reduce(stream, r.op, &path),
            (stream, StepKind::ReduceByWindow(w)) => self.reduce_by_window(stream, w, &path),
            (Stream::Records(s), StepKind::CountByWindow(w)) => self.count_by_window(&s, w, &path),
            (Stream::Keyed(s), StepKind::CountByWindow(w)) => self.count_by_window(&s, w, &path),
            (Stream::Keyed(s), StepKind::Join(join, j)) => self.join(s, join, j, &path, streams),
            (Stream::Records(s), StepKind::Repartition(_)) => Stream::Records(s.repartition()),
            (Stream::Keyed(s), StepKind::Repartition(_)) => Stream::Keyed(s.repartition()),
            (stream, StepKind::Top(t)) => self.top(stream, t, &path),
            (Stream::Records(s), kind) => self.records_step(s, kind, &path),
            (Stream::Keyed(s), kind) => self.keyed_step(s, kind, &path),
        };
        (out, 1)
    }

    /// The end of `countByValue` or `countByValueAndWindow` (`kind`), over counted records.
    fn finish_count(
        &mut self,
        counted: DStream<(Value, i64)>,
        kind: StepKind<'_>,
        path: &str,
    ) -> Stream {
        let window: Option<&WindowStep> = match kind {
            StepKind::CountByValueAndWindow(w) => Some(w),
            _ => None,
        };
        let counted = match window {
            Some(w) => {
                let length = self.duration(
                    &format!("{path}.countByValueAndWindow.length"),
                    Some(&w.length),
                );
                let slide = self.duration(
                    &format!("{path}.countByValueAndWindow.slide"),
                    w.slide.as_deref(),
                );
                let inverse = Inverse {
                    inverse: Arc::new(|a: i64, b: i64| a - b),
                    keep: Some(Arc::new(|_: &Value, n: &i64| *n != 0)),
                };
                counted.window_reduced(Arc::new(|a, b| a + b), Some(inverse), length, slide)
            }
            None => counted,
        };
        Stream::Keyed(counted.map_values(Value::Int))
    }

    fn records_step(&mut self, s: DStream<Value>, kind: StepKind<'_>, path: &str) -> Stream {
        match kind {
            StepKind::Map(sel) => {
                let Some(sel) = self.selector(&format!("{path}.map"), sel) else {
                    return Stream::Records(s);
                };
                let op = format!("{path}.map");
                Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |root, r, out| {
                        let _: () = out.push(sel.record(root, &r)?);
                        Ok(())
                    })
                }))
            }
            StepKind::ParseJson(_) => {
                let op = format!("{path}.parseJson");
                Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |_, r, out| {
                        match r {
                            Value::Str(text) => {
                                let value = Value::parse_json(&text).map_err(|e| {
                                    format!("not JSON ({e}): {}", Value::Str(text).describe())
                                })?;
                                out.push(value);
                            }
                            // A Kafka record with its metadata: the value is parsed in place.
                            Value::Map(mut fields)
                                if matches!(fields.get("value"), Some(Value::Str(_))) =>
                            {
                                if let Some(Value::Str(text)) = fields.remove("value") {
                                    let value = Value::parse_json(&text).map_err(|e| {
                                        format!(
                                            "value not JSON ({e}): {}",
                                            Value::Str(text).describe()
                                        )
                                    })?;
                                    fields.insert("value".into(), value);
                                }
                                out.push(Value::Map(fields));
                            }
                            other => out.push(other),
                        }
                        Ok(())
                    })
                }))
            }
            StepKind::FlatMap(fm) => {
                let op = format!("{path}.flatMap");
                let lower = fm.lowercase.unwrap_or(false);
                let case = move |p: &str| -> Text {
                    if lower {
                        Text::from_str_to_lowercase(p)
                    } else {
                        p.into()
                    }
                };
                if let Some(e) = &fm.expr {
                    let e = match Expr::compile(e) {
                        Ok(e) => e,
                        Err(m) => {
                            self.problem(format!("{op}.expr"), m);
                            return Stream::Records(s);
                        }
                    };
                    return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                        per_record(cx, &op, recs, |root, r, out| {
                            match e.eval_record(root, &r)? {
                                Value::List(items) => {
                                    out.extend(items.into_iter().map(|v| match v {
                                        Value::Str(t) => Value::Str(case(&t)),
                                        other => other,
                                    }));
                                    Ok(())
                                }
                                other => Err(format!(
                                    "flatMap expr must return a list, got {}",
                                    other.describe()
                                )),
                            }
                        })
                    }));
                }
                let Some(splitter) = self.splitter(&op, fm) else {
                    return Stream::Records(s);
                };
                Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |_, r, out| match r {
                        Value::Str(text) => {
                            splitter.for_each(&text, |p| out.push(Value::Str(case(p))));
                            Ok(())
                        }
                        other => Err(format!(
                            "flatMap split/regex needs text, got {}",
                            other.describe()
                        )),
                    })
                }))
            }
            StepKind::Filter(f) => {
                let op = format!("{path}.filter");
                if let Some(re) = &f.regex {
                    let Some(re) = self.regex(&format!("{op}.regex"), re) else {
                        return Stream::Records(s);
                    };
                    return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                        per_record(cx, &op, recs, |_, r, out| {
                            let keep = match &r {
                                Value::Str(t) => re.is_match(t),
                                other => re.is_match(&other.to_text()),
                            };
                            if keep {
                                out.push(r);
                            }
                            Ok(())
                        })
                    }));
                }
                let Some(Sel::Expr(e)) = self.selector(
                    &op,
                    &Selector {
                        field: None,
                        expr: f.expr.clone(),
                    },
                ) else {
                    return Stream::Records(s);
                };
                Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |root, r, out| {
                        if keeps(e.eval_record(root, &r)?)? {
                            let _: () = out.push(r);
                        }
                        Ok(())
                    })
                }))
            }
            StepKind::KeyBy(k) => {
                let op = format!("{path}.keyBy");
                let Some((key, value)) = self.key_by(&op, k) else {
                    // Already reported; an empty keyed stream lets later steps be checked too.
                    return Stream::Keyed(s.map_partitions("keyBy", |_, _| Ok(Vec::new())));
                };
                Stream::Keyed(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |root, r, out| {
                        let k = key.record(root, &r)?;
                        let v = match &value {
                            Some(sel) => sel.record(root, &r)?,
                            None => r,
                        };
                        out.push((k, v));
                        Ok(())
                    })
                }))
            }
            StepKind::Window(w) => {
                let length = self.duration(&format!("{path}.window.length"), Some(&w.length));
                let slide = self.duration(&format!("{path}.window.slide"), w.slide.as_deref());
                Stream::Records(s.window(length, slide))
            }
            StepKind::CountByValue(_) | StepKind::CountByValueAndWindow(_) => {
                let op = format!("{path}.countByValue");
                let counted = crate::dstream::shuffle::combine_shuffled(
                    &s,
                    &op,
                    |_, recs, map: &mut KeyMap<Value, i64>| {
                        for r in recs {
                            *map.entry(r).or_insert(0) += 1;
                        }
                        Ok(())
                    },
                    |a: &mut i64, b| *a += b,
                );
                self.finish_count(counted, kind, path)
            }
            StepKind::Count(_) => Stream::Records(s.count().map(|n| Value::Int(n as i64))),
            StepKind::JoinStatic(j) => self.join_static(Stream::Records(s), j, path),
            // Handled for both shapes in `step`.
            StepKind::Reduce(_)
            | StepKind::ReduceByWindow(_)
            | StepKind::CountByWindow(_)
            | StepKind::Repartition(_)
            | StepKind::Top(_) => Stream::Records(s),
            StepKind::ReduceByKey(_)
            | StepKind::ReduceByKeyAndWindow(_)
            | StepKind::UpdateStateByKey(_)
            | StepKind::Join(..)
            | StepKind::GroupByKey(_)
            | StepKind::GroupByKeyAndWindow(_)
            | StepKind::MapValues(_)
            | StepKind::FlatMapValues(_)
            | StepKind::MapWithState(_) => {
                // Keyed-only operations on a plain stream: `validate` explains; keep the stream.
                self.problem(
                    path,
                    format!(
                        "{} needs a keyed stream; add keyBy or countByValue before it",
                        kind.name()
                    ),
                );
                Stream::Records(s)
            }
        }
    }

    /// A `keyBy` step's key selector and value selector (`None`: the whole record, or value),
    /// or `None` when one is wrong (reported at `op`).
    fn key_by(&mut self, op: &str, k: &sluice_crds::KeyByStep) -> Option<(Sel, Option<Sel>)> {
        let key = self.selector(&format!("{op}.key"), &k.key);
        let value = match &k.value {
            Some(v) => Some(self.selector(&format!("{op}.value"), v)?),
            None => None,
        };
        Some((key?, value))
    }

    fn keyed_step(&mut self, s: DStream<(Value, Value)>, kind: StepKind<'_>, path: &str) -> Stream {
        match kind {
            StepKind::Map(sel) => {
                let Some(sel) = self.selector(&format!("{path}.map"), sel) else {
                    return Stream::Keyed(s);
                };
                let op = format!("{path}.map");
                Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                    per_record(cx, &op, pairs, |root, (k, v), out| {
                        let v = sel.pair(root, &k, &v)?;
                        out.push((k, v));
                        Ok(())
                    })
                }))
            }
            StepKind::Filter(f) => {
                let op = format!("{path}.filter");
                let Some(Sel::Expr(e)) = self.selector(
                    &op,
                    &Selector {
                        field: None,
                        expr: f.expr.clone(),
                    },
                ) else {
                    return Stream::Keyed(s);
                };
                Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                    per_record(cx, &op, pairs, |root, (k, v), out| {
                        if keeps(e.eval_pair(root, &k, &v)?)? {
                            let _: () = out.push((k, v));
                        }
                        Ok(())
                    })
                }))
            }
            StepKind::Window(w) => {
                let length = self.duration(&format!("{path}.window.length"), Some(&w.length));
                let slide = self.duration(&format!("{path}.window.slide"), w.slide.as_deref());
                Stream::Keyed(s.window(length, slide))
            }
            StepKind::Count(_) => Stream::Records(s.count().map(|n| Value::Int(n as i64))),
            StepKind::ReduceByKey(r) => {
                let reduced = reduce_accs(&s, r.op, format!("{path}.reduceByKey"));
                Stream::Keyed(reduced.map_values(|a| a.finish()))
            }
            StepKind::ReduceByKeyAndWindow(w) => {
                let p = format!("{path}.reduceByKeyAndWindow");
                let length = self.duration(&format!("{p}.length"), Some(&w.length));
                let slide = self.duration(&format!("{p}.slide"), w.slide.as_deref());
                let reduced = reduce_accs(&s, w.op, p);
                Stream::Keyed(window_accs(
                    &reduced,
                    w.inverse == Some(true),
                    length,
                    slide,
                ))
            }
            StepKind::UpdateStateByKey(st) => {
                let p = format!("{path}.updateStateByKey");
                let Some(op) = st.op else {
                    return self.state_expr(&s, st, &p);
                };
                let timeout_batches =
                    self.timeout_batches(&format!("{p}.timeout"), st.timeout.as_deref());
                let name = p.clone();
                let state = s.state_by_key(
                    &p,
                    move |cx, pairs, map: &mut KeyMap<Value, Acc>| {
                        fold_accs(cx, &name, op, pairs, map)
                    },
                    |a: &mut Acc, b| a.merge(b),
                    move |cx, _k, fresh: Option<Acc>, old: Option<(Acc, u64)>| {
                        let batch = &cx.batch;
                        Ok(match (fresh, old) {
                            (Some(f), Some((mut acc, _))) => {
                                acc.merge(f);
                                Some((acc, batch.index))
                            }
                            (Some(f), None) => Some((f, batch.index)),
                            (None, Some((acc, last))) => match timeout_batches {
                                Some(t) if last + t <= batch.index => None,
                                _ => Some((acc, last)),
                            },
                            (None, None) => None,
                        })
                    },
                );
                Stream::Keyed(state.map_values(|(acc, _)| acc.finish()))
            }
            StepKind::JoinStatic(j) => self.join_static(Stream::Keyed(s), j, path),
            StepKind::GroupByKey(_) => Stream::Keyed(s.group_by_key().map_values(Value::List)),
            StepKind::GroupByKeyAndWindow(w) => {
                let p = format!("{path}.groupByKeyAndWindow");
                let length = self.duration(&format!("{p}.length"), Some(&w.length));
                let slide = self.duration(&format!("{p}.slide"), w.slide.as_deref());
                Stream::Keyed(
                    s.group_by_key_and_window(length, slide)
                        .map_values(Value::List),
                )
            }
            StepKind::MapValues(sel) => {
                let Some(sel) = self.selector(&format!("{path}.mapValues"), sel) else {
                    return Stream::Keyed(s);
                };
                let op = format!("{path}.mapValues");
                Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                    per_record(cx, &op, pairs, |root, (k, v), out| {
                        let v = sel.pair(root, &k, &v)?;
                        out.push((k, v));
                        Ok(())
                    })
                }))
            }
            StepKind::FlatMapValues(fm) => self.flat_map_values(s, fm, path),
            StepKind::MapWithState(m) => self.map_state_expr(&s, m, path),
            StepKind::KeyBy(k) => {
                // A new key (and value) from each pair: selectors read the value, expressions
                // `key` and `value`.
                let op = format!("{path}.keyBy");
                let Some((key, value)) = self.key_by(&op, k) else {
                    return Stream::Keyed(s.map_partitions("keyBy", |_, _| Ok(Vec::new())));
                };
                Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                    per_record(cx, &op, pairs, |root, (k, v), out| {
                        let new_key = key.pair(root, &k, &v)?;
                        let v = match &value {
                            Some(sel) => sel.pair(root, &k, &v)?,
                            None => v,
                        };
                        out.push((new_key, v));
                        Ok(())
                    })
                }))
            }
            // Handled for both shapes in `step`.
            StepKind::Reduce(_)
            | StepKind::ReduceByWindow(_)
            | StepKind::CountByWindow(_)
            | StepKind::Join(..)
            | StepKind::Repartition(_)
            | StepKind::Top(_) => Stream::Keyed(s),
            StepKind::ParseJson(_)
            | StepKind::FlatMap(_)
            | StepKind::CountByValue(_)
            | StepKind::CountByValueAndWindow(_) => {
                self.problem(
                    path,
                    format!(
                        "{} works on plain records, but the stream is keyed here",
                        kind.name()
                    ),
                );
                Stream::Keyed(s)
            }
        }
    }
}

impl Compiler {
    /// `flatMapValues`: each value becomes the pieces of its text (`split`, `regex`) or the
    /// items of the list an `expr` over key and value returns, each with the pair's key.
    fn flat_map_values(
        &mut self,
        s: DStream<(Value, Value)>,
        fm: &sluice_crds::FlatMapStep,
        path: &str,
    ) -> Stream {
        let op = format!("{path}.flatMapValues");
        let lower = fm.lowercase.unwrap_or(false);
        let case = move |v: Value| match v {
            Value::Str(t) if lower => Value::Str(t.to_lowercase()),
            other => other,
        };
        if let Some(e) = &fm.expr {
            let e = match Expr::compile(e) {
                Ok(e) => e,
                Err(m) => {
                    self.problem(format!("{op}.expr"), m);
                    return Stream::Keyed(s);
                }
            };
            return Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                per_record(cx, &op, pairs, |root, (k, v), out| {
                    match e.eval_pair(root, &k, &v)? {
                        Value::List(items) => {
                            out.extend(items.into_iter().map(|item| (k.clone(), case(item))));
                            Ok(())
                        }
                        other => Err(format!(
                            "flatMapValues expr must return a list, got {}",
                            other.describe()
                        )),
                    }
                })
            }));
        }
        let Some(splitter) = self.splitter(&op, fm) else {
            return Stream::Keyed(s);
        };
        Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
            per_record(cx, &op, pairs, |_, (k, v), out| match v {
                Value::Str(text) => {
                    splitter.for_each(&text, |p| {
                        out.push((k.clone(), case(Value::Str(p.into()))));
                    });
                    Ok(())
                }
                other => Err(format!(
                    "flatMapValues split/regex needs text values, got {}",
                    other.describe()
                )),
            })
        }))
    }
}

/// Counts the pieces of text records per key, map-side, without a record per piece.
fn count_pieces(
    records: &DStream<Value>,
    splitter: Splitter,
    lowercase: bool,
    op: String,
) -> DStream<(Value, i64)> {
    crate::dstream::shuffle::combine_shuffled(
        records,
        &op.clone(),
        move |cx, recs, map: &mut KeyMap<Value, i64>| {
            let mut lower = String::new();
            for r in recs {
                let Value::Str(text) = r else {
                    cx.record_error(
                        &op,
                        format!("flatMap split/regex needs text, got {}", r.describe()),
                    )?;
                    continue;
                };
                splitter.for_each(&text, |piece| {
                    let piece = if lowercase {
                        lower.clear();
                        lower.extend(piece.chars().flat_map(char::to_lowercase));
                        lower.as_str()
                    } else {
                        piece
                    };
                    match map.get_mut(&StrKey(piece)) {
                        Some(n) => *n += 1,
                        None => {
                            map.insert(Value::Str(piece.into()), 1);
                        }
                    }
                });
            }
            Ok(())
        },
        |a: &mut i64, b| *a += b,
    )
}

/// Folds (key, value) pairs into per-key partial aggregates; values the aggregation refuses
/// (text for `sum`, say) are counted as record errors under `name`.
fn fold_accs(
    cx: &BatchContext,
    name: &str,
    op: Aggregation,
    pairs: Vec<(Value, Value)>,
    map: &mut KeyMap<Value, Acc>,
) -> Result<()> {
    for (k, v) in pairs {
        let result = match map.get_mut(&k) {
            Some(acc) => acc.add(op, v),
            None => Acc::start(op, v).map(|a| {
                map.insert(k, a);
            }),
        };
        if let Err(m) = result {
            cx.record_error(name, m)?;
        }
    }
    Ok(())
}

/// Partial aggregates merged over a sliding window (with `inverse`, the last window updated
/// with what entered and left, keys with nothing left dropped), finished.
pub(super) fn window_accs(
    reduced: &DStream<(Value, Acc)>,
    inverse: bool,
    length: std::time::Duration,
    slide: std::time::Duration,
) -> DStream<(Value, Value)> {
    let inverse = inverse.then(|| Inverse {
        inverse: Arc::new(|mut a: Acc, b: Acc| {
            a.subtract(&b);
            a
        }) as Arc<dyn Fn(Acc, Acc) -> Acc + Send + Sync>,
        keep: Some(Arc::new(|_: &Value, a: &Acc| !a.is_empty())
            as Arc<dyn Fn(&Value, &Acc) -> bool + Send + Sync>),
    });
    let merge = Arc::new(|mut a: Acc, b: Acc| {
        a.merge(b);
        a
    });
    reduced
        .window_reduced(merge, inverse, length, slide)
        .map_values(|a| a.finish())
}

/// Per-batch aggregation of keyed values into partial aggregates.
pub(super) fn reduce_accs(
    s: &DStream<(Value, Value)>,
    op: Aggregation,
    name: String,
) -> DStream<(Value, Acc)> {
    crate::dstream::shuffle::combine_shuffled(
        s,
        &name.clone(),
        move |cx, pairs, map: &mut KeyMap<Value, Acc>| fold_accs(cx, &name, op, pairs, map),
        |a: &mut Acc, b| a.merge(b),
    )
}

/// A filter expression's verdict on one record.
fn keeps(value: Value) -> Result<bool, String> {
    match value {
        Value::Bool(keep) => Ok(keep),
        other => Err(format!(
            "filter expr must return a bool, got {}",
            other.describe()
        )),
    }
}
