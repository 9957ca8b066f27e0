#!/usr/bin/env bash
# The operator's release build: what the Dockerfile runs (for x86_64-unknown-linux-musl: a static
# binary) and what CI runs (for the host target, as the musl standard library cannot be installed
# offline) — same sources, lockfile, features and profile. Then checks the binary runs.
# Usage: scripts/build-release.sh [TARGET]   -> prints the binary's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-}"
args=(build --release --locked -p cluster-security-operator --bin cluster-security-operator)
dir=target/release
if [ -n "$target" ]; then
  args+=(--target "$target")
  dir="target/$target/release"
fi
cargo "${args[@]}"
bin="$dir/cluster-security-operator"
"$bin" --version >/dev/null
# The binary carries the CRDs the repository ships.
"$bin" crd | cmp -s - crds/clustersecurity.io_crds.yaml || { echo "built binary prints different CRDs than crds/" >&2; exit 1; }
echo "$bin"
