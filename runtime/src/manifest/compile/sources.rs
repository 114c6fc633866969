//! Sources: where a manifest's records come from.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_crds::kafka::{Starting, parse_starting_offsets};
use sluice_crds::{SourceKind, SourceSpec, defaults};

use super::{Compiler, kafka_client, local_path};
use crate::dstream::DStream;
use crate::kafka::{KafkaRecord, KafkaSource, StartingOffsets};
use crate::manifest::value::Value;
use crate::source::{FilesSource, GeneratorConfig, GeneratorSource, QueueSource, SocketSource};

impl Compiler {
    pub(super) fn source(&mut self, path: &str, s: &SourceSpec) -> DStream<Value> {
        let Some(kind) = s.kind() else {
            self.problem(
                path,
                format!("set exactly one of {}", SourceKind::NAMES.join(", ")),
            );
            // An empty queue keeps the graph well formed, so later steps are checked too.
            return self.ctx.source(QueueSource::new(&s.name)).map(Value::Str);
        };
        let lines = match kind {
            SourceKind::Kafka(k) => return self.kafka(&s.name, k),
            SourceKind::Generator(g) => self.ctx.source(GeneratorSource::new(GeneratorConfig {
                name: s.name.clone(),
                rate: g.rate,
                seed: g.seed.unwrap_or(defaults::GENERATOR_SEED),
                format: g.format.unwrap_or_default(),
                vocabulary: g.vocabulary.unwrap_or(defaults::GENERATOR_VOCABULARY),
                line_bytes: g.line_bytes.unwrap_or(defaults::GENERATOR_LINE_BYTES),
            })),
            SourceKind::Files(f) => {
                let remember = match &f.remember_for {
                    None => Duration::from_secs(defaults::FILES_REMEMBER_FOR_SECONDS),
                    Some(text) => {
                        let field = format!("{path}.files.rememberFor");
                        let d = self.duration(&field, Some(text));
                        if d.is_zero() {
                            self.problem(
                                field,
                                "must be longer than 0s: it covers files that land while a batch is planned",
                            );
                        }
                        d
                    }
                };
                self.ctx.source(
                    FilesSource::new(&s.name, local_path(&f.path))
                        .remembering(remember)
                        .max_files_per_batch(f.max_files_per_batch.map(|n| n as usize)),
                )
            }
            SourceKind::Socket(sock) => self.ctx.source(SocketSource::new(
                &s.name,
                &sock.host,
                u16::try_from(sock.port).unwrap_or(0),
            )),
        };
        lines.map(Value::Str)
    }

    fn kafka(&mut self, name: &str, k: &sluice_crds::KafkaSource) -> DStream<Value> {
        let starting = match k.starting_offsets.as_deref().map(parse_starting_offsets) {
            Some(Ok(Starting::Earliest)) => StartingOffsets::Earliest,
            Some(Ok(Starting::At(ms))) => StartingOffsets::Timestamp(ms),
            _ => StartingOffsets::Latest,
        };
        let group = k.group_id.clone().unwrap_or_else(|| {
            sluice_crds::kafka::default_group_id(self.namespace.as_deref(), &self.job_name)
        });
        let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        let source = KafkaSource::new(
            name,
            kafka_client(&k.bootstrap_servers, &k.properties),
            &topics,
            &group,
        )
        .starting_at(starting)
        .max_rate_per_partition(k.max_rate_per_partition);
        let stream = self.ctx.source(source);
        if k.metadata.unwrap_or(false) {
            stream.map(with_metadata)
        } else {
            stream.map(|r: KafkaRecord| Value::Str(r.value))
        }
    }
}

/// A Kafka record as a map, for pipelines that read its key, topic, partition, offset or time.
fn with_metadata(r: KafkaRecord) -> Value {
    let mut fields = BTreeMap::new();
    fields.insert("key".to_string(), r.key.map_or(Value::Null, Value::Str));
    fields.insert("value".to_string(), Value::Str(r.value));
    fields.insert("topic".to_string(), Value::Str(r.topic.to_string()));
    fields.insert("partition".to_string(), Value::Int(i64::from(r.partition)));
    fields.insert("offset".to_string(), Value::Int(r.offset));
    fields.insert(
        "timestamp".to_string(),
        r.timestamp.map_or(Value::Null, Value::Int),
    );
    Value::Map(fields)
}
