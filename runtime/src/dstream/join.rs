//! Joins of two keyed streams, batch by batch: `cogroup`, `join`, and the left, right and
//! full outer joins. Over windows: window both streams alike, then join.

use std::sync::Arc;

use super::shuffle::{read_grouped, shuffle_by_key};
use super::{Compute, DStream};
use crate::data::{Data, Key, KeyMap};
use crate::error::Result;
use crate::exec::BatchContext;
use crate::plan::{Dep, ShuffleId};

fn group<K: Key, V: Data>(stream: &DStream<(K, V)>, op: &str) -> ShuffleId {
    shuffle_by_key(stream, op, |_, pairs, map: &mut KeyMap<K, Vec<V>>| {
        for (k, v) in pairs {
            map.entry(k).or_default().push(v);
        }
        Ok(())
    })
}

/// A key and its values in each stream of a batch: what [`DStream::cogroup`] gives.
pub type Cogrouped<K, V, W> = (K, (Vec<V>, Vec<W>));

/// A key and a value of either side or both: what [`DStream::full_outer_join`] gives.
pub type FullOuterJoined<K, V, W> = (K, (Option<V>, Option<W>));

/// Emits a key's results from its values on each side (one side may be empty, never both).
type Emit<K, V, W, R> = dyn Fn(&K, Vec<V>, Vec<W>, &mut Vec<(K, R)>) + Send + Sync;

struct CoGroup<K, V, W, R> {
    left: ShuffleId,
    right: ShuffleId,
    emit: Box<Emit<K, V, W, R>>,
}

impl<K: Key, V: Data, W: Data, R> Compute<(K, R)> for CoGroup<K, V, W, R> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<(K, R)>> {
        let left: KeyMap<K, Vec<V>> =
            read_grouped(cx, self.left, part, &|a: &mut Vec<V>, b| a.extend(b))?;
        let mut right: KeyMap<K, Vec<W>> =
            read_grouped(cx, self.right, part, &|a: &mut Vec<W>, b| a.extend(b))?;
        let mut out = Vec::new();
        for (k, vs) in left {
            let ws = right.swap_remove(&k).unwrap_or_default();
            (self.emit)(&k, vs, ws, &mut out);
        }
        for (k, ws) in right {
            (self.emit)(&k, Vec::new(), ws, &mut out);
        }
        Ok(out)
    }
}

impl<K: Key, V: Data> DStream<(K, V)> {
    fn cogroup_with<W: Data, R: Data>(
        &self,
        other: &DStream<(K, W)>,
        op: &str,
        emit: impl Fn(&K, Vec<V>, Vec<W>, &mut Vec<(K, R)>) + Send + Sync + 'static,
    ) -> DStream<(K, R)> {
        if self.slide_ms != other.slide_ms {
            self.ctx.problem(format!(
                "{op} of streams with different slides ({}ms and {}ms)",
                self.slide_ms, other.slide_ms
            ));
        }
        let (left, right) = (group(self, op), group(other, op));
        let compute: Arc<dyn Compute<(K, R)>> = Arc::new(CoGroup {
            left,
            right,
            emit: Box::new(emit),
        });
        self.ctx.add_node(
            op,
            self.slide_ms,
            vec![Dep::Shuffle(left), Dep::Shuffle(right)],
            compute,
        )
    }

    /// Pairs every value of a key in this stream with every value of the same key in `other`,
    /// in each batch (an inner join).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let (orders, users) = (QueueSource::new("orders"), QueueSource::new("users"));
    /// orders.push(vec![(1, "book".to_string()), (2, "pen".to_string())]);
    /// users.push(vec![(1, "ann".to_string())]);
    /// let joined = ctx.source(orders).join(&ctx.source(users)).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(joined.take()[0].1, vec![(1, ("book".to_string(), "ann".to_string()))]);
    /// ```
    pub fn join<W: Data>(&self, other: &DStream<(K, W)>) -> DStream<(K, (V, W))> {
        self.cogroup_with(other, "join", |k, vs, ws, out| {
            for v in &vs {
                out.extend(ws.iter().map(|w| (k.clone(), (v.clone(), w.clone()))));
            }
        })
    }

    /// Like [`join`](Self::join), but keeps values of this stream that have no match, with `None`.
    pub fn left_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (V, Option<W>))> {
        self.cogroup_with(other, "leftOuterJoin", |k, vs, ws, out| {
            if ws.is_empty() {
                out.extend(vs.into_iter().map(|v| (k.clone(), (v, None))));
                return;
            }
            for v in &vs {
                out.extend(ws.iter().map(|w| (k.clone(), (v.clone(), Some(w.clone())))));
            }
        })
    }

    /// Like [`join`](Self::join), but keeps values of `other` that have no match, with `None`.
    pub fn right_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (Option<V>, W))> {
        self.cogroup_with(other, "rightOuterJoin", |k, vs, ws, out| {
            if vs.is_empty() {
                out.extend(ws.into_iter().map(|w| (k.clone(), (None, w))));
                return;
            }
            for v in &vs {
                out.extend(ws.iter().map(|w| (k.clone(), (Some(v.clone()), w.clone()))));
            }
        })
    }

    /// Like [`join`](Self::join), but keeps the values of either stream that have no match,
    /// with `None` on the other side.
    pub fn full_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<FullOuterJoined<K, V, W>> {
        self.cogroup_with(other, "fullOuterJoin", |k, vs, ws, out| {
            if vs.is_empty() {
                out.extend(ws.into_iter().map(|w| (k.clone(), (None, Some(w)))));
            } else if ws.is_empty() {
                out.extend(vs.into_iter().map(|v| (k.clone(), (Some(v), None))));
            } else {
                for v in &vs {
                    out.extend(
                        ws.iter()
                            .map(|w| (k.clone(), (Some(v.clone()), Some(w.clone())))),
                    );
                }
            }
        })
    }

    /// Every key of either stream in the batch, once, with its values in this stream and in
    /// `other` (either list may be empty), in arrival order.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let (clicks, views) = (QueueSource::new("clicks"), QueueSource::new("views"));
    /// clicks.push(vec![(1, 'a'), (1, 'b')]);
    /// views.push(vec![(2, 'x')]);
    /// let both = ctx.source(clicks).cogroup(&ctx.source(views)).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// let mut got = both.take().remove(0).1;
    /// got.sort();
    /// assert_eq!(got, vec![(1, (vec!['a', 'b'], vec![])), (2, (vec![], vec!['x']))]);
    /// ```
    pub fn cogroup<W: Data>(&self, other: &DStream<(K, W)>) -> DStream<Cogrouped<K, V, W>> {
        self.cogroup_with(other, "cogroup", |k, vs, ws, out| {
            out.push((k.clone(), (vs, ws)));
        })
    }
}
