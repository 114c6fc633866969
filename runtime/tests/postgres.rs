//! The PostgreSQL sink against a real PostgreSQL server (one throwaway cluster started once
//! for this test binary; each test has its own databases): rows appended and upserted exactly
//! once across SIGKILLs, TLS with the server's certificate verified, and every mistake a user
//! can make named with its fix.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::postgres::{PASSWORD, Postgres, TLS_ONLY_DATABASES};
use support::{Rng, run_until, run_with_kills};

const BATCHES: u64 = 40;

/// The tables every job here writes: each batch's running totals appended with the batch's
/// time, and upserted.
const TABLES: &str =
    "CREATE TABLE appended (word text NOT NULL, n bigint NOT NULL, at timestamptz NOT NULL);
CREATE TABLE totals (word text PRIMARY KEY, n bigint NOT NULL, half double precision, doc jsonb);";

fn database(name: &str) -> &'static Postgres {
    let pg = Postgres::shared();
    pg.create_database(name).expect("create database");
    pg.execute(name, TABLES).expect("create tables");
    pg
}

/// A running count per word into both tables (and the files sink, as a witness).
fn manifest(dir: &Path, pg: &Postgres, db: &str, url_extra: &str) -> PathBuf {
    let url = format!("{}{url_extra}", pg.url(db));
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingJob
metadata: {{name: pg}}
spec:
  batchInterval: 100ms
  parallelism: 3
  sources: [{{name: g, generator: {{rate: 5000, seed: 7, vocabulary: 200}}}}]
  pipeline:
    - flatMap: {{split: \" \"}}
    - countByValue: {{}}
    - updateStateByKey: {{op: sum}}
  sinks:
    - postgres: {{url: \"{url}\", table: appended, columns: [{{name: word, expr: key}}, {{name: n, expr: value}}, {{name: at, batchTime: true}}]}}
    - postgres:
        url: \"{url}\"
        table: public.totals
        key: [word]
        columns:
          - {{name: word, expr: key}}
          - {{name: n, expr: value}}
          - {{name: half, expr: \"double(value) / 2.0\"}}
          - {{name: doc, expr: \"{{'word': key, 'n': value}}\"}}
    - files: {{path: \"{out}\"}}
  checkpoint: {{uri: \"file://{ckpt}\", interval: 4, retain: 2}}
",
        out = dir.join("out").display(),
        ckpt = dir.join("ckpt").display(),
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The rows of `table` in `db`.
fn count(pg: &Postgres, db: &str, table: &str) -> u64 {
    let rows = pg
        .rows(db, &format!("SELECT count(*) FROM {table}"))
        .expect("count");
    rows[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

fn sluice(manifest: &Path, batches: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("run")
        .arg(manifest)
        .args(["--batches", &batches.to_string(), "--no-wait"])
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_POSTGRES_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// What a run left in its database: the appended rows as a multiset with the batch each
/// came from, counted from the run's first (a batch written twice doubles its rows' counts),
/// the upserted totals, and the marks.
fn contents(pg: &Postgres, db: &str) -> [Vec<Vec<Option<String>>>; 3] {
    let query = |sql: &str| pg.rows(db, sql).expect(sql);
    [
        query(
            "SELECT word, n, round(extract(epoch FROM at - (SELECT min(at) FROM appended)) * 10) AS batch, count(*) FROM appended GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        query("SELECT word, n, half, doc FROM totals ORDER BY word"),
        // Batch times follow the clock of each run: every mark holds the run's last batch.
        query(
            "SELECT sink, part, batch_time = (SELECT max(batch_time) FROM sluice_batches) FROM sluice_batches ORDER BY sink, part",
        ),
    ]
}

/// What a crash test compares: the tables' rows, by query.
type Tables = Vec<Vec<Vec<Option<String>>>>;

/// A job written by `job(dir, database)` run uninterrupted into database `NAME_reference`,
/// then with random SIGKILLs into `NAME_killed`: what `contents` reads from each, the
/// reference run's directory, and the kills.
fn reference_and_killed(
    name: &str,
    job: impl Fn(&Path, &str) -> PathBuf,
    contents: impl Fn(&str) -> Tables,
) -> (Tables, Tables, tempfile::TempDir, u32) {
    let mut rng = Rng::from_env(name);
    let reference = tempfile::tempdir().expect("tempdir");
    let db = format!("{name}_reference");
    let started = Instant::now();
    let out = sluice(&job(reference.path(), &db), BATCHES)
        .output()
        .expect("reference run");
    let run_ms = (started.elapsed().as_millis() as u64).max(50);
    assert!(
        out.status.success(),
        "{name}: reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = contents(&db);
    let crashed = tempfile::tempdir().expect("tempdir");
    let db = format!("{name}_killed");
    let manifest = job(crashed.path(), &db);
    let (kills, mid_run) = run_with_kills(
        name,
        &mut rng,
        || sluice(&manifest, BATCHES),
        crashed.path(),
        BATCHES,
        // From an eighth to five eighths into a whole run: the start (a connection per
        // partition and sink, TLS) is a large part of a short run, and a later run can be
        // much quicker than the reference (a CI run once finished before a kill at a quarter).
        (
            6,
            Duration::from_millis(run_ms / 8),
            Duration::from_millis(run_ms / 2),
        ),
        Duration::from_secs(240),
    );
    assert!(
        mid_run >= 1,
        "{name}: no kill landed mid-run ({kills} kills)"
    );
    let got = contents(&db);
    for (i, (want, have)) in expected.iter().zip(&got).enumerate() {
        assert!(
            want == have,
            "{name}: query {i} differs from the uninterrupted run after {kills} kills (seed {}): {} rows against {}",
            rng.seed(),
            have.len(),
            want.len()
        );
    }
    (expected, got, reference, kills)
}

#[test]
fn rows_are_appended_and_upserted_exactly_once_across_sigkills() {
    let pg = Postgres::shared();
    let (expected, _, reference, _) = reference_and_killed(
        "crash",
        |dir, db| {
            database(db);
            manifest(dir, pg, db, "")
        },
        |db| contents(pg, db).to_vec(),
    );
    let [appended, totals, marks] = [&expected[0], &expected[1], &expected[2]];
    // Every batch appends every word's total once: the multiset has each row once.
    assert!(
        appended.len() > 200 && appended.iter().all(|r| r[3].as_deref() == Some("1")),
        "the uninterrupted run appended {} distinct rows, some more than once",
        appended.len()
    );
    // The batch time column numbers the batches 0, 1, ... one interval apart.
    let batches: std::collections::BTreeSet<i64> = appended
        .iter()
        .filter_map(|r| r[2].as_deref()?.parse().ok())
        .collect();
    assert!(
        batches.iter().copied().eq(0..BATCHES as i64),
        "batch times, in intervals from the first: {batches:?}"
    );
    assert_eq!(totals.len(), 200, "one upserted row per word");
    // The upserted totals are the files sink's last batch.
    let mut files: Vec<PathBuf> = std::fs::read_dir(reference.path().join("out"))
        .expect("files output")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let last = std::fs::read_to_string(files.last().expect("a batch file")).expect("read");
    let mut from_files: Vec<(String, String)> = last
        .lines()
        .filter_map(|l| {
            let (w, n) = l.trim_matches(|c| c == '(' || c == ')').split_once(',')?;
            Some((w.to_string(), n.to_string()))
        })
        .collect();
    from_files.sort();
    let from_table: Vec<(String, String)> = totals
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        from_table, from_files,
        "the table's totals against the files sink"
    );
    let doc = totals[0][3].as_deref().unwrap_or_default();
    assert!(
        doc.contains("\"word\"") && doc.contains("\"n\""),
        "jsonb column: {doc}"
    );
    assert_eq!(marks.len(), 6, "a mark per sink and partition: {marks:?}");
    assert!(
        marks.iter().all(|m| m[2].as_deref() == Some("t")),
        "every mark holds the last batch: {marks:?}"
    );
}

/// Two sources, each a stream of word counts, fully joined per batch, appended.
fn join_manifest(dir: &Path, pg: &Postgres, db: &str) -> PathBuf {
    pg.create_database(db).expect("create database");
    pg.execute(
        db,
        "CREATE TABLE joined (word text NOT NULL, pair jsonb NOT NULL)",
    )
    .expect("table");
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: StreamingJob
metadata: {{name: pg-join}}
spec:
  batchInterval: 100ms
  parallelism: 3
  sources:
    - {{name: a, generator: {{rate: 3000, seed: 21, vocabulary: 150}}}}
    - {{name: b, generator: {{rate: 2000, seed: 22, vocabulary: 150}}}}
  streams:
    - {{name: left, from: [a], pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}]}}
    - {{name: right, from: [b], pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}]}}
    - {{name: joined, from: [left], pipeline: [{{fullOuterJoin: {{with: right}}}}]}}
  sinks:
    - from: joined
      postgres: {{url: \"{url}\", table: joined, columns: [{{name: word, expr: key}}, {{name: pair, expr: value}}]}}
  checkpoint: {{uri: \"file://{ckpt}\", interval: 4, retain: 2}}
",
        url = pg.url(db),
        ckpt = dir.join("ckpt").display(),
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

#[test]
fn a_join_of_two_sources_reaches_the_table_once_across_sigkills() {
    let pg = Postgres::shared();
    let (expected, _, _, _) = reference_and_killed(
        "join",
        |dir, db| join_manifest(dir, pg, db),
        |db| {
            vec![
                pg.rows(
                    db,
                    "SELECT word, pair::text, count(*) FROM joined GROUP BY word, pair::text ORDER BY 1, 2",
                )
                .expect("rows"),
            ]
        },
    );
    // (The same word and counts may come in two batches: the multiset, compared above,
    // is what tells a batch written twice.)
    let rows = &expected[0];
    assert!(
        rows.len() > 150,
        "the uninterrupted run wrote {} distinct rows",
        rows.len()
    );
    // A full outer join keeps words seen on one side only, with null on the other.
    assert!(
        rows.iter()
            .any(|r| r[1].as_deref().is_some_and(|p| p.contains("null"))),
        "no unmatched word in {} rows",
        rows.len()
    );
}

/// A run that must have failed saying each of `says`, leaving `rows` rows in `table` of
/// `db` (what was there before: a refused batch writes nothing, not even in part).
fn refused(
    pg: &Postgres,
    (ok, stderr): (bool, &str),
    says: &[&str],
    (db, table, rows): (&str, &str, u64),
) {
    assert!(!ok, "the job into {db}.{table} ran: {stderr}");
    for words in says {
        assert!(stderr.contains(words), "{words:?} is not in: {stderr}");
    }
    assert_eq!(
        count(pg, db, table),
        rows,
        "a refused job wrote into {db}.{table}"
    );
}

/// Runs `cmd` to its end (or `timeout`): whether it succeeded, and its stderr.
fn run_to_end(cmd: Command, timeout: Duration) -> (bool, String) {
    let (ok, _, stderr) = run_until(cmd, "", timeout);
    (ok, stderr)
}

#[test]
fn tls_verifies_the_servers_certificate_against_sslrootcert() {
    let pg = database("tls");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pg.ca_cert();
    let job = manifest(
        dir.path(),
        pg,
        "tls",
        &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let (ok, stderr) = run_to_end(sluice(&job, 5), Duration::from_secs(60));
    assert!(ok, "the job over TLS failed: {stderr}");
    // The server refuses plain connections to this database: the rows came over TLS.
    assert!(TLS_ONLY_DATABASES.contains(&"tls"));
    assert_eq!(count(pg, "tls", "totals"), 200, "rows written over TLS");
    // The control: the same job without TLS is refused, and says by what.
    let plain = tempfile::tempdir().expect("tempdir");
    let job = manifest(plain.path(), pg, "tls", "?sslmode=disable");
    let (ok, stderr) = run_to_end(sluice(&job, 5), Duration::from_secs(60));
    refused(
        pg,
        (ok, &stderr),
        &["pg_hba.conf", "sslmode=require"],
        ("tls", "totals", 200),
    );

    // `require` encrypts without checking the certificate, as libpq does.
    let encrypted = tempfile::tempdir().expect("tempdir");
    database("tls_encrypted");
    let job = manifest(encrypted.path(), pg, "tls_encrypted", "?sslmode=require");
    let (ok, stderr) = run_to_end(sluice(&job, 5), Duration::from_secs(60));
    assert!(ok, "the job with sslmode=require failed: {stderr}");

    // Asked to verify without the CA, the certificate is not trusted, and the job says how
    // to fix it.
    let untrusted = tempfile::tempdir().expect("tempdir");
    database("tls_untrusted");
    let job = manifest(untrusted.path(), pg, "tls_untrusted", "?sslmode=verify-ca");
    let (ok, stderr) = run_to_end(sluice(&job, 5), Duration::from_secs(60));
    refused(
        pg,
        (ok, &stderr),
        &["certificate is not trusted", "sslrootcert"],
        ("tls_untrusted", "totals", 0),
    );
}

#[test]
fn every_mistake_is_named_with_its_fix() {
    let pg = database("mistakes");
    let run = |sink: &str, password: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: mistakes}}\nspec:\n  batchInterval: 100ms\n  sources: [{{name: g, generator: {{rate: 100, seed: 1, vocabulary: 5}}}}]\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n  sinks:\n    - postgres: {sink}\n"
        );
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, text).expect("manifest");
        let mut cmd = sluice(&path, 3);
        cmd.env("SLUICE_POSTGRES_PASSWORD", password);
        run_to_end(cmd, Duration::from_secs(60))
    };
    let url = pg.url("mistakes");
    for (sink, password, says) in [
        (
            format!("{{url: \"{url}\", table: missing}}"),
            PASSWORD,
            "table missing does not exist",
        ),
        (
            format!(
                "{{url: \"{url}\", table: totals, columns: [{{name: word, expr: key}}, {{name: count, expr: value}}]}}"
            ),
            PASSWORD,
            "has no column \"count\" (it has word, n, half, doc)",
        ),
        (
            format!(
                "{{url: \"{url}\", table: appended, key: [word], columns: [{{name: word, expr: key}}, {{name: n, expr: value}}]}}"
            ),
            PASSWORD,
            "primary key or unique index",
        ),
        (
            format!("{{url: \"{url}\", table: totals}}"),
            "not-the-password",
            "refused the credentials",
        ),
        (
            format!("{{url: \"{url}\", table: appended}}"),
            PASSWORD,
            "has no column \"key\"",
        ),
    ] {
        let (ok, stderr) = run(&sink, password);
        assert!(!ok, "{sink}: the job ran");
        assert!(
            stderr.contains(says),
            "{sink}: wanted {says:?} in: {stderr}"
        );
        assert!(
            !stderr.contains("not-the-password"),
            "the password reached the log"
        );
    }
    // A row the table refuses stops the job, naming the table but not the value.
    pg.execute(
        "mistakes",
        "CREATE TABLE narrow (word varchar(2), n bigint)",
    )
    .expect("table");
    let (ok, stderr) = run(
        &format!(
            "{{url: \"{url}\", table: narrow, columns: [{{name: word, expr: \"key + 'xyz'\"}}, {{name: n, expr: value}}]}}"
        ),
        PASSWORD,
    );
    refused(
        pg,
        (ok, &stderr),
        &["a row does not fit table narrow", "22001"],
        ("mistakes", "narrow", 0),
    );

    // Problems the manifest shows are named before anything runs, by field, and a password
    // is never repeated.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.yaml");
    std::fs::write(
        &path,
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: bad}\nspec:\n  batchInterval: 1s\n  sources: [{name: g, generator: {rate: 1}}]\n  sinks:\n    - postgres: {url: \"postgres://app:hunter2@db/x\", table: \"a b\", key: [word]}\n",
    )
    .expect("manifest");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for field in ["spec.sinks[0].postgres.url", "spec.sinks[0].postgres.table"] {
        assert!(stderr.contains(field), "{field} is not named: {stderr}");
    }
    assert!(stderr.contains("SLUICE_POSTGRES_PASSWORD"), "{stderr}");
    // A key among no columns written is named too (the default columns are key and value).
    std::fs::write(
        &path,
        format!("apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bad}}\nspec:\n  batchInterval: 1s\n  sources: [{{name: g, generator: {{rate: 1}}}}]\n  pipeline: [{{countByValue: {{}}}}]\n  sinks:\n    - postgres: {{url: \"{url}\", table: t, key: [word]}}\n"),
    )
    .expect("manifest");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.sinks[0].postgres.key[0]: \"word\" is not a column written (without columns: key, value)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password was repeated: {stderr}"
    );
}

#[test]
fn the_documented_example_runs_as_written() {
    let pg = Postgres::shared();
    pg.create_database("shop").expect("create database");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(repo.join("docs/postgres.md")).expect("docs");
    let ddl = docs
        .split("```sql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the docs' first SQL block");
    pg.execute("shop", ddl).expect("the docs' CREATE TABLE");
    let dir = tempfile::tempdir().expect("tempdir");
    let example =
        std::fs::read_to_string(repo.join("examples/user-totals-postgres.yaml")).expect("example");
    let local_url = "postgres://sluice@localhost:5432/shop";
    let local_checkpoint = "file:///tmp/sluice/user-totals-postgres/checkpoint";
    assert!(example.contains(local_url) && example.contains(local_checkpoint));
    let path = dir.path().join("job.yaml");
    std::fs::write(
        &path,
        example.replace(local_url, &pg.url("shop")).replace(
            local_checkpoint,
            &format!("file://{}", dir.path().join("ckpt").display()),
        ),
    )
    .expect("manifest");
    let (ok, stderr) = run_to_end(sluice(&path, 3), Duration::from_secs(60));
    assert!(ok, "the example failed: {stderr}");
    let users = count(pg, "shop", "user_totals");
    assert!((1..=50).contains(&users), "{users} users' totals");
    let rows = pg
        .rows(
            "shop",
            "SELECT count(*) FROM user_totals WHERE detail->>'user' = user_id AND (detail->>'total')::float8 = total",
        )
        .expect("detail");
    assert_eq!(
        rows[0][0].as_deref(),
        Some(users.to_string().as_str()),
        "the jsonb column agrees with the others"
    );
}
