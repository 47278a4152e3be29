#!/usr/bin/env bash
# The demo's commands, run by tools/demo.sh on a kernel with dm-thin (the
# host, or the VM). Each step prints the command, then its output.
#
#   THINLAYER_ROOT=DIR tools/demo-flow.sh PATH-TO-THINLAYER
set -euo pipefail
BIN=${1:?usage: demo-flow.sh PATH-TO-THINLAYER}
: "${THINLAYER_ROOT:?set THINLAYER_ROOT}"

step() {
  printf '\n$ thinlayer %s\n' "$*"
  "$BIN" "$@"
}

echo "thinlayer demo, state in $THINLAYER_ROOT"
step pool create --data-size 2G
step pool status
step pool grow --data-size +1G
step pool status --json
step pool deactivate
step pool status
step pool activate
step pool status
step pool destroy
printf '\n$ thinlayer pool status   (expected to fail: the pool is gone)\n'
if "$BIN" pool status; then exit 1; fi
echo
echo "demo finished"
