//! `updateStateByKey` with a CEL expression: any state per key, computed from the key, the
//! batch's values and the previous state, checkpointed like the built-in aggregations.

use sluice_crds::StateStep;

use super::{Compiler, Stream};
use crate::data::KeyMap;
use crate::dstream::DStream;
use crate::manifest::expr::{Expr, root_context};
use crate::manifest::value::Value;

thread_local! {
    /// CEL's function table, made once per task thread rather than once per key.
    static ROOT: cel::Context<'static, 'static> = root_context();
}

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
                let result = ROOT
                    .with(|root| expr.eval_state(root, key, &values, old.as_ref().map(|(s, _)| s)));
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
