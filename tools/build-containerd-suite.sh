#!/usr/bin/env bash
# Builds containerd's own snapshotter test suite (snapshots/testsuite, Go
# source from Debian's golang-github-containerd-containerd-dev) with the
# harness in tests/containerd-suite/ into target/containerd-suite.test, a
# binary the root and dm tiers run against `thinlayer snapshotter serve`.
#
#   tools/build-containerd-suite.sh        (tools/run-tier.sh runs it when building)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${CARGO_TARGET_DIR:-$REPO/target}/containerd-suite.test
command -v go >/dev/null || { echo "build-containerd-suite: no go; run tools/setup.sh (golang-go)" >&2; exit 1; }
[[ -d /usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite ]] || {
  echo "build-containerd-suite: containerd's Go source is missing; run tools/setup.sh (golang-github-containerd-containerd-dev)" >&2
  exit 1
}
GOPATH_DIR=${CARGO_TARGET_DIR:-$REPO/target}/gopath
mkdir -p "$GOPATH_DIR/src"
ln -sfn "$REPO/tests/containerd-suite" "$GOPATH_DIR/src/thinlayer-suite"
# GOPATH mode: Debian ships containerd 1.6's source, not a module cache.
cd "$GOPATH_DIR/src/thinlayer-suite"
GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOFLAGS= GOCACHE="$GOPATH_DIR/cache" \
  go test -c -o "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "build-containerd-suite: $OUT" >&2
