//! `join` and `left_outer_join` of two keyed streams, batch by batch.

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

type Emit<K, V, W, R> = dyn Fn(&K, Vec<V>, Option<&Vec<W>>, &mut Vec<(K, R)>) + Send + Sync;

struct CoGroup<K, V, W, R> {
    left: ShuffleId,
    right: ShuffleId,
    emit: Box<Emit<K, V, W, R>>,
}

impl<K: Key, V: Data, W: Data, R> Compute<(K, R)> for CoGroup<K, V, W, R> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<(K, R)>> {
        let left: KeyMap<K, Vec<V>> =
            read_grouped(cx, self.left, part, &|a: &mut Vec<V>, b| a.extend(b))?;
        let right: KeyMap<K, Vec<W>> =
            read_grouped(cx, self.right, part, &|a: &mut Vec<W>, b| a.extend(b))?;
        let mut out = Vec::new();
        for (k, vs) in left {
            (self.emit)(&k, vs, right.get(&k), &mut out);
        }
        Ok(out)
    }
}

impl<K: Key, V: Data> DStream<(K, V)> {
    fn cogroup<W: Data, R: Data>(
        &self,
        other: &DStream<(K, W)>,
        op: &str,
        emit: impl Fn(&K, Vec<V>, Option<&Vec<W>>, &mut Vec<(K, R)>) + Send + Sync + 'static,
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
        self.cogroup(other, "join", |k, vs, ws, out| {
            if let Some(ws) = ws {
                for v in vs {
                    out.extend(ws.iter().map(|w| (k.clone(), (v.clone(), w.clone()))));
                }
            }
        })
    }

    /// Like [`join`](Self::join), but keeps values of this stream that have no match, with `None`.
    pub fn left_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (V, Option<W>))> {
        self.cogroup(other, "leftOuterJoin", |k, vs, ws, out| match ws {
            Some(ws) => {
                for v in vs {
                    out.extend(ws.iter().map(|w| (k.clone(), (v.clone(), Some(w.clone())))));
                }
            }
            None => out.extend(vs.into_iter().map(|v| (k.clone(), (v, None)))),
        })
    }
}
