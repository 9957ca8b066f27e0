#!/usr/bin/env bash
# The demo: the operator's main job on a local control plane with the example manifests.
# Usage: scripts/demo.sh [--exit]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace --bins
exec target/debug/csop-testbed demo "$@"
