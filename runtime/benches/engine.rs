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
    let path = vec!["user".to_string()];
    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cel_filter", |b| {
        b.iter(|| cel_filter.eval_record(&root, black_box(&record)))
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

criterion_group!(benches, per_record, wordcount_batch);
criterion_main!(benches);
