//! One exhaustive view of each one-of in the manifest: a source, a pipeline step and a sink
//! are written as objects with one field set (`{generator: {...}}`), and read through these
//! enums. Validation and compilation `match` them, so a new kind is a compile error at every
//! place that must handle it; the views destructure the spec structs, so a new field is one
//! here first.

use crate::spec::{
    Empty, FilesSink, FilesSource, FilterStep, FlatMapStep, GeneratorSource, JoinStep, KafkaSink,
    KafkaSource, KeyByStep, MapWithStateStep, PipelineStep, PostgresSink, ReduceStep, S3Sink,
    Selector, SinkSpec, SocketSource, SourceSpec, StateStep, StaticJoinStep, StdoutSink, TopStep,
    WindowStep, WindowedReduceStep,
};

/// What a source is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceKind<'a> {
    Socket(&'a SocketSource),
    Files(&'a FilesSource),
    Generator(&'a GeneratorSource),
    Kafka(&'a KafkaSource),
}

impl SourceKind<'_> {
    /// Every kind's field name, in order.
    pub const NAMES: [&'static str; 4] = ["socket", "files", "generator", "kafka"];

    /// The field that sets it.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Socket(_) => "socket",
            SourceKind::Files(_) => "files",
            SourceKind::Generator(_) => "generator",
            SourceKind::Kafka(_) => "kafka",
        }
    }
}

impl SourceSpec {
    /// The kinds set (exactly one when valid).
    pub fn kinds(&self) -> Vec<SourceKind<'_>> {
        let SourceSpec {
            name: _,
            socket,
            files,
            generator,
            kafka,
        } = self;
        let mut set = Vec::with_capacity(1);
        set.extend(socket.as_ref().map(SourceKind::Socket));
        set.extend(files.as_ref().map(SourceKind::Files));
        set.extend(generator.as_ref().map(SourceKind::Generator));
        set.extend(kafka.as_ref().map(SourceKind::Kafka));
        set
    }

    /// The kind, when exactly one is set.
    pub fn kind(&self) -> Option<SourceKind<'_>> {
        only(self.kinds())
    }
}

/// What a sink is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SinkKind<'a> {
    Stdout(&'a StdoutSink),
    Files(&'a FilesSink),
    S3(&'a S3Sink),
    Kafka(&'a KafkaSink),
    Postgres(&'a PostgresSink),
}

impl SinkKind<'_> {
    /// Every kind's field name, in order.
    pub const NAMES: [&'static str; 5] = ["stdout", "files", "s3", "kafka", "postgres"];

    /// The field that sets it.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Files(_) => "files",
            SinkKind::S3(_) => "s3",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::Postgres(_) => "postgres",
        }
    }
}

impl SinkSpec {
    /// The kinds set (exactly one when valid).
    pub fn kinds(&self) -> Vec<SinkKind<'_>> {
        let SinkSpec {
            from: _,
            stdout,
            files,
            s3,
            kafka,
            postgres,
        } = self;
        let mut set = Vec::with_capacity(1);
        set.extend(stdout.as_ref().map(SinkKind::Stdout));
        set.extend(files.as_ref().map(SinkKind::Files));
        set.extend(s3.as_ref().map(SinkKind::S3));
        set.extend(kafka.as_ref().map(SinkKind::Kafka));
        set.extend(postgres.as_ref().map(SinkKind::Postgres));
        set
    }

    /// The kind, when exactly one is set.
    pub fn kind(&self) -> Option<SinkKind<'_>> {
        only(self.kinds())
    }
}

/// What a pipeline step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind<'a> {
    Map(&'a Selector),
    ParseJson(&'a Empty),
    FlatMap(&'a FlatMapStep),
    Filter(&'a FilterStep),
    KeyBy(&'a KeyByStep),
    Window(&'a WindowStep),
    CountByValue(&'a Empty),
    Count(&'a Empty),
    ReduceByKey(&'a ReduceStep),
    CountByValueAndWindow(&'a WindowStep),
    ReduceByKeyAndWindow(&'a WindowedReduceStep),
    UpdateStateByKey(&'a StateStep),
    JoinStatic(&'a StaticJoinStep),
    Join(JoinKind, &'a JoinStep),
    Reduce(&'a ReduceStep),
    ReduceByWindow(&'a WindowedReduceStep),
    CountByWindow(&'a WindowStep),
    GroupByKey(&'a Empty),
    GroupByKeyAndWindow(&'a WindowStep),
    MapValues(&'a Selector),
    FlatMapValues(&'a FlatMapStep),
    MapWithState(&'a MapWithStateStep),
    Repartition(&'a Empty),
    Top(&'a TopStep),
}

/// Which of a join's unmatched values it keeps, or a cogroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    LeftOuter,
    RightOuter,
    FullOuter,
    Cogroup,
}

impl JoinKind {
    /// The step's field.
    pub fn name(self) -> &'static str {
        match self {
            JoinKind::Inner => "join",
            JoinKind::LeftOuter => "leftOuterJoin",
            JoinKind::RightOuter => "rightOuterJoin",
            JoinKind::FullOuter => "fullOuterJoin",
            JoinKind::Cogroup => "cogroup",
        }
    }
}

impl StepKind<'_> {
    /// The field that sets it.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Map(_) => "map",
            StepKind::ParseJson(_) => "parseJson",
            StepKind::FlatMap(_) => "flatMap",
            StepKind::Filter(_) => "filter",
            StepKind::KeyBy(_) => "keyBy",
            StepKind::Window(_) => "window",
            StepKind::CountByValue(_) => "countByValue",
            StepKind::Count(_) => "count",
            StepKind::ReduceByKey(_) => "reduceByKey",
            StepKind::CountByValueAndWindow(_) => "countByValueAndWindow",
            StepKind::ReduceByKeyAndWindow(_) => "reduceByKeyAndWindow",
            StepKind::UpdateStateByKey(_) => "updateStateByKey",
            StepKind::JoinStatic(_) => "joinStatic",
            StepKind::Join(kind, _) => kind.name(),
            StepKind::Reduce(_) => "reduce",
            StepKind::ReduceByWindow(_) => "reduceByWindow",
            StepKind::CountByWindow(_) => "countByWindow",
            StepKind::GroupByKey(_) => "groupByKey",
            StepKind::GroupByKeyAndWindow(_) => "groupByKeyAndWindow",
            StepKind::MapValues(_) => "mapValues",
            StepKind::FlatMapValues(_) => "flatMapValues",
            StepKind::MapWithState(_) => "mapWithState",
            StepKind::Repartition(_) => "repartition",
            StepKind::Top(_) => "top",
        }
    }
}

impl PipelineStep {
    /// The operations set (exactly one when valid).
    pub fn kinds(&self) -> Vec<StepKind<'_>> {
        let PipelineStep {
            name: _,
            map,
            parse_json,
            flat_map,
            filter,
            key_by,
            window,
            count_by_value,
            count,
            reduce_by_key,
            count_by_value_and_window,
            reduce_by_key_and_window,
            update_state_by_key,
            join_static,
            join,
            left_outer_join,
            right_outer_join,
            full_outer_join,
            cogroup,
            reduce,
            reduce_by_window,
            count_by_window,
            group_by_key,
            group_by_key_and_window,
            map_values,
            flat_map_values,
            map_with_state,
            repartition,
            top,
        } = self;
        let mut set = Vec::with_capacity(1);
        set.extend(map.as_ref().map(StepKind::Map));
        set.extend(parse_json.as_ref().map(StepKind::ParseJson));
        set.extend(flat_map.as_ref().map(StepKind::FlatMap));
        set.extend(filter.as_ref().map(StepKind::Filter));
        set.extend(key_by.as_ref().map(StepKind::KeyBy));
        set.extend(window.as_ref().map(StepKind::Window));
        set.extend(count_by_value.as_ref().map(StepKind::CountByValue));
        set.extend(count.as_ref().map(StepKind::Count));
        set.extend(reduce_by_key.as_ref().map(StepKind::ReduceByKey));
        set.extend(
            count_by_value_and_window
                .as_ref()
                .map(StepKind::CountByValueAndWindow),
        );
        set.extend(
            reduce_by_key_and_window
                .as_ref()
                .map(StepKind::ReduceByKeyAndWindow),
        );
        set.extend(update_state_by_key.as_ref().map(StepKind::UpdateStateByKey));
        set.extend(join_static.as_ref().map(StepKind::JoinStatic));
        for (kind, step) in [
            (JoinKind::Inner, join),
            (JoinKind::LeftOuter, left_outer_join),
            (JoinKind::RightOuter, right_outer_join),
            (JoinKind::FullOuter, full_outer_join),
            (JoinKind::Cogroup, cogroup),
        ] {
            set.extend(step.as_ref().map(|j| StepKind::Join(kind, j)));
        }
        set.extend(reduce.as_ref().map(StepKind::Reduce));
        set.extend(reduce_by_window.as_ref().map(StepKind::ReduceByWindow));
        set.extend(count_by_window.as_ref().map(StepKind::CountByWindow));
        set.extend(group_by_key.as_ref().map(StepKind::GroupByKey));
        set.extend(
            group_by_key_and_window
                .as_ref()
                .map(StepKind::GroupByKeyAndWindow),
        );
        set.extend(map_values.as_ref().map(StepKind::MapValues));
        set.extend(flat_map_values.as_ref().map(StepKind::FlatMapValues));
        set.extend(map_with_state.as_ref().map(StepKind::MapWithState));
        set.extend(repartition.as_ref().map(StepKind::Repartition));
        set.extend(top.as_ref().map(StepKind::Top));
        set
    }

    /// The operation, when exactly one is set.
    pub fn kind(&self) -> Option<StepKind<'_>> {
        only(self.kinds())
    }

    /// The camelCase names of the operations set in this step (exactly one when valid).
    pub fn operations(&self) -> Vec<&'static str> {
        self.kinds().iter().map(StepKind::name).collect()
    }
}

fn only<T>(mut set: Vec<T>) -> Option<T> {
    (set.len() == 1).then(|| set.pop()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_of_reads_as_its_kind_or_as_nothing() {
        let source = SourceSpec {
            name: "g".into(),
            socket: None,
            files: None,
            generator: Some(GeneratorSource {
                rate: 1,
                seed: None,
                format: None,
                vocabulary: None,
                line_bytes: None,
            }),
            kafka: None,
        };
        assert_eq!(source.kind().map(|k| k.name()), Some("generator"));
        let none = SourceSpec {
            generator: None,
            ..source.clone()
        };
        assert!(none.kind().is_none() && none.kinds().is_empty());
        let two = SourceSpec {
            files: Some(FilesSource {
                path: "/in".into(),
                remember_for: None,
                max_files_per_batch: None,
            }),
            ..source
        };
        assert!(two.kind().is_none());
        assert_eq!(
            two.kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
            ["files", "generator"]
        );
        let step = PipelineStep {
            count: Some(Empty {}),
            ..Default::default()
        };
        assert_eq!(step.operations(), ["count"]);
        assert_eq!(
            SinkSpec::default().kinds().len(),
            0,
            "a sink with nothing set"
        );
    }
}
