//! A real Apache Kafka broker for tests: one KRaft node (broker and controller in one JVM) from
//! the jars `e2e/scripts/install-kafka.sh` caches, on loopback ports, with its data in a
//! directory that survives [`KafkaBroker::restart`].
//!
//! A JVM takes seconds to start, so a test binary shares one broker ([`KafkaBroker::shared`])
//! and gives each test its own topics; a test that stops or restarts the broker starts its own.
//! Every broker is watched by a shell loop that kills it when the test process exits, so a
//! shared broker (a `static`, never dropped) does not outlive its test binary.
//!
//! On the test control plane the broker runs as a pod instead: [`exec_pod_broker`] is the
//! entry point of the `kafka-pod` binary, which the node agent runs for a Kafka image.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::control_plane::free_port;
use crate::process::Process;

pub mod topics;

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
    security: Security,
}

/// How clients talk to a test broker besides plaintext.
#[derive(Clone, Debug)]
enum Security {
    /// One plaintext listener.
    Plaintext,
    /// One SASL_PLAINTEXT listener taking SCRAM-SHA-256 from this user (name, password).
    Scram(String, String),
    /// A TLS listener on `port` besides the plaintext one (which tests use to set up and
    /// check), serving `keystore` (PEM: the key, then the certificate).
    Tls { port: u16, keystore: PathBuf },
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
            KafkaBroker::launch(&dir, true, Security::Plaintext)
                .unwrap_or_else(|e| panic!("Kafka broker: {e:#}"))
        })
    }

    /// Formats `dir` (once) and starts a broker on fresh loopback ports.
    pub fn start(dir: &Path) -> Result<KafkaBroker> {
        Self::launch(dir, false, Security::Plaintext)
    }

    /// A broker whose listener takes SASL/SCRAM-SHA-256 (no TLS) from one user, which the
    /// broker also logs in as (`StorageTool format` keeps one `--add-scram` user only).
    pub fn start_with_scram(dir: &Path, user: &str, password: &str) -> Result<KafkaBroker> {
        Self::launch(
            dir,
            false,
            Security::Scram(user.to_string(), password.to_string()),
        )
    }

    /// A broker with a TLS listener ([`Self::tls_bootstrap`]) besides the plaintext one
    /// ([`Self::bootstrap`]), its certificate for 127.0.0.1 signed by the CA
    /// [`Self::ca_cert`] (made here with `openssl`).
    pub fn start_with_tls(dir: &Path) -> Result<KafkaBroker> {
        let pki = crate::pki::Pki::generate(&dir.join("pki"))?;
        let keystore = dir.join("pki/broker.pem");
        let key = std::fs::read_to_string(&pki.server_key)?;
        let cert = std::fs::read_to_string(&pki.server_cert)?;
        std::fs::write(&keystore, format!("{key}{cert}"))?;
        Self::launch(
            dir,
            false,
            Security::Tls {
                port: free_port()?,
                keystore,
            },
        )
    }

    /// `host:port` of the TLS listener of a broker from [`Self::start_with_tls`].
    pub fn tls_bootstrap(&self) -> Option<String> {
        match &self.security {
            Security::Tls { port, .. } => Some(format!("127.0.0.1:{port}")),
            _ => None,
        }
    }

    /// The CA that signed the TLS listener's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// librdkafka properties a client needs for [`Self::bootstrap`], credentials aside.
    pub fn client_properties(&self) -> Vec<(&'static str, &'static str)> {
        match self.security {
            Security::Scram(..) => vec![
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "SCRAM-SHA-256"),
            ],
            Security::Plaintext | Security::Tls { .. } => vec![],
        }
    }

    fn launch(dir: &Path, remove_dir: bool, security: Security) -> Result<KafkaBroker> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut broker = KafkaBroker {
            dir: dir.to_path_buf(),
            port: free_port()?,
            controller_port: free_port()?,
            process: None,
            remove_dir,
            security,
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
        server_properties(
            "127.0.0.1",
            self.port,
            self.controller_port,
            &self.dir.join("data"),
            &self.security,
        )
    }

    fn format(&self) -> Result<()> {
        let props = self.dir.join("server.properties");
        std::fs::write(&props, self.properties())?;
        format_storage(&props, &self.dir.join("data"), &self.security)
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
        std::fs::write(&log4j, LOG4J)?;
        // The loop outlives neither the broker nor the test process that started it.
        let cleanup = if self.remove_dir {
            format!("wait $broker; rm -rf '{}'", self.dir.display())
        } else {
            String::new()
        };
        let script = format!(
            "java {JVM_OPTIONS} -Dlog4j.configuration=file:'{log4j}' -cp '{cp}' kafka.Kafka '{props}' &\n\
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

/// Warnings and errors only: enough to see why a broker refused something.
const LOG4J: &str = "log4j.rootLogger=WARN, out\n\
     log4j.appender.out=org.apache.log4j.ConsoleAppender\n\
     log4j.appender.out.layout=org.apache.log4j.PatternLayout\n\
     log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n";

/// A small heap and a fast start: a test broker holds little and lives for minutes.
const JVM_OPTIONS: &str = "-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1";

/// The port a pod's broker listens on ([`exec_pod_broker`]), and its controller's.
pub const POD_PORT: u16 = 9092;
const POD_CONTROLLER_PORT: u16 = 9093;

/// One KRaft node's configuration: clients on `host:port` (and the TLS port), the controller
/// on `host:cport`.
fn server_properties(
    host: &str,
    port: u16,
    cport: u16,
    data: &Path,
    security: &Security,
) -> String {
    let (listener, mut settings, extra) = match security {
        Security::Plaintext => ("PLAINTEXT", String::new(), None),
        Security::Scram(user, password) => (
            "SASL_PLAINTEXT",
            format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-256\n\
                 sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256\n\
                 listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\n"
            ),
            None,
        ),
        Security::Tls { port, keystore } => (
            "PLAINTEXT",
            format!(
                "ssl.keystore.type=PEM\nssl.keystore.location={}\n",
                keystore.display()
            ),
            Some(format!("SSL://{host}:{port}")),
        ),
    };
    let mut listeners = format!("{listener}://{host}:{port}");
    let mut map = format!("{listener}:{listener},CONTROLLER:PLAINTEXT");
    if let Some(extra) = extra {
        listeners.push_str(&format!(",{extra}"));
        map.push_str(",SSL:SSL");
    }
    settings.push_str(&format!(
        "listeners={listeners},CONTROLLER://{host}:{cport}\n\
         advertised.listeners={listeners}\n\
         listener.security.protocol.map={map}\n"
    ));
    format!(
        "{settings}process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@{host}:{cport}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name={listener}\n\
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
        data = data.display(),
    )
}

/// Formats `data` for the configuration `props` unless it already holds a broker's storage.
fn format_storage(props: &Path, data: &Path, security: &Security) -> Result<()> {
    if data.join("meta.properties").exists() {
        return Ok(());
    }
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
        .arg(props);
    if let Security::Scram(user, password) = security {
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

/// The broker of a test pod, as an image's entry point would run it: listens on
/// `host:`[`POD_PORT`] and advertises that address, keeps its data (formatted on the first
/// start) and configuration in `dir`, and replaces this process with the JVM, so the pod's
/// process is the broker's and a kill reaches it.
pub fn exec_pod_broker(host: &str, dir: &Path) -> Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let data = dir.join("data");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let props = dir.join("server.properties");
    std::fs::write(
        &props,
        server_properties(
            host,
            POD_PORT,
            POD_CONTROLLER_PORT,
            &data,
            &Security::Plaintext,
        ),
    )?;
    format_storage(&props, &data, &Security::Plaintext)?;
    let log4j = dir.join("log4j.properties");
    std::fs::write(&log4j, LOG4J)?;
    let error = Command::new("java")
        .args(JVM_OPTIONS.split(' '))
        .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
        .arg("-cp")
        .arg(classpath()?)
        .arg("kafka.Kafka")
        .arg(&props)
        .exec();
    Err(error).context("run java (install a JDK 17+)")
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
