# One image for every role: `sluice run | master | worker | validate | bench`.
# (The operator binary joins it when it exists.)
#
#   docker build -t sluice:dev .
#   kind load docker-image sluice:dev          # for a local kind cluster
#
# Build stage: the workspace's own lock file and toolchain version.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-runtime --bin sluice \
 && strip target/release/sluice

# Run stage: distroless (glibc, CA certificates, no shell), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
