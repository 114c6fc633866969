#!/usr/bin/env bash
# Fetches (once) and caches an Apache Kafka broker for the tests, from Maven Central: the
# broker, its tools (topics, console producer and consumer) and a logging backend, as jars.
# It runs as a single KRaft node (broker and controller in one JVM): CONTRIBUTING.md has the
# configuration.
#
# Output (stdout): the directory of the jars, $SLUICE_E2E_CACHE/kafka-<version>/jars. A second
# run finds them (the marker .complete-v2) and does nothing.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
# Kafka's clients and broker log through SLF4J 1.7; its reload4j binding of the same line
# makes the broker's log readable (a 2.x binding is ignored and the broker logs nothing).
SLF4J_VERSION="${SLF4J_VERSION:-1.7.36}"
CACHE="${SLUICE_E2E_CACHE:-$HOME/.cache/sluice-e2e}/kafka-$KAFKA_VERSION"
JARS="$CACHE/jars"

log() { printf '[kafka %ss] %s\n' "$SECONDS" "$*" >&2; }

if [ -f "$CACHE/.complete-v2" ]; then
  echo "$JARS"
  exit 0
fi
command -v java >/dev/null || { echo "install-kafka: java is missing (install a JDK 17+)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "install-kafka: mvn is missing (install Maven)" >&2; exit 1; }

log "fetching Apache Kafka $KAFKA_VERSION from Maven Central (once)"
rm -rf "$CACHE" && mkdir -p "$CACHE"
cat > "$CACHE/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sluice.e2e</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
(cd "$CACHE" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=jars) >&2
count=$(find "$JARS" -name '*.jar' | wc -l)
[ "$count" -gt 10 ] || { echo "install-kafka: only $count jars in $JARS" >&2; exit 1; }
touch "$CACHE/.complete-v2"
log "$count jars in $JARS"
echo "$JARS"
