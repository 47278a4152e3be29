#!/usr/bin/env bash
# The kernel NFS server in the test VM, serving 127.0.0.1 only: what the NFS
# volume tests mount (tests/common/nfs.rs drives it).
#
#   vm-tests/nfs-server.sh start DIR   export DIR as the NFSv4 pseudo-root
#                                      (a client mounts 127.0.0.1:/ for DIR,
#                                      127.0.0.1:/sub for DIR/sub) and start
#                                      nfsd; NFSv4 only, TCP only
#   vm-tests/nfs-server.sh down        stop nfsd's threads: the server is gone
#                                      (connections refused), the export stays
#                                      for the next `start`
#   vm-tests/nfs-server.sh stop        stop nfsd and rpc.mountd, unexport all
#
# `start` is idempotent and also brings the server back after `down`. It
# shortens the NFSv4 grace and lease times to the kernel's minimum (10 s)
# and ends the grace period at once (/proc/fs/nfsd/v4_end_grace), so a
# fresh server serves opens immediately. State lives in /run/thinlayer-nfs
# (rpc.mountd's pid and log) and a tmpfs on /var/lib/nfs (exportfs's etab),
# since the guest's /var/lib is the host's, read-only.
#
# Runs only as root in the VM (THINLAYER_IN_VM=1, see vm-tests/run.sh): on
# any other machine it would take over that machine's NFS server. Needs
# nfs-kernel-server (tools/setup.sh) and the nfsd module (vm-tests/image.sh).
set -euo pipefail

STATE=/run/thinlayer-nfs
# NFSv4's grace and lease times in seconds: the kernel refuses less than 10.
GRACE=10

die() { echo "nfs-server.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

case ${1:-} in
  -h|--help) usage; exit 0 ;;
  start|down|stop) ;;
  *) usage >&2; exit 2 ;;
esac
[[ ${THINLAYER_IN_VM:-} == 1 ]] ||
  die "runs only in the test VM (THINLAYER_IN_VM=1): it takes over the machine's NFS server; use vm-tests/run.sh"
(($(id -u) == 0)) || die "needs root"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
for t in exportfs rpc.nfsd rpc.mountd; do
  command -v "$t" >/dev/null || die "$t not found: install nfs-kernel-server (tools/setup.sh)"
done

nfsd_fs() {
  [[ -d /proc/fs/nfsd ]] || die "this kernel has no nfsd (/proc/fs/nfsd): vm-tests/image.sh loads the nfsd module"
  [[ -e /proc/fs/nfsd/threads ]] || mount -t nfsd nfsd /proc/fs/nfsd ||
    die "cannot mount the nfsd filesystem on /proc/fs/nfsd"
}

threads() { cat /proc/fs/nfsd/threads 2>/dev/null || echo 0; }

mountd_pid() {
  local pid
  pid=$(cat "$STATE/mountd.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  local dir=${1:-}
  [[ -n $dir ]] || die "start needs the directory to export"
  [[ -d $dir ]] || die "$dir is not a directory"
  dir=$(realpath "$dir")
  nfsd_fs
  mkdir -p "$STATE"

  # Loopback: the VM has no other network.
  if command -v ip >/dev/null; then ip link set lo up; else busybox ip link set lo up; fi

  # exportfs and rpc.mountd keep their tables in /var/lib/nfs.
  if ! touch /var/lib/nfs/.writable 2>/dev/null; then
    mkdir -p /var/lib/nfs 2>/dev/null || :
    mount -t tmpfs -o mode=0755 tmpfs /var/lib/nfs || die "cannot put a tmpfs on /var/lib/nfs"
  fi
  rm -f /var/lib/nfs/.writable
  mkdir -p /var/lib/nfs/v4recovery
  touch /var/lib/nfs/etab /var/lib/nfs/rmtab

  # Grace and lease times can only be set while nfsd is stopped.
  if (($(threads) == 0)); then
    echo "$GRACE" >/proc/fs/nfsd/nfsv4gracetime
    echo "$GRACE" >/proc/fs/nfsd/nfsv4leasetime
  fi

  # One export, the pseudo-root: fsid=0 also gives a tmpfs (no UUID) the
  # file handle identity it needs.
  exportfs -ua
  exportfs -i -o fsid=0,crossmnt,rw,sync,no_root_squash,insecure,no_subtree_check "127.0.0.1:$dir" ||
    die "exportfs of $dir failed"

  # rpc.mountd answers the kernel's export-cache upcalls, NFSv4 included.
  if ! mountd_pid >/dev/null; then
    setsid rpc.mountd -F -N 3 --no-udp >"$STATE/mountd.log" 2>&1 </dev/null &
    echo $! >"$STATE/mountd.pid"
  fi
  # Tell a running mountd about the new export table.
  exportfs -f

  if (($(threads) == 0)); then
    rpc.nfsd -H 127.0.0.1 -N 3 --no-udp 4 || die "rpc.nfsd failed"
  fi
  (($(threads) > 0)) || die "nfsd did not start"
  # No client has state to reclaim: serve opens now, not after the grace time.
  if [[ -e /proc/fs/nfsd/v4_end_grace ]]; then
    echo Y >/proc/fs/nfsd/v4_end_grace
  else
    sleep "$GRACE"
  fi
  echo "nfs-server.sh: exporting $dir as 127.0.0.1:/ (NFSv4, nfsd threads: $(threads))"
}

down() {
  nfsd_fs
  rpc.nfsd 0
  (($(threads) == 0)) || die "nfsd still has threads"
}

stop() {
  local pid
  nfsd_fs
  rpc.nfsd 0 || :
  exportfs -ua || :
  if pid=$(mountd_pid); then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$STATE/mountd.pid"
}

case $1 in
  start) shift; start "$@" ;;
  down) down ;;
  stop) stop ;;
esac
