//! `map_with_state`: a function per record with access to its key's state, timeouts and
//! timers.
//!
//! Unlike `update_state_by_key`, only keys with new records (or whose state times out, or
//! whose timer is due) are touched, so the cost follows the batch, not the size of the state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shuffle::{read_grouped, shuffle_by_key};
use super::timers::Timers;
use super::tracked::{EncodedDelta, Tracked, decode_chain, keyed_share};
use super::{Compute, DStream, Stateful};
use crate::data::{Data, Key, KeyMap};
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::plan::{Dep, ShuffleId};
use crate::time::BatchInfo;

/// The state of one key, as seen by a `map_with_state` function.
#[derive(Debug)]
pub struct State<S> {
    value: Option<S>,
    timing_out: bool,
    timer: Option<u64>,
    fired: Option<u64>,
}

impl<S> State<S> {
    fn new(value: Option<S>, timer: Option<u64>) -> Self {
        Self {
            value,
            timing_out: false,
            timer,
            fired: None,
        }
    }

    /// Whether the key has state.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// The key's state.
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }

    /// Sets the key's state. Ignored while the key is timing out.
    pub fn update(&mut self, value: S) {
        if !self.timing_out {
            self.value = Some(value);
        }
    }

    /// Removes the key's state.
    pub fn remove(&mut self) {
        self.value = None;
    }

    /// True when the function is called because the key had no records for the timeout; the
    /// state is removed afterwards whatever the function does.
    pub fn is_timing_out(&self) -> bool {
        self.timing_out
    }

    /// The time of the key's timer (milliseconds since the Unix epoch), if it has one.
    pub fn timer(&self) -> Option<u64> {
        self.timer
    }

    /// Sets the key's timer, replacing the one it had: the function is called for the key,
    /// without a record, in the first batch whose time is `at_ms` or later (after that batch's
    /// records). Needs [`StateSpec::timers`]. A timer is the key's whether or not it has
    /// state: removing the state leaves it.
    pub fn set_timer(&mut self, at_ms: u64) {
        self.timer = Some(at_ms);
    }

    /// Removes the key's timer.
    pub fn clear_timer(&mut self) {
        self.timer = None;
    }

    /// When the function is called because the key's timer is due: the time it was set for.
    /// The timer is gone by then; the function may set another, which is due at the next batch
    /// at the earliest.
    pub fn fired_timer(&self) -> Option<u64> {
        self.fired
    }
}

type MapFn<K, V, S, U> =
    dyn Fn(&BatchInfo, &K, Option<V>, &mut State<S>) -> Option<U> + Send + Sync;

/// What `map_with_state` does: the function, an optional idle timeout, and whether keys have
/// timers.
pub struct StateSpec<K, V, S, U> {
    func: Arc<MapFn<K, V, S, U>>,
    timeout: Option<Duration>,
    timers: bool,
}

impl<K, V, S, U> StateSpec<K, V, S, U> {
    /// Calls `func(batch, key, value, state)` for every record, in arrival order per key, and
    /// with `value = None` when a key times out or its timer is due. Whatever it returns is
    /// emitted.
    pub fn function(
        func: impl Fn(&BatchInfo, &K, Option<V>, &mut State<S>) -> Option<U> + Send + Sync + 'static,
    ) -> Self {
        Self {
            func: Arc::new(func),
            timeout: None,
            timers: false,
        }
    }

    /// Removes keys that received no record for `idle` (rounded up to whole batches).
    pub fn timeout(mut self, idle: Duration) -> Self {
        self.timeout = Some(idle);
        self
    }

    /// Lets the function set a timer per key ([`State::set_timer`]). The timers are a state of
    /// their own in checkpoints, next to the keys' states.
    pub fn timers(mut self) -> Self {
        self.timers = true;
        self
    }
}

struct MapState<K, V, S, U> {
    shuffle: ShuffleId,
    func: Arc<MapFn<K, V, S, U>>,
    timeout_batches: Option<u64>,
    /// State and the index of the last batch that had records for the key.
    parts: Vec<Mutex<Tracked<K, (S, u64)>>>,
    timers: Option<Arc<Timers<K>>>,
    emitted: Vec<Mutex<(u64, Vec<U>)>>,
}

impl<K: Key, V: Data, S: Data, U: Data> Task for MapState<K, V, S, U> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let now = cx.batch.index;
        let grouped = cx.state_input(part, || {
            read_grouped::<K, Vec<V>>(cx, self.shuffle, part, &|a, b| a.extend(b))
        })?;
        let mut state = lock_unpoisoned(&self.parts[part]);
        let mut timers = self
            .timers
            .as_ref()
            .map(|t| lock_unpoisoned(&t.parts[part]));
        let mut out = Vec::new();
        for (k, values) in grouped {
            let mut handle = State::new(
                state.get(&k).map(|(s, _)| s.clone()),
                timers.as_ref().and_then(|t| t.get(&k)),
            );
            for v in values {
                out.extend((self.func)(&cx.batch, &k, Some(v), &mut handle));
            }
            match &mut timers {
                Some(t) => t.set(&k, handle.timer),
                None if handle.timer.is_some() => return Err(timers_off()),
                None => {}
            }
            match handle.value {
                Some(s) => state.insert(k, (s, now)),
                None => {
                    state.swap_remove(&k);
                }
            }
        }
        if let Some(timers) = &mut timers {
            for (k, at) in timers.take_due(cx.batch.time_ms) {
                let old = state.get(&k);
                let last = old.map_or(now, |(_, last)| *last);
                let mut handle = State::new(old.map(|(s, _)| s.clone()), None);
                handle.fired = Some(at);
                out.extend((self.func)(&cx.batch, &k, None, &mut handle));
                timers.set(&k, handle.timer);
                match handle.value {
                    // The idle timeout counts batches with records: a timer is not one.
                    Some(s) => state.insert(k, (s, last)),
                    None => {
                        state.swap_remove(&k);
                    }
                }
            }
        }
        if let Some(timeout) = self.timeout_batches {
            let idle: Vec<K> = state
                .iter()
                .filter(|(_, (_, last))| last + timeout <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in idle {
                if let Some((s, _)) = state.swap_remove(&k) {
                    let mut handle = State::new(Some(s), None);
                    handle.timing_out = true;
                    out.extend((self.func)(&cx.batch, &k, None, &mut handle));
                }
            }
        }
        // The next snapshot's delta, written ahead while the partition's entries are at hand
        // (see `tracked`): the snapshot's batch then has little left to write.
        state.write_ahead()?;
        if let Some(timers) = &mut timers {
            timers.write_ahead()?;
        }
        *lock_unpoisoned(&self.emitted[part]) = (now, out);
        Ok(())
    }
}

/// A timer set by a function whose spec has none.
fn timers_off() -> Error {
    Error::Config(
        "map_with_state: a function set a timer, and its StateSpec has no timers: build it \
         with StateSpec::timers()"
            .to_string(),
    )
}

impl<K: Key, V: Data, S: Data, U: Data> Stateful for MapState<K, V, S, U> {
    fn entries(&self, part: usize) -> usize {
        lock_unpoisoned(&self.parts[part]).len()
    }

    fn snapshot(&self, part: usize) -> Result<Vec<u8>> {
        lock_unpoisoned(&self.parts[part]).encode_whole()
    }

    fn records_changes(&self) -> bool {
        true
    }

    fn delta(&self, part: usize) -> Result<EncodedDelta> {
        lock_unpoisoned(&self.parts[part]).encode_delta()
    }

    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()> {
        let entries: Vec<(K, (S, u64))> = decode_chain(chain, "keyed state")?;
        lock_unpoisoned(&self.parts[part]).replace(entries, "keyed state")
    }

    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()> {
        let share: Vec<(K, (S, u64))> = keyed_share(olds, part, partitions, "keyed state")?;
        lock_unpoisoned(&self.parts[part]).replace(share, "keyed state")
    }
}

struct Emitted<K, V, S, U> {
    state: Arc<MapState<K, V, S, U>>,
}

impl<K: Key, V: Data, S: Data, U: Data> Compute<U> for Emitted<K, V, S, U> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<U>> {
        let slot = lock_unpoisoned(&self.state.emitted[part]);
        // Copied, not taken: a batch run again on a partition that already has it (see
        // `Executor::run_stage`) reads the same records without recomputing them.
        Ok(if slot.0 == cx.batch.index {
            slot.1.clone()
        } else {
            Vec::new()
        })
    }
}

struct Snapshots<K, V, S, U> {
    state: Arc<MapState<K, V, S, U>>,
}

impl<K: Key, V: Data, S: Data, U: Data> Compute<(K, S)> for Snapshots<K, V, S, U> {
    fn compute(&self, _cx: &BatchContext, part: usize) -> Result<Vec<(K, S)>> {
        let state = lock_unpoisoned(&self.state.parts[part]);
        Ok(state
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect())
    }
}

/// The result of `map_with_state`: what the function emitted, and the state itself.
pub struct MapWithState<U, K, S> {
    /// What the function returned, per batch.
    pub emitted: DStream<U>,
    /// Every key's state after each batch.
    pub snapshots: DStream<(K, S)>,
}

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Runs `spec`'s function for every record with its key's state.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource, dstream::StateSpec};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("clicks");
    /// q.push(vec![("ann".to_string(), 1), ("ann".to_string(), 1)]);
    /// let spec = StateSpec::function(|_, user: &String, click: Option<i64>, seen: &mut sluice::dstream::State<i64>| {
    ///     if seen.is_timing_out() { return Some(format!("{user} left")); }
    ///     let n = seen.get().copied().unwrap_or(0) + click.unwrap_or(0);
    ///     seen.update(n);
    ///     Some(format!("{user} {n}"))
    /// }).timeout(Duration::from_secs(2));
    /// let out = ctx.source(q).map_with_state(spec).emitted.collect_batches();
    /// ctx.build().unwrap().run_batches(3).unwrap();
    /// let got: Vec<Vec<String>> = out.take().into_iter().map(|(_, r)| r).collect();
    /// assert_eq!(got, vec![vec!["ann 1".to_string(), "ann 2".to_string()], vec![], vec!["ann left".to_string()]]);
    /// ```
    pub fn map_with_state<S: Data, U: Data>(
        &self,
        spec: StateSpec<K, V, S, U>,
    ) -> MapWithState<U, K, S> {
        let op = "mapWithState";
        let shuffle = shuffle_by_key(self, op, |_, pairs, map: &mut KeyMap<K, Vec<V>>| {
            for (k, v) in pairs {
                map.entry(k).or_default().push(v);
            }
            Ok(())
        });
        let interval = self.ctx.interval_ms().max(1);
        let state = Arc::new(MapState {
            shuffle,
            func: spec.func,
            timeout_batches: spec
                .timeout
                .map(|t| (t.as_millis() as u64).div_ceil(interval).max(1)),
            parts: (0..self.ctx.partitions())
                .map(|_| Mutex::new(Tracked::default()))
                .collect(),
            timers: spec
                .timers
                .then(|| Arc::new(Timers::new(self.ctx.partitions()))),
            emitted: (0..self.ctx.partitions())
                .map(|_| Mutex::new((0, Vec::new())))
                .collect(),
        });
        let name = self.state_name(op);
        self.ctx.add_stateful(name.clone(), state.clone());
        if let Some(timers) = &state.timers {
            self.ctx
                .add_stateful(format!("{name}-timers"), timers.clone());
        }
        let m = self.ctx.add_materializer(
            op,
            self.slide_ms,
            vec![Dep::Shuffle(shuffle)],
            state.clone(),
        );
        MapWithState {
            emitted: self.ctx.add_node(
                op,
                self.slide_ms,
                vec![Dep::Materialized(m)],
                Arc::new(Emitted {
                    state: state.clone(),
                }),
            ),
            snapshots: self.ctx.add_node(
                "stateSnapshots",
                self.slide_ms,
                vec![Dep::Materialized(m)],
                Arc::new(Snapshots { state }),
            ),
        }
    }
}
