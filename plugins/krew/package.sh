#!/usr/bin/env bash
# Package `kubectl clustersecurity` for krew on this machine: builds the plugin (release profile,
# locked), puts it in target/krew/kubectl-clustersecurity_v<version>_<os>_<arch>.tar.gz and
# renders target/krew/clustersecurity.yaml from plugins/krew/clustersecurity.yaml with this
# platform only, the archive's sha256 and a file:// uri. Then:
#   kubectl krew install --manifest=target/krew/clustersecurity.yaml --archive=<the archive>
# Without krew: copy target/release/kubectl-clustersecurity anywhere on PATH.
# Usage: plugins/krew/package.sh   -> prints the archive's path last.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p cluster-security-operator --bin kubectl-clustersecurity
bin=target/release/kubectl-clustersecurity
version="v$("$bin" --version | awk '{print $2}')"
grep -q "^  version: $version\$" plugins/krew/clustersecurity.yaml \
  || { echo "plugins/krew/clustersecurity.yaml does not say version $version" >&2; exit 1; }
os=$(uname -s | tr '[:upper:]' '[:lower:]')
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
out=target/krew
mkdir -p "$out"
archive="$out/kubectl-clustersecurity_${version}_${os}_${arch}.tar.gz"
tar -C target/release -czf "$archive" kubectl-clustersecurity
sum=$(sha256sum "$archive" | awk '{print $1}')
python3 - "$os" "$arch" "$sum" "$(realpath "$archive")" > "$out/clustersecurity.yaml" <<'PY'
import sys
os_, arch, sha, path = sys.argv[1:]
text = open("plugins/krew/clustersecurity.yaml").read()
head, platforms = text.split("  platforms:\n")
blocks = ["  - selector:" + b.rstrip("\n") for b in platforms.split("  - selector:")[1:]]
mine = [b for b in blocks if f"os: {os_}, arch: {arch}" in b]
if not mine:
    sys.exit(f"no platform {os_}/{arch} in plugins/krew/clustersecurity.yaml")
block = mine[0]
lines = []
for line in block.splitlines():
    if line.strip().startswith("uri:"):
        line = f"    uri: file://{path}"
    elif line.strip().startswith("sha256:"):
        line = f'    sha256: "{sha}"'
    lines.append(line)
print(head + "  platforms:\n" + "\n".join(lines))
PY
echo "$archive"
