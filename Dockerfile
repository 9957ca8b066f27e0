# Multi-stage build of a static operator binary into a minimal, non-root image.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin cluster-security-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/cluster-security-operator /cluster-security-operator
USER 65532:65532
ENTRYPOINT ["/cluster-security-operator"]
CMD ["run"]
