#!/usr/bin/env bash
# Make a release's artefacts in one command:
#   scripts/release.sh               -> dist/, and plugins/krew/clustersecurity.yaml filled in
#   scripts/release.sh --out DIR     -> DIR only; nothing in the repository changes (the test's way)
# Checks that Chart.yaml (version, appVersion), the Cargo workspace version and the krew manifest
# agree, that CHANGELOG.md has a section for the version, and that deploy/ is what the chart
# renders (scripts/gen-deploy.py --check); then writes
#   <out>/cluster-security-operator-<version>.tgz   the chart, packaged by Helm's library
#   <out>/install-<version>.yaml                    deploy/install.yaml with the image pinned to <version>
#   <out>/clustersecurity.yaml                      the krew manifest: this version's URLs, and the
#       sha256 of each plugin archive found in <out> (kubectl-clustersecurity_v<version>_<os>_<arch>.tar.gz,
#       plugins/krew/package.sh makes one per machine); absent archives keep their placeholder, and
#       the script says which.
# RELEASE_BASE_URL: where the plugin archives are published (default: the GitHub release of the tag).
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist
in_repo=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; in_repo=0; shift 2 ;;
    *) echo "usage: scripts/release.sh [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
python3 - "$out" "$in_repo" <<'PY'
import hashlib
import importlib.util
import pathlib
import re
import sys

from helm_python import chart as helm_chart

out, in_repo = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
root = pathlib.Path.cwd()
chart_dir = root / "charts" / "cluster-security-operator"


def fail(message):
    sys.exit(f"release: {message}")


def field(text, key):
    m = re.search(rf"^{key}:\s*\"?([^\"\n]+)\"?\s*$", text, re.M)
    return m.group(1) if m else None


chart_yaml = (chart_dir / "Chart.yaml").read_text()
version, app_version = field(chart_yaml, "version"), field(chart_yaml, "appVersion")
cargo = (root / "Cargo.toml").read_text().split("[workspace.package]", 1)[1]
m = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M)
cargo_version = m.group(1) if m else None
if not (version == app_version == cargo_version):
    fail(f"versions disagree: Chart.yaml version {version}, appVersion {app_version}, Cargo.toml {cargo_version}")
krew_path = root / "plugins" / "krew" / "clustersecurity.yaml"
krew = krew_path.read_text()
changelog = (root / "CHANGELOG.md").read_text() if (root / "CHANGELOG.md").exists() else ""
if not re.search(rf"^## \[{re.escape(version)}\]", changelog, re.M):
    fail(f"CHANGELOG.md has no section '## [{version}]'")

spec = importlib.util.spec_from_file_location("gen_deploy", root / "scripts" / "gen-deploy.py")
gen_deploy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_deploy)
sys.argv = ["gen-deploy.py", "--check"]
if gen_deploy.main() != 0:
    fail("deploy/ differs from the chart: run python3 scripts/gen-deploy.py and commit")

archive = helm_chart.package(str(chart_dir), destination=str(out))
print(f"chart:   {archive}")

# The one-file install with the image pinned to this version (the chart's default tag, made explicit).
operator = gen_deploy.generate({"image": {"tag": version}})
install = gen_deploy.generate_install(operator).replace(
    gen_deploy.INSTALL_HEADER,
    f"# cluster-security-operator {version} in one file: namespace, CRDs, RBAC, webhook, Deployment.\n"
    f"#   kubectl apply --server-side -f install-{version}.yaml\n"
    "# Made by scripts/release.sh from the chart (default values, image tag pinned); do not edit.\n",
)
image = f"ghcr.io/cluster-security-operator/cluster-security-operator:{version}"
if f'image: "{image}"' not in install:
    fail(f"install-{version}.yaml does not run {image}")
install_path = out / f"install-{version}.yaml"
install_path.write_text(install)
print(f"install: {install_path}")

# The krew manifest: this version everywhere, the release's URLs, the archives' sha256.
import os
base = os.environ.get(
    "RELEASE_BASE_URL",
    f"https://github.com/cluster-security-operator/cluster-security-operator/releases/download/v{version}",
)
krew = re.sub(r"^  version: v\S+$", f"  version: v{version}", krew, flags=re.M)
missing = []


def platform_uri(m):
    name = f"kubectl-clustersecurity_v{version}_{m.group(2)}.tar.gz"
    return f"{m.group(1)}{base}/{name}"


krew = re.sub(r"^(    uri: )\S+/kubectl-clustersecurity_v[^_]+_(\w+_\w+)\.tar\.gz$", platform_uri, krew, flags=re.M)
lines = krew.split("\n")
for i, line in enumerate(lines):
    m = re.match(r"^    uri: \S+/(kubectl-clustersecurity_v\S+\.tar\.gz)$", line)
    if m:
        plugin = out / m.group(1)
        if plugin.exists():
            digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
            lines[i + 1] = f'    sha256: "{digest}"'
        else:
            missing.append(m.group(1))
krew = "\n".join(lines)
(out / "clustersecurity.yaml").write_text(krew)
if in_repo:
    krew_path.write_text(krew)
print(f"krew:    {out / 'clustersecurity.yaml'}" + (f" (and {krew_path.relative_to(root)})" if in_repo else ""))
for name in missing:
    print(f"krew:    {name} is not in {out}: its sha256 is left as it was (plugins/krew/package.sh builds it)")
PY
