# Multi-stage build of a static operator binary into a minimal, non-root image.
# The build step is scripts/build-release.sh, which CI also runs (for the host target).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY crds ./crds
COPY scripts/build-release.sh ./scripts/
RUN bash scripts/build-release.sh x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/cluster-security-operator /cluster-security-operator

# distroless/static: no shell, no package manager, CA certificates and /etc/passwd only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cluster-security-operator /cluster-security-operator
USER 65532:65532
ENTRYPOINT ["/cluster-security-operator"]
CMD ["run"]
