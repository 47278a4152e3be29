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
  local out=$1 ok=0 p
  # Every scenario, each with samples of both drivers; the floors and peers.
  python3 - "$out/samples.json" <<'PY' || ok=1
import json, sys
run = json.load(open(sys.argv[1]))
got = {s["id"]: s for s in run["scenarios"]}
bad = []
want = "provision first-write metadata new-data lookup page-cache space delete containerd import".split()
for sid in want:
    s = got.get(sid)
    if s is None:
        bad.append(f"no scenario {sid}")
        continue
    drivers = {x["driver"].split(" ")[0] for x in s["series"] if x["samples"]}
    for d in ("thin", "overlay"):
        if d not in drivers:
            bad.append(f"scenario {sid} has no {d} samples")
extra = {"provision": ("dmsetup", "dm-ioctl", "lvm"), "new-data": ("linear",)}
for sid, names in extra.items():
    drivers = {x["driver"] for x in got.get(sid, {"series": []})["series"] if x["samples"]}
    bad += [f"scenario {sid} has no {n} samples" for n in names if n not in drivers]
for b in bad:
    print("bench:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
  grep -q '^## Headline' "$out/report.md" || { echo "bench: report.md has no headline table" >&2; ok=1; }
  for p in provision first-write lookup page-cache; do
    head -c 4 "$out/$p.svg" | grep -q '<svg' || { echo "bench: plot $p.svg missing" >&2; ok=1; }
  done
  return $ok
}

failed=()
times=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${tiers[@]}"; do
  echo "=== $t"
  start=$SECONDS
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
  times+=("$t $((SECONDS - start)) s")
done

# One closing line over all tiers, from each tier's own summary line.
sum() { sed -nE "s/^[a-z]+ tier: ([0-9]+) passed, ([0-9]+) failed$/\\$1/p" "$log" | awk '{s+=$1} END {print s+0}'; }
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
fi
# Where the run's time went (builds included), for keeping it short.
echo "time: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); all $SECONDS s"
echo "tests: $(sum 1) passed, $(sum 2) failed"
((${#failed[@]} == 0))
