#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings denied), unit and end-to-end tests.
# End-to-end tests start their own control plane; the first run builds and caches it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
bash scripts/build-control-plane.sh >/dev/null
cargo test --locked
