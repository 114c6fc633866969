//! A real Apache Kafka broker for tests: one KRaft node (broker and controller in one JVM) from
//! the jars `e2e/scripts/install-kafka.sh` caches, on loopback ports, with its data in a
//! directory that survives [`KafkaBroker::restart`].
//!
//! A JVM takes seconds to start, so a test binary shares one broker ([`KafkaBroker::shared`])
//! and gives each test its own topics; a test that stops or restarts the broker starts its own.
//! Every broker is watched by a shell loop that kills it when the test process exits, so a
//! shared broker (a `static`, never dropped) does not outlive its test binary.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::control_plane::free_port;
use crate::process::Process;

/// The Kafka version the tests run against (`install-kafka.sh` installs it).
pub const KAFKA_VERSION: &str = "4.4.0";

/// Where the broker's jars are: `$SLUICE_KAFKA_JARS`, or the cache `install-kafka.sh` fills.
pub fn jars_dir() -> Result<PathBuf> {
    let dir = match std::env::var("SLUICE_KAFKA_JARS") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::var("SLUICE_E2E_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/sluice-e2e")
            })
            .join(format!("kafka-{KAFKA_VERSION}/jars")),
    };
    if !dir.join("../.complete-v2").exists() && std::env::var("SLUICE_KAFKA_JARS").is_err() {
        bail!(
            "the Kafka broker is not installed in {}: run e2e/scripts/install-kafka.sh (scripts/test does) or set SLUICE_KAFKA_JARS",
            dir.display()
        );
    }
    Ok(dir)
}

/// One running broker.
pub struct KafkaBroker {
    pub dir: PathBuf,
    pub port: u16,
    controller_port: u16,
    process: Option<Process>,
    /// Remove `dir` when the broker's process ends (the shared broker's own directory).
    remove_dir: bool,
    /// The SCRAM-SHA-256 user (name, password) of a SASL listener; none: plaintext.
    scram: Vec<(String, String)>,
}

impl KafkaBroker {
    /// The broker this test binary shares, started on first use.
    ///
    /// # Panics
    /// When the broker cannot start: every test that needs it would fail anyway, and the
    /// message says how to install it.
    pub fn shared() -> &'static KafkaBroker {
        static SHARED: OnceLock<KafkaBroker> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("sluice-kafka-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            KafkaBroker::launch(&dir, true, Vec::new())
                .unwrap_or_else(|e| panic!("Kafka broker: {e:#}"))
        })
    }

    /// Formats `dir` (once) and starts a broker on fresh loopback ports.
    pub fn start(dir: &Path) -> Result<KafkaBroker> {
        Self::launch(dir, false, Vec::new())
    }

    /// A broker whose listener takes SASL/SCRAM-SHA-256 (no TLS) from one user, which the
    /// broker also logs in as (`StorageTool format` keeps one `--add-scram` user only).
    pub fn start_with_scram(dir: &Path, user: &str, password: &str) -> Result<KafkaBroker> {
        Self::launch(dir, false, vec![(user.to_string(), password.to_string())])
    }

    /// librdkafka properties a client needs for this broker's listener, credentials aside.
    pub fn client_properties(&self) -> Vec<(&'static str, &'static str)> {
        if self.scram.is_empty() {
            vec![]
        } else {
            vec![
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "SCRAM-SHA-256"),
            ]
        }
    }

    fn launch(dir: &Path, remove_dir: bool, scram: Vec<(String, String)>) -> Result<KafkaBroker> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut broker = KafkaBroker {
            dir: dir.to_path_buf(),
            port: free_port()?,
            controller_port: free_port()?,
            process: None,
            remove_dir,
            scram,
        };
        broker.format()?;
        broker.resume()?;
        Ok(broker)
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn properties(&self) -> String {
        let data = self.dir.join("data");
        let (listener, security) = match self.scram.first() {
            None => ("PLAINTEXT", String::new()),
            Some((user, password)) => (
                "SASL_PLAINTEXT",
                format!(
                    "sasl.enabled.mechanisms=SCRAM-SHA-256\n\
                     sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256\n\
                     listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\n"
                ),
            ),
        };
        format!(
            "{security}process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners={listener}://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name={listener}\n\
             listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=4\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n\
             log.flush.interval.messages=1\n",
            port = self.port,
            cport = self.controller_port,
            data = data.display(),
        )
    }

    fn format(&self) -> Result<()> {
        let data = self.dir.join("data");
        if data.join("meta.properties").exists() {
            return Ok(());
        }
        let props = self.dir.join("server.properties");
        std::fs::write(&props, self.properties())?;
        let mut command = Command::new("java");
        command
            .arg("-cp")
            .arg(classpath()?)
            // `=`: an id may begin with '-', which would read as a flag.
            .args([
                "kafka.tools.StorageTool",
                "format",
                &format!("--cluster-id={}", cluster_id()),
                "-c",
            ])
            .arg(&props);
        for (user, password) in &self.scram {
            command
                .arg("--add-scram")
                .arg(format!("SCRAM-SHA-256=[name={user},password={password}]"));
        }
        let out = command.output().context("run java (install a JDK 17+)")?;
        if !out.status.success() {
            bail!(
                "formatting the broker's storage failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the broker again on the same ports and data, and waits until it listens.
    pub fn resume(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let props = self.dir.join("server.properties");
        std::fs::write(&props, self.properties())?;
        // Warnings and errors only: enough to see why a broker refused something.
        let log4j = self.dir.join("log4j.properties");
        std::fs::write(
            &log4j,
            "log4j.rootLogger=WARN, out\n\
             log4j.appender.out=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.out.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n",
        )?;
        // The loop outlives neither the broker nor the test process that started it.
        let cleanup = if self.remove_dir {
            format!("wait $broker; rm -rf '{}'", self.dir.display())
        } else {
            String::new()
        };
        let script = format!(
            "java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dlog4j.configuration=file:'{log4j}' -cp '{cp}' kafka.Kafka '{props}' &\n\
             broker=$!\n\
             trap 'kill -9 $broker 2>/dev/null; {cleanup}' EXIT TERM\n\
             while kill -0 {owner} 2>/dev/null && kill -0 $broker 2>/dev/null; do sleep 1; done\n",
            cp = classpath()?,
            props = props.display(),
            log4j = log4j.display(),
            owner = std::process::id(),
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        let process = Process::spawn("kafka", command, &self.dir.join("broker.log"))?;
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(p) = self.process.as_mut()
                && p.exited().is_some()
            {
                bail!("the Kafka broker exited: {}", p.tail(30));
            }
            if Instant::now() > deadline {
                bail!("the Kafka broker did not listen within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the broker (SIGKILL, like a crash); the data stays.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Kills and starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.resume()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn classpath() -> Result<String> {
    Ok(format!("{}/*", jars_dir()?.display()))
}

/// A KRaft cluster id: 16 bytes in URL-safe base64 without padding, as `random-uuid` prints
/// (one JVM start fewer).
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let bytes = seed.to_le_bytes();
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_have_the_uuid_length() {
        let id = super::cluster_id();
        assert_eq!(id.len(), 22, "{id}");
    }
}
