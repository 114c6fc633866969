# One image for every role: `sluice run | master | worker | validate | bench`, and the
# operator (`sluice-operator`, the Helm chart's command).
#
#   docker build -t sluice:dev .
#   kind load docker-image sluice:dev          # for a local kind cluster
#
# Build stage: the workspace's own lock file and toolchain version. The image has what
# librdkafka's build needs (a C compiler, make, zlib and OpenSSL headers).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-runtime --bin sluice -p sluice-operator --bin sluice-operator \
 && strip target/release/sluice target/release/sluice-operator

# Run stage: distroless (glibc, OpenSSL for the Kafka client, CA certificates, no shell),
# non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /src/target/release/sluice-operator /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
