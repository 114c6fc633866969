//! State from CEL expressions, checkpointed like the built-in aggregations:
//! `updateStateByKey` (a key's new state from its batch's values) and `mapWithState` (record
//! by record, each emitting a value or none).

use sluice_crds::{MapWithStateStep, StateStep};

use super::{Compiler, Stream};
use crate::data::KeyMap;
use crate::dstream::{DStream, StateSpec};
use crate::manifest::expr::{Expr, with_root};
use crate::manifest::value::Value;
use crate::time::BatchInfo;

impl Compiler {
    /// The state of each key: `expr` over `key`, `values` and `state`, for every key with new
    /// values or with state, each batch; `null` drops the key, and so does `timeout` batches
    /// without values. A failed evaluation is a record error of the step: the key keeps its
    /// state (or, new, gets none).
    pub(super) fn state_expr(
        &mut self,
        s: &DStream<(Value, Value)>,
        st: &StateStep,
        p: &str,
    ) -> Stream {
        let Some(text) = &st.expr else {
            return Stream::Keyed(s.clone());
        };
        let expr = match Expr::compile(text) {
            Ok(e) => e,
            Err(m) => {
                self.problem(format!("{p}.expr"), m);
                return Stream::Keyed(s.clone());
            }
        };
        let timeout_batches = self.timeout_batches(&format!("{p}.timeout"), st.timeout.as_deref());
        let op = p.to_string();
        let state = s.state_by_key(
            p,
            |_, pairs, map: &mut KeyMap<Value, Vec<Value>>| {
                for (k, v) in pairs {
                    map.entry(k).or_default().push(v);
                }
                Ok(())
            },
            |a, b| a.extend(b),
            move |cx, key, values: Option<Vec<Value>>, old: Option<(Value, u64)>| {
                let now = cx.batch.index;
                let values = values.unwrap_or_default();
                if values.is_empty()
                    && let (Some(t), Some((_, last))) = (timeout_batches, &old)
                    && last + t <= now
                {
                    return Ok(None);
                }
                let last = if values.is_empty() {
                    old.as_ref().map_or(now, |(_, last)| *last)
                } else {
                    now
                };
                let result = with_root(|root| {
                    expr.eval_state(root, key, &values, old.as_ref().map(|(s, _)| s))
                });
                match result {
                    Ok(Value::Null) => Ok(None),
                    Ok(state) => Ok(Some((state, last))),
                    Err(message) => {
                        cx.record_error(&op, message)?;
                        Ok(old)
                    }
                }
            },
        );
        Stream::Keyed(state.map_values(|(state, _)| state))
    }
}

/// What one record's `mapWithState` evaluation emits: its key and value, or the failure to
/// count as a record error downstream (the state function has no batch context).
type Emitted = (Value, Result<Value, String>);

impl Compiler {
    /// `mapWithState`: `expr` over `key`, `value` and `state` for each record, and `onTimer`
    /// over `key`, `state` and `timer` for each due timer, returning `{state, emit, timer}`; a
    /// failed evaluation leaves the state (and the timer) as it was and is counted. A timer
    /// that fired is gone by then: after a failed `onTimer` the key keeps its state, and no
    /// timer until a record sets one.
    pub(super) fn map_state_expr(
        &mut self,
        s: &DStream<(Value, Value)>,
        m: &MapWithStateStep,
        path: &str,
    ) -> Stream {
        let p = format!("{path}.mapWithState");
        let expr = self.expr(&format!("{p}.expr"), &m.expr);
        let on_timer = m
            .on_timer
            .as_ref()
            .map(|text| self.expr(&format!("{p}.onTimer"), text));
        let on_timer = match on_timer {
            None => None,
            Some(Some(on_timer)) => Some(on_timer),
            Some(None) => return Stream::Keyed(s.clone()),
        };
        let Some(expr) = expr else {
            return Stream::Keyed(s.clone());
        };
        let reads_batch =
            expr.reads("batch") || on_timer.as_ref().is_some_and(|t| t.reads("batch"));
        let has_timers = on_timer.is_some();
        let mut spec = StateSpec::function(
            move |batch: &BatchInfo,
                  key: &Value,
                  value: Option<Value>,
                  state: &mut crate::dstream::State<Value>| {
                let fired = state.fired_timer().zip(on_timer.as_ref());
                let result = with_batch(reads_batch.then_some(batch), |b| {
                    with_root(|root| match (&value, fired) {
                        (Some(value), _) => {
                            Some(expr.eval_record_state(root, key, value, state.get(), b))
                        }
                        (None, Some((at, on_timer))) => {
                            let at = Value::Int(i64::try_from(at).unwrap_or(i64::MAX));
                            Some(on_timer.eval_timer(root, key, state.get(), &at, b))
                        }
                        // A key timing out has no record: it leaves without a word.
                        (None, None) => None,
                    })
                })?;
                match apply_result(result, state, has_timers) {
                    Ok(emit) => emit.map(|out| (key.clone(), Ok(out))),
                    Err(message) => Some((key.clone(), Err(message))),
                }
            },
        );
        if has_timers {
            spec = spec.timers();
        }
        if let Some(t) = &m.timeout {
            spec = spec.timeout(self.duration(&format!("{p}.timeout"), Some(t)));
        }
        let emitted: DStream<Emitted> = s.map_with_state(spec).emitted;
        Stream::Keyed(emitted.map_partitions(&p.clone(), move |cx, records| {
            let mut out = Vec::with_capacity(records.len());
            for (key, result) in records {
                match result {
                    Ok(value) => out.push((key, value)),
                    Err(message) => cx.record_error(&p, message)?,
                }
            }
            Ok(out)
        }))
    }

    /// `text` compiled, or `None` with the problem recorded at `path`.
    fn expr(&mut self, path: &str, text: &str) -> Option<Expr> {
        match Expr::compile(text) {
            Ok(e) => Some(e),
            Err(message) => {
                self.problem(path.to_string(), message);
                None
            }
        }
    }
}

thread_local! {
    /// The `batch` value last built on this thread, by the batch's time and stream time: built
    /// once a batch and task thread, not once a record.
    static BATCH: std::cell::RefCell<Option<((u64, u64), Value)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `batch` as an expression's variable (`None`: not bound).
fn with_batch<R>(batch: Option<&BatchInfo>, f: impl FnOnce(Option<&Value>) -> R) -> R {
    let Some(batch) = batch else {
        return f(None);
    };
    BATCH.with(|cached| {
        let mut cached = cached.borrow_mut();
        let id = (batch.time_ms, batch.offset_ms());
        if cached.as_ref().is_none_or(|(at, _)| *at != id) {
            *cached = Some((id, batch_value(batch)));
        }
        f(cached.as_ref().map(|(_, value)| value))
    })
}

/// `batch` of a `mapWithState` expression.
fn batch_value(batch: &BatchInfo) -> Value {
    let ms = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    Value::Map(
        [
            ("streamTime".into(), ms(batch.offset_ms())),
            ("time".into(), ms(batch.time_ms)),
        ]
        .into_iter()
        .collect(),
    )
}

/// Applies a `mapWithState` expression's result to the key's state and timer, and returns what
/// it emits; an error (the evaluation's, or a result of the wrong form) changes nothing.
fn apply_result(
    result: Result<Value, String>,
    state: &mut crate::dstream::State<Value>,
    has_timers: bool,
) -> Result<Option<Value>, String> {
    let mut fields = match result? {
        Value::Map(fields) => fields,
        other => {
            return Err(format!(
                "mapWithState expr must return a map of state and emit, got {}",
                other.describe()
            ));
        }
    };
    match fields.remove("timer") {
        None => {}
        Some(_) if !has_timers => {
            return Err(
                "the result has a timer, and the step has no onTimer to call when it is due: \
                 add mapWithState.onTimer"
                    .to_string(),
            );
        }
        Some(Value::Null) => state.clear_timer(),
        Some(Value::Int(at)) if at >= 0 => state.set_timer(at as u64),
        Some(other) => {
            return Err(format!(
                "mapWithState timer must be milliseconds since the Unix epoch (an int of 0 or \
                 more) or null, got {}",
                other.describe()
            ));
        }
    }
    match fields.remove("state") {
        None | Some(Value::Null) => state.remove(),
        Some(next) => state.update(next),
    }
    Ok(fields.remove("emit"))
}
