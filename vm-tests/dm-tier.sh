#!/usr/bin/env bash
# Runs the dm tier: builds the test binaries on the host, then boots the VM
# ONCE and runs `tools/run-tier.sh dm --no-build ARGS...` in it; then, on the
# host, the dm tests that boot their own VMs (test targets named vm_*, e.g.
# the power-cut test: a host must pull the plug).
#
#   vm-tests/dm-tier.sh [FILTER...] [LIBTEST-FLAG...]     e.g. vm-tests/dm-tier.sh dm_pool_create
#
# Options for the VM (before the filters): --timeout SECS (default 1800),
# --mem SIZE, --cpus N, --verbose; see vm-tests/run.sh.
# The workspace is $THINLAYER_REPO if set, else this repo. Exit status: the
# tier's (non-zero if either part failed, or if the filters select nothing);
# each part prints its own `dm tier: N passed, M failed` line.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${THINLAYER_REPO:-$(cd "$HERE/.." && pwd)}
export THINLAYER_REPO=$REPO
export THINLAYER_TIER_LIST=${THINLAYER_TIER_LIST:-$REPO/target/tier-bins.txt}
RUN_TIER="$HERE/../tools/run-tier.sh"

vmopts=(--timeout 1800)
while (($#)); do
  case $1 in
    --timeout|--mem|--cpus) vmopts+=("$1" "${2:?}"); shift 2 ;;
    --verbose) vmopts+=("$1"); shift ;;
    *) break ;;
  esac
done

"$RUN_TIER" --build-only

# The guest sees the host's / read-only, but its /tmp and /var/tmp are fresh:
# share the workspace and the test binaries' dirs in case they live there.
shares=(--share "$REPO" --share "$(dirname "$THINLAYER_TIER_LIST")")
while IFS=$'\t' read -r exe mdir _; do
  [[ -n $exe ]] && shares+=(--share "$(dirname "$(dirname "$exe")")" --share "$mdir")
done <"$THINLAYER_TIER_LIST"

in_guest=$("$RUN_TIER" dm --no-build --vm-driven skip --print-selected "$@" | wc -l)
on_host=$("$RUN_TIER" dm --no-build --vm-driven only --print-selected "$@" | wc -l)
if ((in_guest + on_host == 0)); then
  echo "dm-tier.sh: ERROR: no dm tests selected${*:+ (arguments: $*)}" >&2
  exit 1
fi

cd "$REPO"
status=0
if ((in_guest)); then
  "$HERE/run.sh" "${vmopts[@]}" "${shares[@]}" -- \
    "$(cd "$(dirname "$RUN_TIER")" && pwd)/run-tier.sh" dm --no-build --vm-driven skip "$@" || status=$?
fi
if ((on_host)); then
  echo "=== dm tier on the host: $on_host test(s) that boot their own VMs"
  "$RUN_TIER" dm --no-build --vm-driven only "$@" || ((status)) || status=1
fi
exit $status
