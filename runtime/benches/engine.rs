//! Criterion benchmarks of the hot paths: CEL against native built-ins per record, and one
//! WordCount batch through the manifest's fused counting against the typed API.
//!
//! Run: `cargo bench -p sluice-runtime --bench engine`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::manifest::{CompileOptions, Expr, Value, compile, root_context};
use sluice::source::{GeneratorConfig, GeneratorSource, TextGenerator};
use sluice::{StreamingConfig, StreamingContext};

const LINES: u64 = 10_000;

fn generator_config() -> GeneratorConfig {
    GeneratorConfig {
        name: "g".into(),
        rate: LINES,
        seed: 42,
        format: Default::default(),
        vocabulary: 10_000,
        line_bytes: 100,
    }
}

fn per_record(c: &mut Criterion) {
    let record = Value::from_json(
        serde_json::json!({"user": "user42", "action": "buy", "amount": 17, "text": "hello"}),
    );
    let root = root_context();
    let cel_filter =
        Expr::compile("record.action == 'buy' && record.amount > 10").expect("compiles");
    let cel_field = Expr::compile("record.user").expect("compiles");
    assert!(cel_filter.is_native() && cel_field.is_native());
    let path = vec!["user".to_string()];
    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cel_filter", |b| {
        b.iter(|| cel_filter.eval_record(&root, black_box(&record)))
    });
    let interpreted = cel_filter.interpreted();
    g.bench_function("cel_filter_interpreted", |b| {
        b.iter(|| interpreted.eval_record(&root, black_box(&record)))
    });
    g.bench_function("native_filter", |b| {
        b.iter(|| {
            let r = black_box(&record);
            r.field(&["action".to_string()])
                .is_ok_and(|a| a == Value::Str("buy".into()))
                && r.field(&["amount".to_string()])
                    .is_ok_and(|a| a > Value::Int(10))
        })
    });
    g.bench_function("cel_field", |b| {
        b.iter(|| cel_field.eval_record(&root, black_box(&record)))
    });
    g.bench_function("native_field", |b| {
        b.iter(|| black_box(&record).field(&path))
    });
    // A projection into a new map of four fields, as Nexmark q1 makes of each bid.
    let bid = Value::from_json(serde_json::json!({
        "type": "bid", "auction": 1000, "bidder": 1001, "price": 5948196, "channel": "Apple",
        "url": "https://www.nexmark.com/aapl/item.htm?query=1", "dateTime": 3
    }));
    let project = Expr::compile(
        "{'auction': record.auction, 'bidder': record.bidder, \
         'price': 0.908 * double(record.price), 'dateTime': record.dateTime}",
    )
    .expect("compiles");
    assert!(project.is_native());
    g.bench_function("cel_project", |b| {
        b.iter(|| project.eval_record(&root, black_box(&bid)))
    });
    g.finish();

    // A state expression's evaluation for one key and a batch of ten values, against the
    // built-in running sum's work for the same.
    let values: Vec<Value> = (1..=10).map(Value::Int).collect();
    let key = Value::Str("user42".into());
    let state = Value::Int(1000);
    let running = Expr::compile("(state == null ? 0 : state) + sum(values)").expect("compiles");
    assert!(running.is_native());
    let mut g = c.benchmark_group("per_key_batch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cel_state", |b| {
        b.iter(|| running.eval_state(&root, &key, black_box(&values), Some(&state)))
    });
    let interpreted = running.interpreted();
    g.bench_function("cel_state_interpreted", |b| {
        b.iter(|| interpreted.eval_state(&root, &key, black_box(&values), Some(&state)))
    });
    g.bench_function("native_state", |b| {
        b.iter(|| {
            black_box(&values)
                .iter()
                .try_fold(1000i64, |sum, v| match v {
                    Value::Int(i) => sum.checked_add(*i),
                    _ => None,
                })
                .map(Value::Int)
        })
    });
    g.finish();
}

fn wordcount_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("wordcount_batch_10k_lines");
    g.throughput(Throughput::Elements(LINES));
    g.measurement_time(Duration::from_secs(8));

    let generator = TextGenerator::new(generator_config());
    g.bench_function("generate_only", |b| b.iter(|| generator.lines(0, LINES, 4)));

    let manifest = "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: wc}\nspec:\n  batchInterval: 1s\n  parallelism: 4\n  sources: [{name: g, generator: {rate: 10000, seed: 42}}]\n  pipeline: [{flatMap: {split: \" \"}}, {countByValue: {}}]\n  sinks: [{stdout: {}}]\n";
    let spec = sluice_crds::load(manifest).expect("valid");
    let mut fused = compile(
        &spec,
        &CompileOptions {
            threads: 2,
            discard_output: true,
        },
    )
    .expect("compiles");
    g.bench_function("manifest_fused", |b| {
        b.iter(|| fused.run_batches(1).expect("batch"))
    });

    let ctx = StreamingContext::new(
        StreamingConfig::new(Duration::from_secs(1))
            .parallelism(4)
            .threads(2),
    );
    ctx.source(GeneratorSource::new(generator_config()))
        .flat_map(|l: String| l.split(' ').map(String::from).collect::<Vec<_>>())
        .count_by_value()
        .foreach_batch(|_, _| Ok(()));
    let mut typed = ctx.build().expect("build");
    g.bench_function("typed_api", |b| {
        b.iter(|| typed.run_batches(1).expect("batch"))
    });
    g.finish();
}

/// What the metrics add to each batch: the batch loop's update (counters, histograms, the
/// timeline) and the tasks' (sources, sinks, state), as `sluice run --metrics-addr` does once
/// per batch. Compare with `wordcount_batch_10k_lines`: a batch of 10,000 lines.
fn metrics_per_batch(c: &mut Criterion) {
    use sluice::coordinator::BatchProgress;
    use sluice::job::BatchReport;
    use sluice::metrics::{BatchFlow, Role, RuntimeMetrics};
    use sluice::time::BatchInfo;
    let mut g = c.benchmark_group("metrics_per_batch");
    let metrics = RuntimeMetrics::new("bench", "", Role::Local);
    let mut index = 0;
    g.bench_function("batch_loop_and_tasks", |b| {
        b.iter(|| {
            index += 1;
            metrics.batch(&BatchProgress {
                report: BatchReport {
                    batch: BatchInfo::new(0, 1000, index),
                    records: 10_000,
                    record_errors: 0,
                    error_samples: vec![],
                    processing: Duration::from_millis(30),
                    replay: false,
                    stages: vec![
                        ("input".into(), Duration::from_millis(5)),
                        ("shuffle 0".into(), Duration::from_millis(20)),
                        ("output 0".into(), Duration::from_millis(5)),
                    ],
                },
                scheduling_delay: Duration::from_millis(2),
                total_delay: Duration::from_millis(32),
                rate_limit: None,
                backlog: [("in".to_string(), 1200)].into(),
            });
            metrics.flow(&BatchFlow {
                sources: vec![("lines".into(), 10_000, Some(1_000_000))],
                sinks: vec![("0:files".into(), 3_000)],
                shuffle_bytes_sent: 0,
                shuffle_bytes_received: 0,
                state_entries: vec![("002-updateStateByKey".into(), 10_000)],
                partitions_owned: 4,
            });
        })
    });
    g.finish();
}

criterion_group!(benches, per_record, wordcount_batch, metrics_per_batch);
criterion_main!(benches);
