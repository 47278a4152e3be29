#!/usr/bin/env bash
# Runs one tier of thinlayer's tests. A test's tier is the first word of its
# function name: plain_*, root_*, dm_* (the full libtest name matches
# `(^|::)TIER_`, so tests may sit in modules).
#
#   tools/run-tier.sh TIER [--no-build] [--vm-driven only|skip] [--print-selected]
#                     [FILTER...] [LIBTEST-FLAG...] [-- LIBTEST-ARGS...]
#   tools/run-tier.sh --build-only
#
#   TIER          plain | root | dm
#   FILTER        keep only tests whose name contains one of the FILTERs
#   --no-build    don't run cargo: use the binaries listed by the last build
#                 (what the VM does: its view of the repo is read-only)
#   --build-only  build the test binaries and write the list, run nothing
#   --vm-driven only|skip
#                 only the tests of test targets named vm_*, or all but them.
#                 Those boot their own VMs with vm-tests/run.sh (a power cut
#                 needs a host to pull the plug), so they run on the host,
#                 never in the guest: vm-tests/dm-tier.sh runs the rest in the
#                 VM with `skip`, then these on the host with `only`
#   --print-selected
#                 print the names of the tests that would run, one a line, run
#                 nothing; exit 0 even if there are none
#   LIBTEST-FLAG  any other -x/--xyz argument (e.g. --nocapture,
#                 --test-threads=1) is passed to every test binary; so is
#                 everything after --
#
# Build = `cargo test --workspace --no-run --message-format=json-render-diagnostics`
# in the repo (plus $THINLAYER_CARGO_ARGS, word-split); the test executables it
# reports go to the list file ${THINLAYER_TIER_LIST:-$REPO/target/tier-bins.txt}
# (lines: executable TAB manifest-dir TAB target-name TAB kind).
# Each binary runs in its crate's manifest dir with CARGO_MANIFEST_DIR set, with
# `--exact` and the selected names. The last line printed is
#   TIER tier: N passed, M failed
# Exit status: 0 if all passed; 1 if any failed or none was selected; 2 usage.
# REPO is $THINLAYER_REPO if set, else the repo this script is in.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${THINLAYER_REPO:-$(cd "$HERE/.." && pwd)}
LIST=${THINLAYER_TIER_LIST:-$REPO/target/tier-bins.txt}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

tier= build=1 build_only=0 vm_driven= print_selected=0
filters=() testargs=()
while (($#)); do
  case $1 in
    --no-build) build=0 ;;
    --build-only) build_only=1 ;;
    --vm-driven)
      vm_driven=${2:-}
      [[ $vm_driven == only || $vm_driven == skip ]] ||
        { echo "run-tier.sh: --vm-driven takes only or skip" >&2; exit 2; }
      shift ;;
    --print-selected) print_selected=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; testargs+=("$@"); break ;;
    -*) testargs+=("$1") ;;
    *) if [[ -z $tier ]]; then tier=$1; else filters+=("$1"); fi ;;
  esac
  shift
done

if ((build_only)); then
  [[ -z $tier ]] || { echo "run-tier.sh: --build-only takes no tier" >&2; exit 2; }
  build=1
else
  case $tier in
    plain|root|dm) ;;
    '') echo "run-tier.sh: no tier given" >&2; usage >&2; exit 2 ;;
    *) echo "run-tier.sh: unknown tier '$tier' (plain, root or dm)" >&2; exit 2 ;;
  esac
fi

do_build() {
  local json
  mkdir -p "$(dirname "$LIST")"
  json=$(mktemp)
  echo "run-tier.sh: building test binaries in $REPO" >&2
  # shellcheck disable=SC2086  # THINLAYER_CARGO_ARGS is a word list
  if ! (cd "$REPO" && cargo test --workspace --no-run \
    --message-format=json-render-diagnostics ${THINLAYER_CARGO_ARGS:-}) >"$json"; then
    rm -f "$json"
    echo "run-tier.sh: cargo test --no-run failed" >&2
    return 1
  fi
  python3 - "$json" >"$LIST.tmp" <<'PY'
import json, os, sys
seen = set()
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not (m.get("profile") or {}).get("test"):
        continue
    exe = m["executable"]
    if exe in seen:
        continue
    seen.add(exe)
    t = m.get("target") or {}
    print("\t".join([exe, os.path.dirname(m["manifest_path"]), t.get("name", "?"),
                     ",".join(t.get("kind", []))]))
PY
  rm -f "$json"
  mv "$LIST.tmp" "$LIST"
  echo "run-tier.sh: $(wc -l <"$LIST") test binaries listed in $LIST" >&2
  # containerd's snapshotter suite (Go), which the snapshotter tests run.
  "$HERE/build-containerd-suite.sh" || return 1
}

if ((build)); then
  do_build || exit 1
  ((build_only)) && exit 0
elif [[ ! -f $LIST ]]; then
  echo "run-tier.sh: no list of test binaries at $LIST; run 'tools/run-tier.sh --build-only' first" >&2
  exit 1
fi

if [[ $tier == dm && -z ${THINLAYER_IN_VM:-} && $vm_driven != only ]] && ((!print_selected)) && ! grep -qw device-mapper /proc/misc 2>/dev/null; then
  echo "run-tier.sh: note: this kernel has no device-mapper; the dm tier is meant to run in the VM: vm-tests/dm-tier.sh" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The tests see thinlayer's built-in defaults, never this machine's
# /etc/thinlayer/config.toml (a test of the file names its own).
export THINLAYER_CONFIG=/dev/null

passed=0 failed=0 ignored=0 selected=0
while IFS=$'\t' read -r exe mdir tname kind; do
  [[ -n $exe ]] || continue
  case $vm_driven in
    only) [[ $tname == vm_* ]] || continue ;;
    skip) [[ $tname != vm_* ]] || continue ;;
  esac
  if [[ ! -x $exe ]]; then
    echo "run-tier.sh: ERROR: listed test binary $exe is missing (stale list? rebuild)" >&2
    failed=$((failed + 1)); continue
  fi
  if ! (cd "$mdir" && CARGO_MANIFEST_DIR=$mdir "$exe" --list --format terse) >"$tmp/list" 2>"$tmp/list.err"; then
    echo "run-tier.sh: ERROR: '$exe --list --format terse' failed:" >&2
    cat "$tmp/list.err" >&2
    failed=$((failed + 1)); continue
  fi
  # A test without a tier prefix would silently never run: it fails the
  # plain tier (every CI run has it) with its name.
  if [[ $tier == plain ]]; then
    sed -n 's/: test$//p' "$tmp/list" | grep -Ev '(^|::)(plain|root|dm)_' >"$tmp/untiered" || :
    while IFS= read -r t; do
      echo "run-tier.sh: ERROR: test $t in $tname has no tier prefix (plain_, root_, dm_): no tier runs it" >&2
      failed=$((failed + 1))
    done <"$tmp/untiered"
  fi
  sed -n 's/: test$//p' "$tmp/list" | grep -E "(^|::)${tier}_" >"$tmp/sel" || :
  if ((${#filters[@]})); then
    fargs=(); for f in "${filters[@]}"; do fargs+=(-e "$f"); done
    grep -F "${fargs[@]}" "$tmp/sel" >"$tmp/sel2" || :
    mv "$tmp/sel2" "$tmp/sel"
  fi
  mapfile -t sel <"$tmp/sel"
  ((${#sel[@]})) || continue
  if ((print_selected)); then
    printf '%s\n' "${sel[@]}"
    continue
  fi
  selected=$((selected + ${#sel[@]}))

  echo "=== $tier tier: ${#sel[@]} test(s) from $tname ($kind): $exe"
  set +e
  (cd "$mdir" && CARGO_MANIFEST_DIR=$mdir "$exe" --exact "${testargs[@]}" "${sel[@]}") | tee "$tmp/out"
  rc=${PIPESTATUS[0]}
  set -e
  summary=$(grep -E '^test result: ' "$tmp/out" | tail -n1 || :)
  p=$(sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p' <<<"$summary")
  f=$(sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p' <<<"$summary")
  i=$(sed -n 's/.* \([0-9][0-9]*\) ignored;.*/\1/p' <<<"$summary")
  p=${p:-0} f=${f:-0} i=${i:-0}
  if ((rc != 0 && f == 0)); then
    # Crashed (signal, abort, panic outside a test) before/after its summary.
    f=$((${#sel[@]} - p - i)); ((f > 0)) || f=1
    echo "run-tier.sh: ERROR: $exe exited with status $rc; counting $f test(s) as failed" >&2
  fi
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done <"$LIST"

((print_selected)) && exit 0
status=0
if ((selected == 0)); then
  echo "run-tier.sh: ERROR: no $tier tests selected${filters[*]:+ (filters: ${filters[*]})} in the $(wc -l <"$LIST") binaries of $LIST" >&2
  status=1
fi
((ignored == 0)) || echo "($ignored $tier test(s) ignored)"
((failed == 0)) || status=1
echo "$tier tier: $passed passed, $failed failed"
exit $status
