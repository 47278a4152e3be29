#!/usr/bin/env bash
# Runs one command as root in a throwaway QEMU (TCG) VM that has device-mapper.
#
#   vm-tests/run.sh [OPTIONS] -- CMD [ARGS...]
#   vm-tests/run.sh [OPTIONS] --script FILE [ARGS...]
#
# The guest is Debian's kernel with a busybox initramfs (vm-tests/image.sh,
# cached); it loads loop, dm-mod, dm-thin-pool, ext4, xfs, overlay and 9p,
# mounts the host's / read-only over 9p, gives it fresh tmpfs /run /tmp
# /var/tmp, chroots there and runs CMD in the caller's cwd with
#   DM_DISABLE_UDEV=1 THINLAYER_IN_VM=1 THINLAYER_ROOT=/tmp/thinlayer HOME=/root
# plus the caller's THINLAYER_*, RUST_BACKTRACE, RUST_LOG, RUST_TEST_THREADS.
# CMD's stdout+stderr (merged) stream to stdout; run.sh exits with CMD's
# status, 124 if --timeout expired, 125 if the VM died without reporting one
# (kernel panic, init failure, qemu error).
#
# Options:
#   --timeout SECS   kill the VM after SECS seconds (default 600; 0 = none)
#   --mem SIZE       guest memory (default 4G)
#   --cpus N         guest CPUs (default 2)
#   --share PATH     host PATH under /tmp or /var/tmp to show (read-only) in the
#                    guest at the same path; the cwd is shared automatically.
#                    Other host paths are always visible (read-only).
#   --out DIR        host DIR (made if missing) shown WRITABLE in the guest at
#                    the same path: where a job leaves results for the host
#   --disk SIZE      a fresh sparse disk of SIZE (e.g. 40G, a file in the host's
#                    /tmp, deleted after) formatted ext4 and mounted at
#                    /var/tmp/disk in the guest: real block I/O and a real page
#                    cache, where the tmpfs /tmp would keep everything in memory
#   --keep-disk FILE the --disk is the host's FILE, kept after the VM stops: made
#                    (sparse, of --disk SIZE) and formatted when FILE does not
#                    exist, else mounted as it is (a journal left by a VM that
#                    died is replayed), so a next VM sees what this one wrote
#   --power-cut-after ERE SECS
#                    cut the power: SECS seconds (e.g. 2.5) after the first
#                    console line matching the extended regex ERE, SIGKILL QEMU
#                    itself (no shutdown, no sync in the guest; what QEMU had
#                    written to the disk's file stays, what the guest had not
#                    yet written is lost). Exit status 137 and a `run.sh: POWER
#                    CUT` line when it struck; the command's status as usual if
#                    the guest finished first. The last line of the output may
#                    be cut short.
#   --script FILE    copy FILE into the guest and run it with bash, ARGS after it
#   --verbose        full kernel log and init progress on the console
#
# Host /tmp is NOT visible in the guest (fresh tmpfs) except through --share.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${THINLAYER_VM_DIR:-$REPO/target/vm}

timeout_s=600 mem=4G cpus=2 script= verbose=0 out= disk= keep_disk= cut_re= cut_after=
shares=()
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while (($#)); do
  case $1 in
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --mem) mem=${2:?}; shift 2 ;;
    --mem=*) mem=${1#*=}; shift ;;
    --cpus) cpus=${2:?}; shift 2 ;;
    --cpus=*) cpus=${1#*=}; shift ;;
    --share) shares+=("$(realpath -m "${2:?}")"); shift 2 ;;
    --share=*) shares+=("$(realpath -m "${1#*=}")"); shift ;;
    --out) out=$(realpath -m "${2:?}"); shift 2 ;;
    --out=*) out=$(realpath -m "${1#*=}"); shift ;;
    --disk) disk=${2:?}; shift 2 ;;
    --disk=*) disk=${1#*=}; shift ;;
    --keep-disk) keep_disk=$(realpath -m "${2:?}"); shift 2 ;;
    --keep-disk=*) keep_disk=$(realpath -m "${1#*=}"); shift ;;
    --power-cut-after) cut_re=${2:?}; cut_after=${3:?}; shift 3 ;;
    --script) script=${2:?}; shift 2; break ;;
    --script=*) script=${1#*=}; shift; break ;;
    --verbose) verbose=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1 (the command goes after --)" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n $script && ${1:-} == -- ]] && shift
if [[ -z $script ]] && (($# == 0)); then
  echo "run.sh: no command given" >&2; usage >&2; exit 2
fi
if [[ -n $script && ! -f $script ]]; then
  echo "run.sh: no such script: $script" >&2; exit 2
fi
[[ $timeout_s =~ ^[0-9]+$ ]] || { echo "run.sh: bad --timeout $timeout_s" >&2; exit 2; }
[[ -z $disk || $disk =~ ^[0-9]+[KMGT]?$ ]] || { echo "run.sh: bad --disk $disk (use e.g. 40G)" >&2; exit 2; }
if [[ -n $keep_disk && ! -e $keep_disk && -z $disk ]]; then
  echo "run.sh: --keep-disk $keep_disk does not exist yet: give its size with --disk SIZE" >&2; exit 2
fi
if [[ -n $cut_re ]]; then
  [[ $cut_after =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run.sh: bad --power-cut-after delay $cut_after (seconds, e.g. 2.5)" >&2; exit 2; }
  # An ERE awk rejects would otherwise only show as a cut that never came.
  awk -v re="$cut_re" 'BEGIN { if ("" ~ re) {} }' </dev/null 2>/dev/null ||
    { echo "run.sh: bad --power-cut-after regex: $cut_re" >&2; exit 2; }
fi

"$HERE/image.sh"
# shellcheck disable=SC1091
. "$CACHE/image.env"

T=$(mktemp -d /tmp/thinlayer-vm.XXXXXX)
cleanup() {
  local pid
  [[ -z ${cutter:-} ]] || kill "$cutter" 2>/dev/null || :
  # Interrupted (INT/TERM): take the VM down with us.
  if pid=$(cat "$T/qemu.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null; sleep 0.5; kill -9 "$pid" 2>/dev/null
  fi
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# POSIX single-quoting for the job script (run by the host's /bin/sh).
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

cwd=$(pwd -P)
shares+=("$cwd")

path="/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if cargo=$(command -v cargo 2>/dev/null); then
  d=$(dirname "$(realpath "$cargo")")
  case ":$path:" in *":$d:"*) ;; *) path="$d:$path" ;; esac
  d=$(dirname "$cargo")
  case ":$path:" in *":$d:"*) ;; *) path="$d:$path" ;; esac
fi
[[ -d /usr/local/cargo/bin && ":$path:" != *":/usr/local/cargo/bin:"* ]] && path="/usr/local/cargo/bin:$path"

mkdir -p "$T/cpio/thinlayer"
job="$T/cpio/thinlayer/job.sh"
{
  echo "# generated by vm-tests/run.sh"
  echo "export PATH=$(q "$path") HOME=/root TERM=dumb LANG=C.UTF-8"
  echo "export DM_DISABLE_UDEV=1 THINLAYER_ROOT=/tmp/thinlayer"
  while IFS= read -r var; do
    case $var in
      THINLAYER_IN_VM) ;;
      THINLAYER_*|RUST_BACKTRACE|RUST_LOG|RUST_TEST_THREADS) echo "export $var=$(q "${!var}")" ;;
    esac
  done < <(compgen -e)
  echo "export THINLAYER_IN_VM=1"
  echo "cd $(q "$cwd") || { echo \"thinlayer-vm: cannot cd to the caller's cwd in the guest\" >&2; exit 125; }"
  if [[ -n $script ]]; then
    cp "$script" "$T/cpio/thinlayer/script"
    printf 'exec /bin/bash /run/thinlayer/script'
  else
    printf 'exec'
  fi
  for a in "$@"; do printf ' %s' "$(q "$a")"; done
  echo
} >"$job"

nonce=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
{
  echo "NONCE=$nonce"
  echo "VERBOSE=$verbose"
  echo "SHARES=$(q "$(printf '%s\n' "${shares[@]}")")"
  echo "OUT=$(q "$out")"
  echo "DISK=$([[ -n $disk || -n $keep_disk ]] && echo /var/tmp/disk)"
  # A kept disk that already exists holds the last VM's files: mount, never format.
  echo "DISK_FORMAT=$([[ -n $keep_disk && -e $keep_disk ]] && echo 0 || echo 1)"
} >"$T/cpio/thinlayer/job.conf"

# Base initramfs + a second cpio archive with the job (the kernel unpacks both).
(cd "$T/cpio" && find thinlayer | cpio -o -H newc -R 0:0 --quiet) >"$T/job.cpio"
cat "$CACHE/initramfs.cpio" "$T/job.cpio" >"$T/initrd"

if ((verbose)); then
  append="console=ttyS0 loglevel=7"
else
  # loglevel=4: kernel errors (dm, I/O, oops, panic) still reach the console.
  append="console=ttyS0 quiet loglevel=4"
fi
append+=" panic=-1 mitigations=off random.trust_cpu=on i8042.noaux i8042.nokbd i8042.nopnp"

qemu=(
  qemu-system-x86_64
  -nodefaults -no-user-config
  -machine pc -accel tcg -cpu max -smp "$cpus" -m "$mem"
  -display none -monitor none -serial stdio -no-reboot
  -kernel "$CACHE/${BOOT_KERNEL:-vmlinuz}" -initrd "$T/initrd" -append "$append"
  -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap"
  -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
)
if [[ -n $out ]]; then
  mkdir -p "$out"
  qemu+=(
    -fsdev "local,id=out,path=$out,security_model=passthrough,multidevs=remap"
    -device "virtio-9p-pci,fsdev=out,mount_tag=out"
  )
fi

if [[ -n $keep_disk ]]; then
  [[ -e $keep_disk ]] || truncate -s "$disk" "$keep_disk"
  qemu+=(-drive "file=$keep_disk,if=virtio,format=raw,cache=writeback,discard=unmap")
elif [[ -n $disk ]]; then
  truncate -s "$disk" "$T/disk.img"
  qemu+=(-drive "file=$T/disk.img,if=virtio,format=raw,cache=writeback,discard=unmap")
fi
# QEMU's own pid (qemu.pid is the timeout wrapper's): what a power cut kills.
qemu+=(-pidfile "$T/qemu.self.pid")

# The power cut: awk (below) touches cut.go at the first line matching the
# ERE; this waits for it, then SECS more, then SIGKILLs QEMU, if it is still
# this run's QEMU (its command line names this run's directory).
cutter=
if [[ -n $cut_re ]]; then
  (
    while [[ ! -e $T/cut.go ]]; do sleep 0.05; done
    sleep "$cut_after"
    pid=$(cat "$T/qemu.self.pid" 2>/dev/null) || exit 0
    grep -qF "$T/initrd" "/proc/$pid/cmdline" 2>/dev/null || exit 0
    echo "$pid" >"$T/cut.done"
    kill -9 "$pid"
  ) &
  cutter=$!
fi

statusf="$T/status"
# mawk (Debian's awk) reads its input in big blocks unless told not to: the
# guest's lines would reach the caller minutes late.
awk_interactive=()
awk -W version 2>&1 | grep -q mawk && awk_interactive=(-W interactive)
start=$(date +%s.%N)
# qemu's stdin is /dev/null: it never touches the terminal and needs none.
# The filter strips CRs, hides the status marker line and records the status.
# Run in the background and `wait`, so that INT/TERM traps run at once.
set +e
{
  if ((timeout_s > 0)); then
    timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" &
  else
    "${qemu[@]}" &
  fi
  echo $! >"$T/qemu.pid"
  # 2>/dev/null: no "Killed" job notice from bash after a power cut.
  wait $! 2>/dev/null
  echo $? >"$T/qemu.rc"
} </dev/null | awk "${awk_interactive[@]}" -v marker="THINLAYER-VM-EXIT $nonce" -v sf="$statusf" \
  -v cut_re="$cut_re" -v cut_go="$T/cut.go" '
  { sub(/\r+$/, "") }
  cut_re != "" && !cut_armed && $0 ~ cut_re { cut_armed = 1; printf "" > cut_go; close(cut_go) }
  (i = index($0, marker)) {
    rest = substr($0, i + length(marker))
    if (match(rest, /^ [0-9]+/)) {
      print substr(rest, 2, RLENGTH - 1) > sf; close(sf)
      if (i > 1) print substr($0, 1, i - 1)
      fflush(); next
    }
  }
  /^\[ *[0-9.]+\] reboot: Power down$/ { next }
  { print; fflush() }' &
wait $!
set -e
if [[ -n $cutter ]]; then
  kill "$cutter" 2>/dev/null || :
  wait "$cutter" 2>/dev/null || :
  cutter=
fi
elapsed=$(echo "$(date +%s.%N) $start" | awk '{printf "%.1f", $1 - $2}')
qrc=$(cat "$T/qemu.rc" 2>/dev/null || echo '?')

if [[ -s $statusf ]]; then
  rc=$(cat "$statusf")
  ((verbose)) && echo "run.sh: guest command exited with status $rc (VM ran ${elapsed}s)" >&2
  exit "$rc"
fi
if [[ -s $T/cut.done ]]; then
  echo "run.sh: POWER CUT: killed QEMU (SIGKILL) ${cut_after}s after the first line matching '$cut_re'; VM ran ${elapsed}s" >&2
  exit 137
fi
if [[ $qrc == 124 || $qrc == 137 ]]; then
  echo "run.sh: TIMEOUT: the VM did not finish within ${timeout_s}s; killed it (command: $*)" >&2
  exit 124
fi
echo "run.sh: VM FAILED: it stopped after ${elapsed}s (qemu status $qrc) without reporting the command's exit status (kernel panic or init failure? see output above)" >&2
exit 125
