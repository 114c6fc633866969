//! A real PostgreSQL server for tests: a throwaway cluster (`initdb`) in a directory, one
//! `postgres` process on a loopback port, password authentication over TCP and TLS offered
//! with a certificate from a test CA ([`Postgres::ca_cert`]).
//!
//! Debian's `postgresql` package provides the binaries (`scripts/test` installs it); `initdb`
//! and `postgres` refuse to run as root, so as root they run as the package's `postgres` user.
//! As for the Kafka broker, a test binary shares one server ([`Postgres::shared`]) and gives
//! each test its own database, and a shell loop stops the server when the test process exits.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control_plane::free_port;
use crate::process::Process;

/// The superuser every test connects as.
pub const USER: &str = "sluice";
/// Its password (password authentication is on, so a wrong one is refused for real).
pub const PASSWORD: &str = "sluice-test-password";
/// Databases whose connections must use TLS: the server refuses plain ones (`hostnossl ...
/// reject` in pg_hba.conf), so a job that writes there used TLS.
pub const TLS_ONLY_DATABASES: [&str; 2] = ["tls", "tls_encrypted"];

/// Where PostgreSQL's programs are: `$SLUICE_POSTGRES_BIN`, or the newest version under
/// `/usr/lib/postgresql` (Debian's layout).
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("SLUICE_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): apt-get install postgresql (scripts/test does) or set SLUICE_POSTGRES_BIN"
        ),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program` and `args`, prefixed to run as the `postgres` user when this process is root.
fn as_server_user(program: &Path, args: &[String]) -> Vec<String> {
    let mut words = Vec::new();
    if is_root() {
        words.extend(["runuser", "-u", "postgres", "--"].map(String::from));
    }
    words.push(program.display().to_string());
    words.extend(args.iter().cloned());
    words
}

fn command(words: &[String]) -> Command {
    let mut c = Command::new(&words[0]);
    c.args(&words[1..]);
    c
}

/// `words` as one shell command line.
fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One running server.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    process: Option<Process>,
    /// Remove `dir` when the server ends (the shared server's own directory).
    remove_dir: bool,
}

impl Postgres {
    /// The server this test binary shares, started on first use.
    ///
    /// # Panics
    /// When the server cannot start: every test that needs it would fail anyway, and the
    /// message says how to install it.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("sluice-postgres-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Postgres::launch(&dir, true).unwrap_or_else(|e| panic!("PostgreSQL: {e:#}"))
        })
    }

    /// Creates a cluster in `dir` (once) and starts a server on a fresh loopback port.
    pub fn start(dir: &Path) -> Result<Postgres> {
        Self::launch(dir, false)
    }

    fn launch(dir: &Path, remove_dir: bool) -> Result<Postgres> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut server = Postgres {
            dir: dir.to_path_buf(),
            port: free_port()?,
            process: None,
            remove_dir,
        };
        server.init()?;
        server.resume()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `initdb` with a password-protected superuser, and a server certificate.
    fn init(&self) -> Result<()> {
        if self.data().join("PG_VERSION").exists() {
            return Ok(());
        }
        let pki = crate::pki::Pki::generate(&self.dir.join("pki"))?;
        let tls = self.dir.join("tls");
        std::fs::create_dir_all(&tls)?;
        std::fs::copy(&pki.server_cert, tls.join("server.crt"))?;
        std::fs::copy(&pki.server_key, tls.join("server.key"))?;
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD)?;
        if is_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .output()
                .context("chown the cluster's directory to postgres")?;
            if !out.status.success() {
                bail!(
                    "chown {}: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut chmod = std::fs::metadata(tls.join("server.key"))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut chmod, 0o600);
        std::fs::set_permissions(tls.join("server.key"), chmod)?;
        let initdb = bin_dir()?.join("initdb");
        let out = command(&as_server_user(
            &initdb,
            &[
                "-D".into(),
                self.data().display().to_string(),
                "-U".into(),
                USER.into(),
                format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256".into(),
                "--auth-local=trust".into(),
                "--no-sync".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
            ],
        ))
        .output()
        .with_context(|| format!("run {}", initdb.display()))?;
        if !out.status.success() {
            bail!(
                "initdb: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The first matching rule wins: the TLS-only rule goes before initdb's.
        let hba = self.data().join("pg_hba.conf");
        let rules =
            std::fs::read_to_string(&hba).with_context(|| format!("read {}", hba.display()))?;
        std::fs::write(
            &hba,
            format!(
                "hostnossl {} all all reject\n{rules}",
                TLS_ONLY_DATABASES.join(",")
            ),
        )
        .with_context(|| format!("write {}", hba.display()))?;
        Ok(())
    }

    /// Starts the server again on the same port and data, and waits until it takes
    /// connections.
    pub fn resume(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let postgres = bin_dir()?.join("postgres");
        let tls = self.dir.join("tls");
        // Durability is not under test (the server is never killed mid-write), speed is.
        let args: Vec<String> = [
            "-D",
            &self.data().display().to_string(),
            "-p",
            &self.port.to_string(),
            "-k",
            &self.dir.display().to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "ssl=on",
            "-c",
            &format!("ssl_cert_file={}", tls.join("server.crt").display()),
            "-c",
            &format!("ssl_key_file={}", tls.join("server.key").display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = shell_line(&as_server_user(&postgres, &args));
        let cleanup = if self.remove_dir {
            format!("wait $server; rm -rf '{}'", self.dir.display())
        } else {
            "wait $server".to_string()
        };
        // SIGQUIT is the server's immediate shutdown; the loop outlives neither the server
        // nor the test process that started it. The signal goes to the postmaster itself (its
        // pid file's first line) too: `runuser`, between the shell and the server as root,
        // does not pass SIGQUIT on, and waiting for it kept the server (and its directory)
        // running for good.
        let script = format!(
            "{server} &\n\
             server=$!\n\
             trap 'kill -QUIT $(head -n 1 {pid_file} 2>/dev/null) $server 2>/dev/null; {cleanup}' EXIT TERM\n\
             while kill -0 {owner} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done\n",
            owner = std::process::id(),
            pid_file = shell_line(&[self.dir.join("data/postmaster.pid").display().to_string()]),
        );
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(script);
        let process = Process::spawn("postgres", shell, &self.dir.join("server.log"))?;
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.execute("postgres", "SELECT 1").is_ok()
            {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut()
                && p.exited().is_some()
            {
                bail!("PostgreSQL exited: {}", p.tail(30));
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not take connections within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (the data stays).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// `postgres://sluice@127.0.0.1:PORT/DATABASE`: no password (jobs take it from
    /// `SLUICE_POSTGRES_PASSWORD`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The CA that signed the server's certificate (for 127.0.0.1 and localhost).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// A new, empty database.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""))
    }

    /// Runs `sql` (one or more statements) in `database`.
    pub fn execute(&self, database: &str, sql: &str) -> Result<()> {
        self.with_client(database, async |client| {
            client.batch_execute(sql).await?;
            Ok(())
        })
    }

    /// The rows of `sql` in `database`, every value as text (`None` for NULL).
    pub fn rows(&self, database: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.with_client(database, async |client| {
            let mut rows = Vec::new();
            for message in client.simple_query(sql).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    );
                }
            }
            Ok(rows)
        })
    }

    fn with_client<T>(
        &self,
        database: &str,
        work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T>,
    ) -> Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            // Over the Unix socket (trusted, TLS-only rules do not apply): the harness reaches
            // every database, whatever a test asks of TCP clients.
            let (client, connection) = tokio_postgres::Config::new()
                .host_path(&self.dir)
                .port(self.port)
                .user(USER)
                .password(PASSWORD)
                .dbname(database)
                .connect(tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!("connect to PostgreSQL at {} (socket)", self.dir.display())
                })?;
            let connection = tokio::spawn(connection);
            let result = work(&client).await;
            drop(client);
            let _ = connection.await;
            result
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
