#!/usr/bin/env bash
# Builds containerd's own snapshotter benchmark (snapshots/benchsuite, Go
# source from Debian's golang-github-containerd-containerd-dev) into
# target/containerd-bench.test: containerd's benchmark_test.go, copied
# unchanged, plus tools/bench/containerd-bench/proxy_test.go, which adds
# BenchmarkProxy (the same benchmark over a proxy snapshotter's socket) to
# containerd's BenchmarkOverlay and BenchmarkDeviceMapper. tools/bench.sh
# runs this before the benchmark; scenario containerd-bench runs the binary.
#
#   tools/build-containerd-bench.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/containerd-bench.test
SRC=/usr/share/gocode/src/github.com/containerd/containerd/snapshots/benchsuite
command -v go >/dev/null || { echo "build-containerd-bench: no go; run tools/setup.sh (golang-go)" >&2; exit 1; }
[[ -f $SRC/benchmark_test.go ]] || {
  echo "build-containerd-bench: containerd's benchsuite is missing at $SRC; run tools/setup.sh (golang-github-containerd-containerd-dev)" >&2
  exit 1
}
GOPATH_DIR=$TARGET/gopath
PKG=$GOPATH_DIR/src/thinlayer-cbench
# One package: containerd's files as Debian ships them, and ours.
rm -rf "$PKG"
mkdir -p "$PKG"
cp "$SRC"/benchmark.go "$SRC"/benchmark_test.go "$PKG"/
cp "$REPO"/tools/bench/containerd-bench/go.mod "$REPO"/tools/bench/containerd-bench/*_test.go "$PKG"/
# GOPATH mode: Debian ships containerd 1.6's source, not a module cache.
cd "$PKG"
GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOFLAGS= GOCACHE="$GOPATH_DIR/cache" \
  go test -c -o "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "build-containerd-bench: $OUT" >&2
