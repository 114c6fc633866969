//! `reduce_by_key_and_window` (with or without an inverse function) and
//! `count_by_value_and_window`.
//!
//! Both reduce each batch by key first, buffer the per-batch results, and combine the buffered
//! batches of a window. With an inverse function, the previous window is updated instead:
//! `W(t) = W(t - slide) + batches entering - batches leaving`, which costs the slide rather
//! than the window length.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tracked::{decode_chain, keyed_share};
use super::window::Buffer;
use super::{Compute, DStream, Stateful};
use crate::data::{Data, Key, KeyMap};
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::plan::Dep;

type Reduce<V> = Arc<dyn Fn(V, V) -> V + Send + Sync>;
/// Decides which keys stay in an incrementally updated window.
pub type Keep<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

fn merge_into<K: Key, V: Data>(map: &mut KeyMap<K, V>, pairs: &[(K, V)], f: &dyn Fn(V, V) -> V) {
    for (k, v) in pairs {
        match map.get_mut(k) {
            Some(acc) => *acc = f(acc.clone(), v.clone()),
            None => {
                map.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Recomputes each window from the buffered per-batch results.
struct FullWindow<K, V> {
    buffer: Arc<Buffer<(K, V)>>,
    length_batches: u64,
    f: Reduce<V>,
}

impl<K: Key, V: Data> Compute<(K, V)> for FullWindow<K, V> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<(K, V)>> {
        let mut acc = KeyMap::default();
        let span = Buffer::<(K, V)>::span(cx.batch.index, self.length_batches);
        self.buffer
            .visit(part, span, |pairs| merge_into(&mut acc, pairs, &*self.f));
        Ok(acc.into_iter().collect())
    }
}

/// Keeps the current window per partition and updates it with what enters and leaves.
struct IncrementalWindow<K, V> {
    buffer: Arc<Buffer<(K, V)>>,
    length_batches: u64,
    slide_batches: u64,
    f: Reduce<V>,
    inverse: Reduce<V>,
    keep: Option<Keep<K, V>>,
    windows: Vec<Mutex<KeyMap<K, V>>>,
}

impl<K: Key, V: Data> Task for IncrementalWindow<K, V> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let now = cx.batch.index;
        let mut window = lock_unpoisoned(&self.windows[part]);
        self.buffer.visit(
            part,
            Buffer::<(K, V)>::span(now, self.slide_batches),
            |pairs| {
                merge_into(&mut window, pairs, &*self.f);
            },
        );
        if let Some(left_end) = now.checked_sub(self.length_batches) {
            self.buffer.visit(
                part,
                Buffer::<(K, V)>::span(left_end, self.slide_batches),
                |pairs| {
                    for (k, v) in pairs {
                        if let Some(acc) = window.get_mut(k) {
                            *acc = (self.inverse)(acc.clone(), v.clone());
                        }
                    }
                },
            );
        }
        if let Some(keep) = &self.keep {
            window.retain(|k, v| keep(k, v));
        }
        Ok(())
    }
}

impl<K: Key, V: Data> Stateful for IncrementalWindow<K, V> {
    fn entries(&self, part: usize) -> usize {
        lock_unpoisoned(&self.windows[part]).len()
    }

    fn snapshot(&self, part: usize) -> Result<Vec<u8>> {
        let window = lock_unpoisoned(&self.windows[part]);
        crate::data::encode_seq(window.iter())
            .map_err(|e| Error::Internal(format!("cannot serialize a window: {e}")))
    }

    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()> {
        let pairs: Vec<(K, V)> = decode_chain(chain, "window state")?;
        *lock_unpoisoned(&self.windows[part]) = pairs.into_iter().collect();
        Ok(())
    }

    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()> {
        let share: Vec<(K, V)> = keyed_share(olds, part, partitions, "window state")?;
        *lock_unpoisoned(&self.windows[part]) = share.into_iter().collect();
        Ok(())
    }
}

struct WindowRead<K, V> {
    window: Arc<IncrementalWindow<K, V>>,
}

impl<K: Key, V: Data> Compute<(K, V)> for WindowRead<K, V> {
    fn compute(&self, _cx: &BatchContext, part: usize) -> Result<Vec<(K, V)>> {
        let window = lock_unpoisoned(&self.window.windows[part]);
        Ok(window.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Places a buffered (key, value) pair by its key, as the per-batch reduce placed it.
fn by_key<K: Key, V: Data>() -> super::window::Route<(K, V)> {
    Arc::new(|(k, _): &(K, V), partitions: usize| crate::data::partition_of(k, partitions))
}

/// An inverse reduction and which results to keep after it.
pub(crate) struct Inverse<K, V> {
    pub inverse: Reduce<V>,
    pub keep: Option<Keep<K, V>>,
}

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Windows a stream that is already reduced by key per batch.
    pub(crate) fn window_reduced(
        &self,
        f: Reduce<V>,
        inverse: Option<Inverse<K, V>>,
        length: Duration,
        slide: Duration,
    ) -> DStream<(K, V)> {
        let op = if inverse.is_some() {
            "reduceByKeyAndWindow(inverse)"
        } else {
            "reduceByKeyAndWindow"
        };
        let (length_ms, slide_ms) = self.window_ms(op, length, slide);
        let interval = self.ctx.interval_ms().max(1);
        let (length_batches, slide_batches) = (length_ms / interval, slide_ms / interval);
        match inverse {
            None => {
                let (buffer, m) = Buffer::register(self, length_ms, op, Some(by_key()));
                let compute = Arc::new(FullWindow {
                    buffer,
                    length_batches,
                    f,
                });
                self.ctx
                    .add_node(op, slide_ms, vec![Dep::Materialized(m)], compute)
            }
            Some(Inverse { inverse, keep }) => {
                let (buffer, m) = Buffer::register(self, length_ms + slide_ms, op, Some(by_key()));
                let window = Arc::new(IncrementalWindow {
                    buffer,
                    length_batches,
                    slide_batches,
                    f,
                    inverse,
                    keep,
                    windows: (0..self.ctx.partitions())
                        .map(|_| Mutex::new(KeyMap::default()))
                        .collect(),
                });
                self.ctx.add_stateful(self.state_name(op), window.clone());
                let w = self.ctx.add_materializer(
                    op,
                    slide_ms,
                    vec![Dep::Materialized(m)],
                    window.clone(),
                );
                self.ctx.add_node(
                    op,
                    slide_ms,
                    vec![Dep::Materialized(w)],
                    Arc::new(WindowRead { window }),
                )
            }
        }
    }

    /// Reduces the values of each key over a sliding window: every `slide`, the reduction of the
    /// batches in the last `length`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let q = QueueSource::new("q");
    /// for n in [1, 2, 3] { q.push(vec![("k".to_string(), n)]); }
    /// let sums = ctx.source(q).reduce_by_key_and_window(|a: i64, b| a + b, Duration::from_secs(2), Duration::from_secs(1));
    /// let out = sums.collect_batches();
    /// ctx.build().unwrap().run_batches(3).unwrap();
    /// let got: Vec<Vec<(String, i64)>> = out.take().into_iter().map(|(_, r)| r).collect();
    /// assert_eq!(got, vec![vec![("k".into(), 1)], vec![("k".into(), 3)], vec![("k".into(), 5)]]);
    /// ```
    pub fn reduce_by_key_and_window(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
    ) -> DStream<(K, V)> {
        let f: Reduce<V> = Arc::new(f);
        let g = f.clone();
        self.reduce_by_key(move |a, b| g(a, b))
            .window_reduced(f, None, length, slide)
    }

    /// Like [`reduce_by_key_and_window`](Self::reduce_by_key_and_window), but updates the
    /// previous window with `inverse` (which undoes `f`: `inverse(f(a, b), b) == a`). `keep`
    /// decides which keys stay in the window (e.g. drop counts that fell to zero).
    pub fn reduce_by_key_and_window_inv(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        inverse: impl Fn(V, V) -> V + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
        keep: Option<Keep<K, V>>,
    ) -> DStream<(K, V)> {
        let f: Reduce<V> = Arc::new(f);
        let g = f.clone();
        let inverse = Inverse {
            inverse: Arc::new(inverse),
            keep,
        };
        self.reduce_by_key(move |a, b| g(a, b))
            .window_reduced(f, Some(inverse), length, slide)
    }
}

impl<T: Key> DStream<T> {
    /// How many times each distinct record occurs over a sliding window (computed
    /// incrementally; records whose count falls to zero leave the result).
    pub fn count_by_value_and_window(
        &self,
        length: Duration,
        slide: Duration,
    ) -> DStream<(T, u64)> {
        let inverse = Inverse {
            inverse: Arc::new(|a: u64, b: u64| a.saturating_sub(b)),
            keep: Some(Arc::new(|_: &T, n: &u64| *n > 0)),
        };
        self.count_by_value()
            .window_reduced(Arc::new(|a, b| a + b), Some(inverse), length, slide)
    }
}
