#!/usr/bin/env bash
# Runs the benchmark harness (tools/bench): the thin and overlay drivers on
# the same work, natively where the kernel has dm-thin and in the VM
# otherwise (the report then says that only ratios within the run compare).
#
#   tools/bench.sh [--quick] [--out DIR] [THINLAYER-BENCH-ARGS...]
#
# --quick: a smoke run of every scenario (debug build, a few minutes).
# Otherwise a full run with a release build. Output in DIR (default
# target/bench, or target/bench-quick): samples.json, report.md, *.svg.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
cd "$REPO"

quick=0 out= args=()
while (($#)); do
  case $1 in
    --quick) quick=1; args+=(--quick); shift ;;
    --out) out=${2:?}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if ((quick)); then
  out=${out:-target/bench-quick} profile=debug cargo_flags=() timeout=900 mem=4G disk=16G
else
  out=${out:-target/bench} profile=release cargo_flags=(--release) timeout=14400 mem=8G disk=64G
fi
mkdir -p "$out"
out=$(realpath "$out")

"$HERE/setup.sh"
cargo build --quiet "${cargo_flags[@]}" --workspace --bins
bin=$REPO/target/$profile
# containerd's own snapshotter benchmark (scenario containerd-bench), built
# here because the VM sees the host read-only; a quick run leaves the
# scenario out unless --only names it, so it builds it only then.
if ((!quick)) || [[ " ${args[*]} " == *containerd-bench* ]]; then
  "$HERE/build-containerd-bench.sh"
  args+=(--containerd-bench "${CARGO_TARGET_DIR:-$REPO/target}/containerd-bench.test")
fi

has_dm_thin() {
  grep -q ' device-mapper$' /proc/misc 2>/dev/null || return 1
  DM_DISABLE_UDEV=1 dmsetup targets 2>/dev/null | grep -q '^thin-pool' && return 0
  modprobe -q dm-thin-pool 2>/dev/null && DM_DISABLE_UDEV=1 dmsetup targets | grep -q '^thin-pool'
}

start=$(date +%s)
if has_dm_thin; then
  "$bin/thinlayer-bench" --out "$out" --thinlayer "$bin/thinlayer" "${args[@]}"
else
  echo "This kernel has no device-mapper thin target: running the benchmark in a VM (QEMU, software emulation)."
  # The work goes on a scratch virtio disk (ext4), not the guest's tmpfs:
  # real block I/O, writeback and page cache.
  THINLAYER_BENCH_EMULATED=true "$REPO/vm-tests/run.sh" --timeout "$timeout" --mem "$mem" \
    --disk "$disk" --out "$out" -- \
    "$bin/thinlayer-bench" --out "$out" --thinlayer "$bin/thinlayer" --work /var/tmp/disk/thinlayer-bench "${args[@]}"
fi
echo "bench: finished in $(($(date +%s) - start)) s; report in $out/report.md"
