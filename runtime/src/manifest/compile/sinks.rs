//! Sinks: where a manifest's results go.

use sluice_crds::{KafkaDelivery, OutputFormat, SinkKind, SinkSpec, defaults};

use super::{Compiler, Sel, Stream, kafka_client, local_path, per_record, text_format};
use crate::exec::BatchContext;
use crate::kafka::{Delivery, KafkaMessage, KafkaSink};
use crate::manifest::value::Value;
use crate::sink::{FilesSink, PostgresSink, PostgresTarget, StdoutSink, ToText};

/// librdkafka's default `message.max.bytes`: a larger message fails its whole transaction, so
/// it is refused on its own first.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// A key or value as message text: text as it is, anything else as the sink's format says.
fn key_text(v: &Value) -> String {
    let mut out = String::new();
    v.write_text(&mut out);
    out
}

impl Compiler {
    pub(super) fn sink(&mut self, path: &str, stream: &Stream, sink: &SinkSpec) {
        let Some(kind) = sink.kind() else {
            self.problem(
                path,
                format!("set exactly one of {}", SinkKind::NAMES.join(", ")),
            );
            return;
        };
        match kind {
            SinkKind::Kafka(k) => self.kafka_sink(path, stream, k),
            SinkKind::Postgres(pg) => self.postgres_sink(path, stream, pg),
            SinkKind::Stdout(out) => {
                let limit = out.limit.unwrap_or(defaults::STDOUT_LIMIT) as usize;
                let (records, pairs) = text_format(OutputFormat::Text);
                match stream {
                    Stream::Records(s) => s.output(StdoutSink::new(limit, records)),
                    Stream::Keyed(s) => s.output(StdoutSink::new(limit, pairs)),
                }
            }
            SinkKind::S3(s3) => {
                let settings = sluice_storage::S3Settings {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    path_style: s3.path_style.unwrap_or(false),
                    credentials: None,
                };
                let (records, pairs) = text_format(s3.format.unwrap_or_default());
                match stream {
                    Stream::Records(s) => {
                        s.output(crate::sink::S3Sink::new(&s3.uri, settings, records))
                    }
                    Stream::Keyed(s) => {
                        s.output(crate::sink::S3Sink::new(&s3.uri, settings, pairs))
                    }
                }
            }
            SinkKind::Files(files) => {
                let dir = local_path(&files.path).to_string();
                let prefix = files
                    .prefix
                    .clone()
                    .unwrap_or_else(|| defaults::FILES_PREFIX.to_string());
                let (records, pairs) = text_format(files.format.unwrap_or_default());
                match stream {
                    Stream::Records(s) => s.output(FilesSink::new(&dir, &prefix, records)),
                    Stream::Keyed(s) => s.output(FilesSink::new(&dir, &prefix, pairs)),
                }
            }
        }
    }
}

/// What fills a column of a PostgreSQL sink's rows.
enum ColumnSource {
    /// A keyed stream's key.
    Key,
    /// A keyed stream's value, or a plain record.
    Value,
    Selected(Sel),
    /// The batch's time, as [`batch_time`] writes it.
    BatchTime,
}

impl ColumnSource {
    fn record(
        &self,
        root: &cel::Context<'_, '_>,
        r: &Value,
        time: &Value,
    ) -> Result<Value, String> {
        match self {
            ColumnSource::Key | ColumnSource::Value => Ok(r.clone()),
            ColumnSource::Selected(sel) => sel.record(root, r),
            ColumnSource::BatchTime => Ok(time.clone()),
        }
    }

    fn pair(
        &self,
        root: &cel::Context<'_, '_>,
        k: &Value,
        v: &Value,
        time: &Value,
    ) -> Result<Value, String> {
        match self {
            ColumnSource::Key => Ok(k.clone()),
            ColumnSource::Value => Ok(v.clone()),
            ColumnSource::Selected(sel) => sel.pair(root, k, v),
            ColumnSource::BatchTime => Ok(time.clone()),
        }
    }
}

/// The batch's time as RFC 3339 text in UTC with milliseconds, which PostgreSQL casts to
/// `timestamptz` and `timestamp` alike.
fn batch_time(cx: &BatchContext) -> Value {
    Value::Str(cx.batch.display_time().into())
}

impl Compiler {
    fn postgres_sink(&mut self, path: &str, stream: &Stream, pg: &sluice_crds::PostgresSink) {
        let Ok(url) = sluice_crds::postgres::parse_url(&pg.url) else {
            // Validation has named the problem.
            return;
        };
        let keyed = matches!(stream, Stream::Keyed(_));
        let mut columns: Vec<(String, ColumnSource)> = Vec::new();
        if pg.columns.is_empty() {
            if keyed {
                columns.push(("key".into(), ColumnSource::Key));
            }
            columns.push(("value".into(), ColumnSource::Value));
        }
        for (i, column) in pg.columns.iter().enumerate() {
            if column.batch_time == Some(true) {
                columns.push((column.name.clone(), ColumnSource::BatchTime));
                continue;
            }
            let selector = sluice_crds::Selector {
                field: match (&column.field, &column.expr) {
                    (None, None) => Some(column.name.clone()),
                    (field, _) => field.clone(),
                },
                expr: column.expr.clone(),
            };
            if let Some(sel) = self.selector(&format!("{path}.postgres.columns[{i}]"), &selector) {
                columns.push((column.name.clone(), ColumnSource::Selected(sel)));
            }
        }
        for (i, key) in pg.key.iter().enumerate() {
            if pg.columns.is_empty() && !columns.iter().any(|(n, _)| n == key) {
                let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                self.problem(
                    format!("{path}.postgres.key[{i}]"),
                    format!(
                        "{key:?} is not a column written (without columns: {}); add columns",
                        names.join(", ")
                    ),
                );
            }
        }
        let (schema, table) = sluice_crds::postgres::split_table(&pg.table);
        let target = PostgresTarget {
            url,
            schema: schema.map(String::from),
            table: table.to_string(),
            columns: columns.iter().map(|(n, _)| n.clone()).collect(),
            key: pg.key.clone(),
            sink_id: format!(
                "sluice.{}.{}.{}",
                self.namespace.as_deref().unwrap_or("default"),
                self.job_name,
                pg.table
            ),
        };
        let sources: Vec<ColumnSource> = columns.into_iter().map(|(_, s)| s).collect();
        let op = format!("{path}.postgres");
        let rows = match stream {
            Stream::Records(s) => {
                let op2 = op.clone();
                s.map_partitions(&op, move |cx, recs| {
                    let time = batch_time(cx);
                    per_record(cx, &op2, recs, |root, r: Value, out| {
                        let row = sources
                            .iter()
                            .map(|c| c.record(root, &r, &time))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.push(row);
                        Ok(())
                    })
                })
            }
            Stream::Keyed(s) => {
                let op2 = op.clone();
                s.map_partitions(&op, move |cx, recs| {
                    let time = batch_time(cx);
                    per_record(cx, &op2, recs, |root, (k, v): (Value, Value), out| {
                        let row = sources
                            .iter()
                            .map(|c| c.pair(root, &k, &v, &time))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.push(row);
                        Ok(())
                    })
                })
            }
        };
        rows.output(PostgresSink::new(target));
    }

    fn kafka_sink(&mut self, path: &str, stream: &Stream, k: &sluice_crds::KafkaSink) {
        let key = match &k.key {
            Some(sel) => self.selector(&format!("{path}.kafka.key"), sel),
            None => None,
        };
        let (records, _) = text_format(k.format.unwrap_or_default());
        let limit = k
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let op = format!("{path}.kafka");
        let check = move |m: KafkaMessage| -> Result<KafkaMessage, String> {
            let size = m.value.len() + m.key.as_ref().map_or(0, String::len);
            if size > limit {
                return Err(format!(
                    "a message of {size} bytes, over message.max.bytes ({limit})"
                ));
            }
            Ok(m)
        };
        let messages = match stream {
            Stream::Records(s) => {
                let op2 = op.clone();
                s.map_partitions(&op, move |cx, recs| {
                    per_record(cx, &op2, recs, |root, r: Value, out| {
                        let key = match &key {
                            Some(sel) => Some(key_text(&sel.record(root, &r)?)),
                            None => None,
                        };
                        let mut value = String::new();
                        records(&r, &mut value);
                        out.push(check(KafkaMessage { key, value })?);
                        Ok(())
                    })
                })
            }
            Stream::Keyed(s) => {
                let op2 = op.clone();
                let format = k.format.unwrap_or_default();
                s.map_partitions(&op, move |cx, recs| {
                    per_record(cx, &op2, recs, |root, (k, v): (Value, Value), out| {
                        let key = match &key {
                            Some(sel) => key_text(&sel.pair(root, &k, &v)?),
                            None => key_text(&k),
                        };
                        let mut value = String::new();
                        match format {
                            OutputFormat::Text => v.write_text(&mut value),
                            OutputFormat::Json => value.push_str(&v.to_json().to_string()),
                        }
                        out.push(check(KafkaMessage {
                            key: Some(key),
                            value,
                        })?);
                        Ok(())
                    })
                })
            }
        };
        let delivery = match k.delivery.unwrap_or_default() {
            KafkaDelivery::ExactlyOnce => Delivery::ExactlyOnce,
            KafkaDelivery::AtLeastOnce => Delivery::AtLeastOnce,
        };
        let prefix = format!(
            "sluice.{}.{}.{}",
            self.namespace.as_deref().unwrap_or("default"),
            self.job_name,
            k.topic
        );
        messages.output(KafkaSink::new(
            kafka_client(&k.bootstrap_servers, &k.properties),
            &k.topic,
            &prefix,
            delivery,
        ));
    }
}
