//! The connection settings shared by the source and the sink, and the words for client errors.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::exec::lock_unpoisoned;

/// How requests that must answer (metadata, offsets, transactions) may take before the step
/// fails and is retried by the coordinator.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The environment variables SASL credentials come from.
pub const USERNAME_VAR: &str = "SLUICE_KAFKA_SASL_USERNAME";
pub const PASSWORD_VAR: &str = "SLUICE_KAFKA_SASL_PASSWORD";

/// Where the brokers are and how to talk to them. `Debug` leaves the properties' values out:
/// they may hold credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaClient {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// librdkafka properties, set last (`security.protocol`, `ssl.ca.location`, ...).
    pub properties: BTreeMap<String, String>,
}

impl KafkaClient {
    /// A client of `bootstrap_servers` with librdkafka's defaults.
    pub fn new(bootstrap_servers: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_string(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets one librdkafka property.
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.properties.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds SASL credentials from `SLUICE_KAFKA_SASL_USERNAME` and `SLUICE_KAFKA_SASL_PASSWORD`
    /// when they are set (a manifest never holds them).
    pub fn with_credentials_from_env(mut self) -> Self {
        for (var, key) in [
            (USERNAME_VAR, "sasl.username"),
            (PASSWORD_VAR, "sasl.password"),
        ] {
            if let Ok(value) = std::env::var(var)
                && !value.is_empty()
            {
                self.properties.insert(key.to_string(), value);
            }
        }
        self
    }

    /// The librdkafka configuration: ours, then the user's properties over them.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "sluice")
            // librdkafka logs through its own channel; its errors reach us as results.
            .set("log_level", "3");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a client reported on its own (not as the result of a call) that explains a failed
/// request better than the request's error, which is a mere transport failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The brokers refused the credentials or their rights.
    RefusedLogin(String),
    /// The TLS handshake failed: an unknown CA, a certificate for another name, TLS against
    /// a plaintext listener.
    TlsHandshake(String),
}

impl Cause {
    /// The cause an error report of the client names, if any.
    pub(crate) fn of(code: Option<RDKafkaErrorCode>, text: &str) -> Option<Cause> {
        if code.is_some_and(is_auth) || text.contains("SASL authentication error") {
            Some(Cause::RefusedLogin(text.to_string()))
        } else if text.contains("SSL handshake failed") {
            Some(Cause::TlsHandshake(text.to_string()))
        } else {
            None
        }
    }
}

/// Keeps the cause of the last error librdkafka reported on its own.
#[derive(Default)]
pub(crate) struct Watch {
    last: Mutex<Option<Cause>>,
}

impl ClientContext for Watch {
    /// librdkafka reports a refused SASL login only in its log (the request fails as a
    /// transport failure).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Error as i32)
            && let Some(cause) = Cause::of(None, message)
        {
            *lock_unpoisoned(&self.last) = Some(cause);
        }
        tracing::debug!(facility, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "Kafka client");
        *lock_unpoisoned(&self.last) = Cause::of(error.rdkafka_error_code(), reason);
    }
}

impl ConsumerContext for Watch {}

impl Watch {
    /// The cause of the last error reported, if it names one.
    pub(crate) fn cause(&self) -> Option<Cause> {
        lock_unpoisoned(&self.last).clone()
    }
}

pub(crate) fn is_auth(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// A client error in words a user can act on, without the data; `cause`: what the client
/// reported on its own, which explains a failed request better than it does.
pub(crate) fn describe_with(e: &KafkaError, servers: &str, cause: Option<Cause>) -> String {
    match cause {
        Some(Cause::RefusedLogin(reason)) => format!(
            "the Kafka brokers at {servers} refused the credentials or their rights ({reason}); check SLUICE_KAFKA_SASL_USERNAME, SLUICE_KAFKA_SASL_PASSWORD (spec.kafkaCredentials), sasl.mechanism and the ACLs"
        ),
        Some(Cause::TlsHandshake(reason)) => format!(
            "the TLS handshake with the Kafka brokers at {servers} failed ({reason}); check security.protocol, ssl.ca.location or ssl.ca.pem (the CA that signed the brokers' certificates), and that the certificates name the addresses in bootstrapServers"
        ),
        None => describe(e, servers),
    }
}

/// A client error in words a user can act on, without the data.
pub(crate) fn describe(e: &KafkaError, servers: &str) -> String {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
            format!(
                "cannot reach the Kafka brokers at {servers} ({e}); check bootstrapServers and that the brokers are up"
            )
        }
        Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut) => format!(
            "the Kafka brokers at {servers} did not answer in time ({e}); check bootstrapServers and that the brokers are up"
        ),
        Some(code) if is_auth(code) => format!(
            "the Kafka brokers at {servers} refused the credentials or their rights ({e}); check the SASL settings and the ACLs"
        ),
        _ => format!("Kafka at {servers}: {e}"),
    }
}
