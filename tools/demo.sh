#!/usr/bin/env bash
# Sets up the machine, builds thinlayer and runs the demo of the whole flow:
# natively where the kernel has dm-thin, in the VM otherwise.
#
#   tools/demo.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
cd "$REPO"

"$HERE/setup.sh"
cargo build --quiet --bin thinlayer
BIN=$REPO/target/debug/thinlayer

if grep -q ' device-mapper$' /proc/misc 2>/dev/null && { modprobe -q dm-thin-pool 2>/dev/null; DM_DISABLE_UDEV=1 dmsetup targets | grep -q '^thin-pool'; }; then
  root=$(mktemp -d /tmp/thinlayer-demo.XXXXXX)
  trap '"$BIN" --root "$root" pool destroy --force >/dev/null 2>&1 || true; rm -rf "$root"' EXIT
  THINLAYER_ROOT=$root bash "$HERE/demo-flow.sh" "$BIN"
else
  echo "This kernel has no device-mapper thin target: running the demo in a VM (QEMU, software emulation)."
  "$REPO/vm-tests/run.sh" --timeout 900 -- bash "$HERE/demo-flow.sh" "$BIN"
fi
