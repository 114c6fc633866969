//! State from CEL expressions, checkpointed like the built-in aggregations:
//! `updateStateByKey` (a key's new state from its batch's values) and `mapWithState` (record
//! by record, each emitting a value or none).

use sluice_crds::{MapWithStateStep, StateStep};

use super::{Compiler, Stream};
use crate::data::KeyMap;
use crate::dstream::{DStream, StateSpec};
use crate::manifest::expr::{Expr, with_root};
use crate::manifest::value::Value;

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
    /// `mapWithState`: `expr` over `key`, `value` and `state` for each record, returning
    /// `{state, emit}`; a failed evaluation leaves the state as it was and is counted.
    pub(super) fn map_state_expr(
        &mut self,
        s: &DStream<(Value, Value)>,
        m: &MapWithStateStep,
        path: &str,
    ) -> Stream {
        let p = format!("{path}.mapWithState");
        let expr = match Expr::compile(&m.expr) {
            Ok(e) => e,
            Err(message) => {
                self.problem(format!("{p}.expr"), message);
                return Stream::Keyed(s.clone());
            }
        };
        let mut spec = StateSpec::function(
            move |_,
                  key: &Value,
                  value: Option<Value>,
                  state: &mut crate::dstream::State<Value>| {
                // A key timing out has no record: it leaves without a word.
                let value = value?;
                let result =
                    with_root(|root| expr.eval_record_state(root, key, &value, state.get()));
                let fields = match result {
                    Ok(Value::Map(fields)) => fields,
                    Ok(other) => {
                        return Some((
                            key.clone(),
                            Err(format!(
                                "mapWithState expr must return a map of state and emit, got {}",
                                other.describe()
                            )),
                        ));
                    }
                    Err(message) => return Some((key.clone(), Err(message))),
                };
                let mut fields = fields;
                match fields.remove("state") {
                    None | Some(Value::Null) => state.remove(),
                    Some(next) => state.update(next),
                }
                fields.remove("emit").map(|out| (key.clone(), Ok(out)))
            },
        );
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
}
