//! Hostile input, by property testing: manifest text, CEL expressions and checkpoint files.
//! Whatever the input, the answer is a result or an error: never a panic, an abort (a stack
//! overflow aborts the whole test binary) or a hang.
//!
//! A short run is part of `scripts/test`; `PROPTEST_CASES=5000 cargo test -p sluice-runtime
//! --test fuzz` runs longer (CONTRIBUTING.md).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use sluice::checkpoint::LocalStore;
use sluice::local::{LocalOptions, run};
use sluice::manifest::{CompileOptions, Expr, Value, compile, root_context};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const EXAMPLES: [&str; 4] = [
    include_str!("../../examples/wordcount.yaml"),
    include_str!("../../examples/hashtags.yaml"),
    include_str!("../../examples/user-totals.yaml"),
    include_str!("../../examples/spam-filter.yaml"),
];

/// Fragments that YAML, serde and our validation treat specially.
const TOKENS: [&str; 24] = [
    ":",
    "{",
    "}",
    "[",
    "]",
    "- ",
    "'",
    "\"",
    "\n",
    "  ",
    "#",
    "&a ",
    "*a",
    "!!binary ",
    "1e999",
    "-1",
    "99999999999999999999999",
    "null",
    "~",
    "\t",
    "\u{0}",
    "é",
    "<<: *a",
    "0x10",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1usize..60, 1usize..20).prop_map(|(at, n, k)| Edit::Repeat(at, n, k)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Edit::Insert(at, t) => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, TOKENS[t].bytes());
            }
            Edit::Repeat(at, n, k) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                let chunk: Vec<u8> = bytes[at.min(end)..end].to_vec();
                for _ in 0..k {
                    bytes.splice(end..end, chunk.iter().copied());
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(cases(96))]

    /// Any text near a real manifest is refused with problems, or compiles.
    #[test]
    fn mangled_manifests_are_refused_or_compiled(
        base in 0..EXAMPLES.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let text = apply(EXAMPLES[base], &edits);
        if let Ok(job) = sluice_crds::load(&text) {
            // A job that validates is built (a joinStatic file may be missing here: a problem).
            let _ = compile(&job, &CompileOptions { threads: 1, discard_output: true });
        }
    }
}

/// CEL source text built from its grammar, deep and wide.
fn cel() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("record".to_string()),
        Just("record.a".to_string()),
        Just("record['b']".to_string()),
        (-5i64..5).prop_map(|n| n.to_string()),
        Just("'x'".to_string()),
        Just("[1, 'a', null]".to_string()),
        Just("{'k': 1}".to_string()),
        Just("9223372036854775807".to_string()),
        Just("1.5".to_string()),
        Just("true".to_string()),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%", "==", "<", "&&", "||", "in"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("!{a}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.clone().prop_map(|a| format!("string({a})")),
            inner.clone().prop_map(|a| format!("int({a})")),
            inner
                .clone()
                .prop_map(|a| format!("[{a}].all(x, x == {a})")),
            inner
                .clone()
                .prop_map(|a| format!("[{a}, {a}].map(x, [x, x])")),
            inner.clone().prop_map(|a| format!("{a}.matches('a+')")),
            inner.prop_map(|a| format!("[{a}][0]")),
        ]
    })
}

/// Evaluates on a thread with the stack of a task thread (16 MiB), as jobs do.
fn eval(e: Expr, record: Value) {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let _ = e.eval_record(&root_context(), &record);
        })
        .expect("thread")
        .join()
        .expect("evaluation does not panic");
}

proptest! {
    #![proptest_config(cases(256))]

    /// Expressions from the grammar compile or are refused; those that compile evaluate to a
    /// value or an error.
    #[test]
    fn cel_expressions_compile_and_evaluate_without_panics(text in cel(), a in any::<i64>()) {
        if let Ok(e) = Expr::compile(&text) {
            let record = Value::from_json(serde_json::json!({"a": a, "b": [1, "x"]}));
            eval(e, record);
        }
    }

    /// Arbitrary text is refused or compiled, never more.
    #[test]
    fn arbitrary_cel_text_is_refused_or_compiled(text in "\\PC{0,200}") {
        let _ = Expr::compile(&text);
    }
}

/// A stateful job over `dir`'s checkpoint.
fn stateful_job(dir: &Path) -> (sluice::Job, sluice_crds::StreamingJob) {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: fuzz}}\nspec:\n  batchInterval: 100ms\n  parallelism: 2\n  sources: [{{name: g, generator: {{rate: 100, vocabulary: 20}}}}]\n  pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}, {{updateStateByKey: {{op: sum}}}}, {{window: {{length: 300ms}}}}]\n  sinks: [{{files: {{path: \"{}\"}}}}]\n",
        dir.join("out").display()
    );
    let manifest = sluice_crds::load(&text).expect("valid");
    let job = compile(
        &manifest,
        &CompileOptions {
            threads: 1,
            discard_output: false,
        },
    )
    .expect("compiles");
    (job, manifest)
}

/// Runs the job on the checkpoint in `dir` up to batch `until`; `Err` is the engine's error.
/// A watchdog stops a run that does not end by itself: that is the hang this test looks for.
fn run_on(dir: &Path, until: u64) -> (Result<(), String>, bool) {
    let (job, manifest) = stateful_job(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog_stop = stop.clone();
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog_finished = finished.clone();
    let watchdog = std::thread::spawn(move || {
        for _ in 0..300 {
            if watchdog_finished.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        watchdog_stop.store(true, Ordering::Relaxed);
        true
    });
    let store = LocalStore::open(dir.join("ckpt")).map(|s| Box::new(s) as Box<_>);
    let result = store.map_err(|e| e.to_string()).and_then(|store| {
        run(
            job,
            LocalOptions {
                job_name: "fuzz".into(),
                job_uid: None,
                fingerprint: sluice_crds::fingerprint(&manifest.spec),
                store: Some(store),
                writer_lock: None,
                snapshot_interval: 2,
                snapshot_every: Duration::ZERO,
                retain: 2,
                stop_after: Some(until),
                stop,
                paced: false,
                on_batch: Box::new(|_| {}),
                metrics: None,
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    finished.store(true, Ordering::Relaxed);
    let hung = watchdog.join().expect("watchdog");
    (result, hung)
}

/// A source position in the newest offset log entry that its source cannot read stops the
/// run with the damage named; it used to retry for ever (found by the property below).
#[test]
fn a_damaged_source_position_stops_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, hung) = run_on(dir.path(), 7);
    assert!(first.is_ok() && !hung, "{first:?}");
    let newest = files(&dir.path().join("ckpt/offsets"))
        .pop()
        .expect("an offset log entry");
    let text = std::fs::read_to_string(&newest).expect("read");
    assert!(text.contains("\"next\""), "{text}");
    std::fs::write(&newest, text.replace("\"next\"", "\"ne#t\"")).expect("write");
    let (second, hung) = run_on(dir.path(), 10);
    assert!(!hung, "the run did not end by itself");
    let err = second.expect_err("a damaged position stops the run");
    assert!(
        err.contains("damaged") && err.contains("position of source g"),
        "{err}"
    );
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Replace(Vec<u8>),
    Remove,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Damage::Flip(at, x)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
        Just(Damage::Remove),
    ]
}

proptest! {
    #![proptest_config(cases(24))]

    /// A checkpoint with any file damaged resumes (falling back past damaged snapshots) or
    /// stops with an error; it never panics and never retries for ever.
    #[test]
    fn damaged_checkpoint_files_resume_or_stop(
        hits in proptest::collection::vec((any::<usize>(), damage()), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, hung) = run_on(dir.path(), 7);
        prop_assert!(first.is_ok() && !hung, "{first:?}");
        let all = files(&dir.path().join("ckpt"));
        for (pick, d) in &hits {
            let path = &all[pick % all.len()];
            let bytes = std::fs::read(path).unwrap_or_default();
            match d {
                Damage::Truncate(n) => {
                    let _ = std::fs::write(path, &bytes[..n % (bytes.len() + 1)]);
                }
                Damage::Flip(at, x) => {
                    let mut b = bytes;
                    if !b.is_empty() {
                        let i = at % b.len();
                        b[i] ^= x;
                    }
                    let _ = std::fs::write(path, b);
                }
                Damage::Replace(b) => {
                    let _ = std::fs::write(path, b);
                }
                Damage::Remove => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let (_second, hung) = run_on(dir.path(), 10);
        prop_assert!(!hung, "a run on a damaged checkpoint did not end by itself");
    }
}
