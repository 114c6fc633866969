//! Sources: where a manifest's records come from.

use std::time::Duration;

use sluice_crds::kafka::{Starting, parse_starting_offsets};
use std::sync::Arc;

use sluice_crds::{GeneratorFormat, SourceKind, SourceSpec, defaults};

use super::{Compiler, kafka_client, local_path};
use crate::dstream::DStream;
use crate::kafka::{KafkaRecord, KafkaSource, StartingOffsets};
use crate::manifest::value::{Fields, Name, Text, Value};
use crate::source::nexmark::Event;
use crate::source::{FilesSource, GeneratorConfig, GeneratorSource, QueueSource, SocketSource};

impl Compiler {
    pub(super) fn source(&mut self, path: &str, s: &SourceSpec) -> DStream<Value> {
        let Some(kind) = s.kind() else {
            self.problem(
                path,
                format!("set exactly one of {}", SourceKind::NAMES.join(", ")),
            );
            // An empty queue keeps the graph well formed, so later steps are checked too.
            return self.ctx.source(QueueSource::new(&s.name)).map(text);
        };
        let lines = match kind {
            SourceKind::Kafka(k) => return self.kafka(&s.name, k),
            SourceKind::Generator(g) => {
                let config = GeneratorConfig {
                    name: s.name.clone(),
                    rate: g.rate,
                    seed: g.seed.unwrap_or(defaults::GENERATOR_SEED),
                    format: g.format.unwrap_or_default(),
                    vocabulary: g.vocabulary.unwrap_or(defaults::GENERATOR_VOCABULARY),
                    line_bytes: g.line_bytes.unwrap_or(defaults::GENERATOR_LINE_BYTES),
                };
                if config.format == GeneratorFormat::Nexmark {
                    // Events as records: what `parseJson` would make of their JSON, without
                    // printing and parsing it (a `parseJson` step leaves them as they are).
                    return self.ctx.source(GeneratorSource::making(
                        config,
                        Arc::new(|g, index| nexmark_record(g.nexmark_event(index))),
                    ));
                }
                self.ctx.source(GeneratorSource::new(config))
            }
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
        lines.map(text)
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
            stream.map(|r: KafkaRecord| text(r.value))
        }
    }
}

/// A Kafka record as a map, for pipelines that read its key, topic, partition, offset or time.
fn with_metadata(r: KafkaRecord) -> Value {
    let mut fields = Fields::new();
    fields.insert("key".into(), r.key.map_or(Value::Null, text));
    fields.insert("value".into(), text(r.value));
    fields.insert("topic".into(), Value::Str(r.topic.as_ref().into()));
    fields.insert("partition".into(), Value::Int(i64::from(r.partition)));
    fields.insert("offset".into(), Value::Int(r.offset));
    fields.insert(
        "timestamp".into(),
        r.timestamp.map_or(Value::Null, Value::Int),
    );
    Value::Map(fields)
}

/// Text read from outside (a line, a message) as a value: kept inline when short.
fn text(s: String) -> Value {
    Value::Str(s.into())
}

/// A Nexmark event as the record its JSON parses to (see [`Event::write_json`]).
///
/// The fields are listed in the order of their names: the list becomes the record, and its
/// sort is one pass.
pub(crate) fn nexmark_record(event: Event) -> Value {
    fn fields<const N: usize>(pairs: [(&'static str, Value); N]) -> Value {
        let pairs = pairs
            .into_iter()
            .map(|(name, v)| (Name::const_new(name), v));
        Value::Map(Fields::from_pairs(pairs.collect()))
    }
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let kind = |name: &'static str| Value::Str(Text::const_new(name));
    match event {
        Event::Person(p) => fields([
            ("city", Value::Str(Text::const_new(p.city))),
            ("creditCard", text(p.credit_card)),
            ("dateTime", int(p.date_time)),
            ("emailAddress", text(p.email_address)),
            ("id", int(p.id)),
            ("name", text(p.name)),
            ("state", Value::Str(Text::const_new(p.state))),
            ("type", kind("person")),
        ]),
        Event::Auction(a) => fields([
            ("category", int(a.category)),
            ("dateTime", int(a.date_time)),
            ("description", text(a.description)),
            ("expires", int(a.expires)),
            ("id", int(a.id)),
            ("initialBid", int(a.initial_bid)),
            ("itemName", text(a.item_name)),
            ("reserve", int(a.reserve)),
            ("seller", int(a.seller)),
            ("type", kind("auction")),
        ]),
        Event::Bid(b) => fields([
            ("auction", int(b.auction)),
            ("bidder", int(b.bidder)),
            ("channel", Value::Str(b.channel)),
            ("dateTime", int(b.date_time)),
            ("price", int(b.price)),
            ("type", kind("bid")),
            ("url", Value::Str(b.url)),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as a record is what `parseJson` makes of its JSON line.
    #[test]
    fn nexmark_records_are_their_parsed_json() {
        let generator = crate::source::TextGenerator::new(GeneratorConfig {
            name: "events".into(),
            rate: 1000,
            seed: 42,
            format: GeneratorFormat::Nexmark,
            vocabulary: 1,
            line_bytes: 100,
        });
        let mut kinds = std::collections::BTreeSet::new();
        for index in 0..5_000 {
            let line = generator.line_at(index);
            let parsed = Value::parse_json(&line).expect("json");
            let record = nexmark_record(generator.nexmark_event(index));
            assert_eq!(record.to_json(), parsed.to_json(), "{line}");
            kinds.insert(record.field(&["type".into()]).expect("type"));
        }
        assert_eq!(kinds.len(), 3);
    }
}
