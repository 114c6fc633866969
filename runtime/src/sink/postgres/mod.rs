//! The PostgreSQL sink: rows appended to a table, or upserted by key. Exactly once: each
//! batch's partition is one transaction that writes its rows and moves the partition's *mark*
//! (a row of the table `sluice_batches`: sink, partition, newest batch time written) on. The
//! transaction locks the mark first, so a batch run again after a failure — or by a worker
//! left over from before a failover — finds its batch written and writes nothing.
//!
//! Values reach the server as text cast to each column's type, so a manifest's numbers,
//! text, bools and JSON fit `bigint`, `numeric`, `text`, `timestamptz`, `jsonb` and the rest
//! without a type map here; a value the type cannot read fails the batch with the column's
//! error.

mod connect;
mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use indexmap::IndexMap;
use sluice_crds::postgres::{PostgresUrl, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use sql::Column;

use super::Sink;
use crate::error::{Error, Result};
use crate::exec::lock_unpoisoned;
use crate::manifest::Value;
use crate::time::BatchInfo;

/// Rows per statement: a partition's rows go in several statements of one transaction, so a
/// large batch never makes one huge message.
const ROWS_PER_STATEMENT: usize = 10_000;

/// Where and what a sink writes.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    pub url: PostgresUrl,
    pub schema: Option<String>,
    pub table: String,
    /// The columns of each row, in order.
    pub columns: Vec<String>,
    /// Upsert on these columns; none: append.
    pub key: Vec<String>,
    /// Marks are kept under it: the same across restarts, different between jobs and sinks.
    pub sink_id: String,
}

impl PostgresTarget {
    fn table_sql(&self) -> String {
        sql::qualified(self.schema.as_deref(), &self.table)
    }

    /// The table as the manifest names it, for messages.
    fn table_name(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

/// An open connection and what it has prepared.
struct Writer {
    client: Client,
    /// The target table's columns, in the order of the rows.
    columns: Vec<Column>,
    /// The rows' positions of the key columns.
    key_positions: Vec<usize>,
    insert: Statement,
    ensure_mark: Statement,
    lock_mark: Statement,
    advance_mark: Statement,
}

/// Writes rows ([`Value`]s in the order of [`PostgresTarget::columns`]) to a table.
pub struct PostgresSink {
    target: Arc<PostgresTarget>,
    /// Made on the first write, so validating a manifest makes no thread and no connection.
    runtime: OnceLock<tokio::runtime::Runtime>,
    /// One connection per partition, so partitions commit independently and at once.
    writers: Mutex<HashMap<usize, Arc<tokio::sync::Mutex<Option<Writer>>>>>,
}

impl PostgresSink {
    pub fn new(target: PostgresTarget) -> Self {
        Self {
            target: Arc::new(target),
            runtime: OnceLock::new(),
            writers: Mutex::new(HashMap::new()),
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the PostgreSQL client: {e}")))?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    fn error(&self, what: &str, e: &tokio_postgres::Error) -> Error {
        connect::classify(&self.target.url, &self.target.table_name(), what, e)
    }

    /// Connects, reads the table's columns, makes the marks table when missing, and
    /// prepares the statements.
    async fn open(&self) -> Result<Writer> {
        let t = &self.target;
        let config = connect::config(&t.url)?;
        let what = "cannot connect";
        let client = if t.url.ssl_mode == SslMode::Disable {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| self.error(what, &e))?;
            tokio::spawn(watch(connection, t.clone()));
            client
        } else {
            let (client, connection) = config
                .connect(connect::tls(&t.url)?)
                .await
                .map_err(|e| self.error(what, &e))?;
            tokio::spawn(watch(connection, t.clone()));
            client
        };
        let table = t.table_sql();
        let found = client
            .query(sql::TABLE_COLUMNS, &[&table])
            .await
            .map_err(|e| self.error("cannot read the table's columns", &e))?;
        if found.is_empty() {
            return Err(Error::Config(format!(
                "postgres {}: table {} does not exist (or the user may not see it); create it before the job starts",
                connect::describe(&t.url),
                t.table_name()
            )));
        }
        let table_columns: Vec<(String, String, String)> = found
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut columns = Vec::with_capacity(t.columns.len());
        for name in &t.columns {
            let Some((_, base_type, type_name)) = table_columns.iter().find(|(n, _, _)| n == name)
            else {
                let names: Vec<&str> = table_columns.iter().map(|(n, _, _)| n.as_str()).collect();
                return Err(Error::Config(format!(
                    "postgres {}: table {} has no column {name:?} (it has {}); add the column or name another in the sink's columns",
                    connect::describe(&t.url),
                    t.table_name(),
                    names.join(", ")
                )));
            };
            columns.push(Column {
                name: name.clone(),
                base_type: base_type.clone(),
                json: matches!(type_name.as_str(), "json" | "jsonb"),
            });
        }
        if let Err(e) = client
            .batch_execute(&sql::create_marks(t.schema.as_deref()))
            .await
        {
            // Two connections creating it at once: one wins, the other sees its row in the
            // catalog (as the table's, or as its row type's: "type already exists"); either
            // way the table is there.
            let raced = e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    || *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE
                    || *c == tokio_postgres::error::SqlState::DUPLICATE_OBJECT
            });
            if !raced {
                return Err(self.error("cannot create the marks table sluice_batches", &e));
            }
        }
        let prepare = async |text: &str| {
            client
                .prepare(text)
                .await
                .map_err(|e| self.error("cannot prepare the sink's statements", &e))
        };
        let marks = sql::mark_statements(t.schema.as_deref());
        let insert = prepare(&sql::insert(&table, &columns, &t.key)).await?;
        let ensure_mark = prepare(&marks.ensure).await?;
        let lock_mark = prepare(&marks.lock).await?;
        let advance_mark = prepare(&marks.advance).await?;
        let key_positions = t
            .key
            .iter()
            .filter_map(|k| t.columns.iter().position(|c| c == k))
            .collect();
        tracing::debug!(sink = %t.sink_id, table = %t.table_name(), "PostgreSQL sink connected");
        Ok(Writer {
            client,
            columns,
            key_positions,
            insert,
            ensure_mark,
            lock_mark,
            advance_mark,
        })
    }

    /// The rows as the insert statement takes them, one text array per column; for an
    /// upsert, one row per key (the batch's last), since one statement may not change a row
    /// twice.
    fn column_arrays(
        columns: &[Column],
        key_positions: &[usize],
        rows: &[Vec<Value>],
    ) -> Vec<Vec<Option<String>>> {
        let texts = rows.iter().map(|row| {
            row.iter()
                .zip(columns)
                .map(|(v, c)| sql::column_text(v, c.json))
                .collect::<Vec<_>>()
        });
        let rows: Vec<Vec<Option<String>>> = if key_positions.is_empty() {
            texts.collect()
        } else {
            let mut by_key: IndexMap<Vec<Option<String>>, Vec<Option<String>>> = IndexMap::new();
            for row in texts {
                let key = key_positions
                    .iter()
                    .map(|&i| row.get(i).cloned().flatten())
                    .collect();
                by_key.insert(key, row);
            }
            by_key.into_values().collect()
        };
        let mut arrays = vec![Vec::with_capacity(rows.len()); columns.len()];
        for row in rows {
            for (array, value) in arrays.iter_mut().zip(row) {
                array.push(value);
            }
        }
        arrays
    }

    /// One partition's transaction; false when the table already holds the batch.
    async fn write_transaction(
        &self,
        writer: &mut Writer,
        time: i64,
        part: i32,
        rows: &[Vec<Value>],
    ) -> Result<bool> {
        let sink = self.target.sink_id.as_str();
        let tx = writer
            .client
            .transaction()
            .await
            .map_err(|e| self.error("cannot begin a transaction", &e))?;
        tx.execute(&writer.ensure_mark, &[&sink, &part])
            .await
            .map_err(|e| self.error("cannot mark the batch", &e))?;
        let written: i64 = tx
            .query_one(&writer.lock_mark, &[&sink, &part])
            .await
            .map_err(|e| self.error("cannot read the batch's mark", &e))?
            .get(0);
        if written >= time {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
        let arrays = Self::column_arrays(&writer.columns, &writer.key_positions, rows);
        let count = arrays.first().map_or(0, Vec::len);
        for start in (0..count).step_by(ROWS_PER_STATEMENT) {
            let end = (start + ROWS_PER_STATEMENT).min(count);
            let slices: Vec<&[Option<String>]> = arrays.iter().map(|a| &a[start..end]).collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                slices.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
            tx.execute(&writer.insert, &params)
                .await
                .map_err(|e| self.error("cannot write the rows", &e))?;
        }
        tx.execute(&writer.advance_mark, &[&sink, &part, &time])
            .await
            .map_err(|e| self.error("cannot mark the batch", &e))?;
        tx.commit()
            .await
            .map_err(|e| self.error("cannot commit the batch", &e))?;
        Ok(true)
    }

    async fn write_part(&self, batch: &BatchInfo, part: usize, rows: &[Vec<Value>]) -> Result<()> {
        // Nothing to write, nothing to mark: a run again writes nothing either.
        if rows.is_empty() {
            return Ok(());
        }
        let slot = lock_unpoisoned(&self.writers)
            .entry(part)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = Some(self.open().await?);
        }
        let Some(writer) = slot.as_mut() else {
            return Err(Error::Internal("the partition's writer is missing".into()));
        };
        let time = i64::try_from(batch.time_ms).unwrap_or(i64::MAX);
        let part_number = i32::try_from(part).unwrap_or(i32::MAX);
        match self
            .write_transaction(writer, time, part_number, rows)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(table = %self.target.table_name(), partition = part, batch = batch.index, "the table already holds this batch; not writing it again");
                Ok(())
            }
            Err(e) => {
                // The connection may be broken or mid-transaction: the next attempt opens
                // a new one (and learns from the mark whether this batch made it after all).
                *slot = None;
                Err(e)
            }
        }
    }
}

/// Drives a connection until it closes; a connection lost between batches is reported by
/// the next write's error.
async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>, target: Arc<PostgresTarget>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(table = %target.table_name(), error = %e, "PostgreSQL connection closed");
    }
}

impl Sink<Vec<Value>> for PostgresSink {
    fn name(&self) -> &str {
        "postgres"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<Vec<Value>>) -> Result<()> {
        self.write_partitions(batch, vec![(0, records)], true)
    }

    fn write_partitions(
        &self,
        batch: &BatchInfo,
        parts: Vec<(usize, Vec<Vec<Value>>)>,
        _whole: bool,
    ) -> Result<()> {
        let runtime = self.runtime()?;
        runtime.block_on(async {
            let writes = parts
                .iter()
                .map(|(part, rows)| self.write_part(batch, *part, rows));
            let outcomes = futures::future::join_all(writes).await;
            outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
        })
    }
}
