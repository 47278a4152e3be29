#!/usr/bin/env bash
# Sets up the machine and runs thinlayer's tests.
#
#   tools/test.sh            lint, then every tier: plain, root, dm (in the VM
#                            unless this kernel has dm-thin), then the
#                            benchmark harness's smoke run (bench --quick)
#   tools/test.sh TIER...    only these: lint plain root dm bench
#
# Needs root (the root and dm tiers attach loop devices and mount). A tier
# that cannot run fails; nothing is skipped.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
cd "$REPO"

tiers=("$@")
((${#tiers[@]})) || tiers=(lint plain root dm bench)

"$HERE/setup.sh"

has_dm_thin() {
  grep -q ' device-mapper$' /proc/misc 2>/dev/null || return 1
  command -v dmsetup >/dev/null || return 1
  DM_DISABLE_UDEV=1 dmsetup targets 2>/dev/null | grep -q '^thin-pool' && return 0
  modprobe -q dm-thin-pool 2>/dev/null && DM_DISABLE_UDEV=1 dmsetup targets | grep -q '^thin-pool'
}

bench_outputs_ok() {
  local out=$1 ok=0 id
  for id in provision first-write metadata lookup containerd import; do
    grep -q "\"id\": \"$id\"" "$out/samples.json" || { echo "bench: no scenario $id in samples.json" >&2; ok=1; }
  done
  grep -q '"driver": "thin"' "$out/samples.json" && grep -q '"driver": "overlay"' "$out/samples.json" ||
    { echo "bench: a driver has no samples" >&2; ok=1; }
  grep -q '^## Headline' "$out/report.md" || { echo "bench: report.md has no headline table" >&2; ok=1; }
  for p in provision first-write lookup; do
    head -c 4 "$out/$p.svg" | grep -q '<svg' || { echo "bench: plot $p.svg missing" >&2; ok=1; }
  done
  return $ok
}

failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${tiers[@]}"; do
  echo "=== $t"
  case $t in
    lint)
      cargo fmt --all -- --check && cargo clippy --workspace --all-targets --quiet -- -D warnings || failed+=(lint) ;;
    plain|root)
      "$HERE/run-tier.sh" "$t" | tee -a "$log"; ((PIPESTATUS[0] == 0)) || failed+=("$t") ;;
    dm)
      if has_dm_thin; then
        "$HERE/run-tier.sh" dm | tee -a "$log"; ((PIPESTATUS[0] == 0)) || failed+=(dm)
      else
        echo "this kernel has no dm-thin: running the dm tier in the VM"
        "$REPO/vm-tests/dm-tier.sh" | tee -a "$log"; ((PIPESTATUS[0] == 0)) || failed+=(dm)
      fi ;;
    bench)
      # A smoke run of every scenario, checked for a whole report: samples
      # of both drivers in every scenario, the report, the plots.
      out=$REPO/target/bench-quick
      rm -rf "$out"
      if "$HERE/bench.sh" --quick --out "$out" && bench_outputs_ok "$out"; then
        echo "bench smoke: every scenario measured both drivers; report and plots in $out"
      else
        failed+=(bench)
      fi ;;
    *) echo "unknown tier '$t': use lint, plain, root, dm or bench" >&2; exit 2 ;;
  esac
done

# One closing line over all tiers, from each tier's own summary line.
sum() { sed -nE "s/^[a-z]+ tier: ([0-9]+) passed, ([0-9]+) failed$/\\$1/p" "$log" | awk '{s+=$1} END {print s+0}'; }
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
fi
echo "tests: $(sum 1) passed, $(sum 2) failed"
((${#failed[@]} == 0))
