//! Kafka settings in a manifest (the source and the sink), parsed and checked in one place.

use std::collections::BTreeMap;

use crate::spec::{KafkaSink, KafkaSource};

/// Where a job without a checkpoint starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Starting {
    Earliest,
    Latest,
    /// Milliseconds since the epoch.
    At(i64),
}

/// Reads `startingOffsets`: `earliest`, `latest` or an RFC 3339 UTC time.
pub fn parse_starting_offsets(text: &str) -> Result<Starting, String> {
    match text {
        "earliest" => Ok(Starting::Earliest),
        "latest" => Ok(Starting::Latest),
        _ => {
            let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
                format!("{text:?} is not earliest, latest or a time such as 2026-11-30T12:00:00Z")
            })?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{text:?} is before 1970"))?
                .as_millis();
            i64::try_from(ms)
                .map(Starting::At)
                .map_err(|_| format!("{text:?} is too far away"))
        }
    }
}

/// Properties the job sets itself: a manifest that set them would break its guarantees.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "transactional.id",
    "enable.idempotence",
];

/// The problems of a `bootstrapServers` value.
pub fn bootstrap_problem(servers: &str) -> Option<String> {
    if servers.trim().is_empty() {
        return Some("is empty; write host:port[,host:port...]".into());
    }
    for entry in servers.split(',') {
        let entry = entry.trim();
        let ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains('/')
                && !host.contains('@')
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Some(format!(
                "{:?} is not host:port; write e.g. kafka-0.kafka:9092,kafka-1.kafka:9092",
                crate::shorten(entry, 80)
            ));
        }
    }
    None
}

/// The problem of a topic name, as the broker would refuse it.
pub fn topic_problem(topic: &str) -> Option<String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| {
        format!(
            "{:?} is not a Kafka topic name; use 1-249 letters, digits, '.', '_' or '-'",
            crate::shorten(topic, 80)
        )
    })
}

/// Problems of a `properties` map, by key (the values are never repeated: they may be secret).
pub fn properties_problems(properties: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in properties.keys() {
        let lower = key.to_ascii_lowercase();
        if RESERVED.contains(&lower.as_str()) {
            out.push((
                key.clone(),
                "is set by Sluice to keep the job exactly once; remove it".to_string(),
            ));
        } else if lower.contains("password")
            || lower.contains("secret")
            || lower == "sasl.username"
            || lower == "sasl.jaas.config"
            // A client's private key, unlike a CA certificate (`ssl.ca.pem`), is a secret.
            || lower == "ssl.key.pem"
        {
            out.push((
                key.clone(),
                "holds a credential, which does not belong in a manifest; set SLUICE_KAFKA_SASL_USERNAME and SLUICE_KAFKA_SASL_PASSWORD in the environment (on Kubernetes: spec.kafkaCredentials)".to_string(),
            ));
        } else if key.is_empty() || key.len() > 128 || key.chars().any(char::is_whitespace) {
            out.push((key.clone(), "is not a librdkafka property name".to_string()));
        }
    }
    out
}

/// Every problem of a Kafka source, as (field below `kafka.`, message).
pub fn source_problems(k: &KafkaSource) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(p) = bootstrap_problem(&k.bootstrap_servers) {
        out.push(("bootstrapServers".to_string(), p));
    }
    if k.topics.is_empty() {
        out.push(("topics".to_string(), "needs at least one topic".to_string()));
    }
    if k.topics.len() > 64 {
        out.push(("topics".to_string(), "has more than 64 topics".to_string()));
    }
    for (i, topic) in k.topics.iter().enumerate() {
        if let Some(p) = topic_problem(topic) {
            out.push((format!("topics[{i}]"), p));
        } else if k.topics[..i].contains(topic) {
            out.push((format!("topics[{i}]"), format!("{topic:?} is listed twice")));
        }
    }
    if let Some(Err(p)) = k.starting_offsets.as_deref().map(parse_starting_offsets) {
        out.push(("startingOffsets".to_string(), p));
    }
    if let Some(rate) = k.max_rate_per_partition
        && !(1..=1_000_000_000).contains(&rate)
    {
        out.push((
            "maxRatePerPartition".to_string(),
            format!("{rate} is out of range; use 1 to 1000000000 records/s"),
        ));
    }
    if let Some(group) = &k.group_id
        && (group.trim().is_empty() || group.len() > 255)
    {
        out.push((
            "groupId".to_string(),
            "must be 1-255 characters (or left out for sluice.<namespace>.<job>)".to_string(),
        ));
    }
    for (key, p) in properties_problems(&k.properties) {
        out.push((format!("properties[{key:?}]"), p));
    }
    out
}

/// Every problem of a Kafka sink, as (field below `kafka.`, message).
pub fn sink_problems(k: &KafkaSink) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(p) = bootstrap_problem(&k.bootstrap_servers) {
        out.push(("bootstrapServers".to_string(), p));
    }
    if let Some(p) = topic_problem(&k.topic) {
        out.push(("topic".to_string(), p));
    }
    if let Some(key) = &k.key
        && key.field.is_none()
        && key.expr.is_none()
    {
        out.push(("key".to_string(), "set field or expr".to_string()));
    }
    for (key, p) in properties_problems(&k.properties) {
        out.push((format!("properties[{key:?}]"), p));
    }
    out
}

/// The consumer group a source commits to when the manifest names none.
pub fn default_group_id(namespace: Option<&str>, job: &str) -> String {
    format!("sluice.{}.{job}", namespace.unwrap_or("default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_offsets_read_keywords_and_utc_times() {
        assert_eq!(parse_starting_offsets("earliest"), Ok(Starting::Earliest));
        assert_eq!(parse_starting_offsets("latest"), Ok(Starting::Latest));
        assert_eq!(
            parse_starting_offsets("2026-11-30T12:00:00Z"),
            Ok(Starting::At(1_796_040_000_000))
        );
        let err = parse_starting_offsets("yesterday").expect_err("not a time");
        assert!(err.contains("earliest, latest"), "{err}");
    }

    #[test]
    fn bad_servers_topics_and_properties_are_named() {
        assert_eq!(bootstrap_problem("a:9092, b:9093"), None);
        assert!(bootstrap_problem("kafka").is_some());
        assert!(bootstrap_problem("PLAINTEXT://a:9092").is_some());
        assert!(bootstrap_problem("a:0").is_some());
        assert_eq!(topic_problem("clicks.v2_x-y"), None);
        assert!(topic_problem("a b").is_some());
        assert!(topic_problem("..").is_some());
        let props: BTreeMap<String, String> = [
            ("sasl.password", "hunter2"),
            ("isolation.level", "read_uncommitted"),
            ("security.protocol", "SASL_SSL"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("ssl.ca.pem", "-----BEGIN CERTIFICATE-----"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let problems = properties_problems(&props);
        let named: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            named,
            ["isolation.level", "sasl.password", "ssl.key.pem"],
            "{problems:?}"
        );
        assert!(problems.iter().all(|(_, m)| !m.contains("hunter2")));
    }
}
