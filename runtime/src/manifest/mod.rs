//! StreamingJob manifests compiled into DStreams: the dynamic [`Value`] records, CEL
//! expressions, built-in aggregations and the compiler.

mod aggregate;
mod compile;
mod expr;
mod fields;
mod table;
mod value;

pub use aggregate::Acc;
pub(crate) use compile::nexmark_record;
pub use compile::{CompileOptions, compile, local_path};
pub use expr::{Expr, root_context};
pub use value::{StrKey, Value};
