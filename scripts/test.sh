#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings denied), unit and end-to-end tests.
# End-to-end tests start their own control plane; the first run builds and caches it.
set -euo pipefail
cd "$(dirname "$0")/.."
# Helm's engine for the chart test (a wheel carrying Helm as a library; no helm binary needed).
python3 -c "import helm_python" 2>/dev/null || python3 -m pip install --quiet helm-python-sdk
# Lua 5.1 for the Argo CD health-check tests (Debian package; installed when we may).
command -v lua5.1 >/dev/null || { [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.1 >/dev/null; } || true
# promtool (Debian package prometheus) for the test that evaluates the chart's alerts over a scrape.
command -v promtool >/dev/null || { [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || true
# cargo-deny for licenses, duplicate versions and sources (deny.toml); built once (~2 min), then cached.
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny@0.20.2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo deny check licenses bans sources
bash scripts/build-control-plane.sh >/dev/null
cargo test --workspace --locked
