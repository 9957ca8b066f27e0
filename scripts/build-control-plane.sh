#!/usr/bin/env bash
# Builds (once) and caches the test control plane: kube-apiserver and kube-controller-manager
# v1.20.2 from Debian bookworm's `kubernetes` source package, plus etcd from Debian.
# Why from source: kind/k3d/minikube/envtest all download binaries or need Docker; neither
# works on a machine that only reaches package registries (shared/design/TESTBED.md).
# Prints the directory holding the binaries on its last line.
set -euo pipefail

log() { echo "control-plane: $*" >&2; }

# Test binaries may call this at the same time: one builds, the others wait for its result.
mkdir -p "${HOME}/.cache/cluster-security-operator"
exec 9>"${HOME}/.cache/cluster-security-operator/.build.lock"
flock 9
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for p in etcd-server etcd-client golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done

ensure_deb_src() {
  # Newer suites carry only kubectl, so the source package must come from bookworm.
  if grep -rqsE '^(deb-src .*bookworm|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  local mirror
  mirror=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1)
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
    | $SUDO tee /etc/apt/sources.list.d/csop-bookworm-src.sources >/dev/null
  return 1
}

updated=0
if ! ensure_deb_src; then $SUDO apt-get update -qq; updated=1; fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ $updated -eq 1 ] || { $SUDO apt-get update -qq; updated=1; }
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

VERSION="${KUBE_SRC_VERSION:-}"
if [ -z "$VERSION" ]; then
  cached=$(ls -d "${HOME}/.cache/cluster-security-operator/kube-"*/bin 2>/dev/null | head -n1 || true)
  if [ -n "$cached" ] && [ -x "$cached/kube-apiserver" ] && [ -x "$cached/kube-controller-manager" ]; then
    # Fast path: a build is cached; don't ask apt (which may be offline-slow).
    echo "$cached"; exit 0
  fi
  [ $updated -eq 1 ] || { $SUDO apt-get update -qq; updated=1; }
  VERSION=$(apt-cache showsrc kubernetes | awk '/^Version:/{print $2}' | grep 'really1.20' | sort -V | tail -n1)
fi
[ -n "$VERSION" ] || { log "no bookworm 'kubernetes' source package found (apt-cache showsrc kubernetes)"; exit 1; }

CACHE="${HOME}/.cache/cluster-security-operator/kube-${VERSION//[:+~]/_}"
if [ -x "$CACHE/bin/kube-apiserver" ] && [ -x "$CACHE/bin/kube-controller-manager" ]; then
  echo "$CACHE/bin"; exit 0
fi

log "building kube-apiserver and kube-controller-manager $VERSION (about 5 minutes on 2 cores)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get source --download-only -qq "kubernetes=$VERSION" >/dev/null )
orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
mkdir -p "$work/src"
tar -xf "$orig" -C "$work/src" --strip-components=1
cd "$work/src"
# reflect2 1.0.1 (vendored) crashes under Go >= 1.18 on the first custom resource; swap in 1.0.2.
r2=vendor/github.com/modern-go/reflect2
rm -f "$r2"/*.go "$r2"/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r2"/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r2"/ 2>/dev/null || true
rm -f "$r2"/*_test.go
mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
env HOME="$work/home" GOPATH="$PWD/.go" CGO_ENABLED=0 \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2; exit 1; }
mkdir -p "$CACHE/bin.tmp"
cp _output/local/bin/linux/amd64/kube-apiserver _output/local/bin/linux/amd64/kube-controller-manager "$CACHE/bin.tmp/"
mv "$CACHE/bin.tmp" "$CACHE/bin"
log "cached in $CACHE/bin"
echo "$CACHE/bin"
