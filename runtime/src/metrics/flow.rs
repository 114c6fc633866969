//! What the process that runs tasks (`sluice run`, each worker) moved: records and bytes per
//! source, records per sink, shuffle bytes, keyed state per stateful step, partitions owned.
//! A distributed job's figures are the sum over its workers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label: which source, sink or step a series is about. Their number is fixed by the
/// job's manifest, so cardinality stays low.
type Named = [(&'static str, String); 1];

/// One batch's figures in this process, gathered by the job after its last stage.
#[derive(Debug, Default)]
pub struct BatchFlow {
    /// Per source: its name, records read for the partitions run here, and bytes when the
    /// source knows them.
    pub sources: Vec<(String, u64, Option<u64>)>,
    /// Per sink: its label (`<index>:<kind>`) and records written.
    pub sinks: Vec<(String, u64)>,
    pub shuffle_bytes_sent: u64,
    pub shuffle_bytes_received: u64,
    /// Per stateful step: its name and the entries its partitions here hold.
    pub state_entries: Vec<(String, u64)>,
    pub partitions_owned: usize,
}

/// The series [`BatchFlow`]s feed.
pub(super) struct FlowSeries {
    source_records: Family<Named, Counter>,
    source_bytes: Family<Named, Counter>,
    sink_records: Family<Named, Counter>,
    shuffle_sent: Counter,
    shuffle_received: Counter,
    state_entries: Family<Named, Gauge>,
    state_bytes: Family<Named, Gauge>,
    partitions_owned: Gauge,
}

impl FlowSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let s = Self {
            source_records: Family::default(),
            source_bytes: Family::default(),
            sink_records: Family::default(),
            shuffle_sent: Counter::default(),
            shuffle_received: Counter::default(),
            state_entries: Family::default(),
            state_bytes: Family::default(),
            partitions_owned: Gauge::default(),
        };
        registry.register(
            "source_records",
            "Records read per source, for the partitions this process runs",
            s.source_records.clone(),
        );
        registry.register(
            "source_bytes",
            "Bytes read per source (files: lines with their ends; Kafka: keys and values)",
            s.source_bytes.clone(),
        );
        registry.register(
            "sink_records",
            "Records written per sink (label: its index in the manifest and its kind)",
            s.sink_records.clone(),
        );
        registry.register(
            "shuffle_sent_bytes",
            "Shuffle blocks sent to other workers, encoded",
            s.shuffle_sent.clone(),
        );
        registry.register(
            "shuffle_received_bytes",
            "Shuffle blocks received from other workers, encoded",
            s.shuffle_received.clone(),
        );
        registry.register(
            "state_entries",
            "Keys (window buffers: records) held per stateful step, after the newest batch",
            s.state_entries.clone(),
        );
        registry.register(
            "state_bytes",
            "Bytes of each stateful step's state in the newest snapshot written here",
            s.state_bytes.clone(),
        );
        registry.register(
            "partitions_owned",
            "Partitions this process runs",
            s.partitions_owned.clone(),
        );
        s
    }

    pub(super) fn observe(&self, flow: &BatchFlow) {
        for (name, records, bytes) in &flow.sources {
            let label = [("source", name.clone())];
            self.source_records.get_or_create(&label).inc_by(*records);
            if let Some(bytes) = bytes {
                self.source_bytes.get_or_create(&label).inc_by(*bytes);
            }
        }
        for (name, records) in &flow.sinks {
            self.sink_records
                .get_or_create(&[("sink", name.clone())])
                .inc_by(*records);
        }
        self.shuffle_sent.inc_by(flow.shuffle_bytes_sent);
        self.shuffle_received.inc_by(flow.shuffle_bytes_received);
        for (name, entries) in &flow.state_entries {
            self.state_entries
                .get_or_create(&[("step", name.clone())])
                .set(i64::try_from(*entries).unwrap_or(i64::MAX));
        }
        self.partitions_owned
            .set(i64::try_from(flow.partitions_owned).unwrap_or(i64::MAX));
    }

    pub(super) fn state_bytes(&self, step: &str, bytes: u64) {
        self.state_bytes
            .get_or_create(&[("step", step.to_string())])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
