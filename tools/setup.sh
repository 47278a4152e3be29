#!/usr/bin/env bash
# Installs everything thinlayer needs on a fresh Debian machine, idempotently.
# Every Debian package the project uses is named here and nowhere else.
set -euo pipefail

PACKAGES=(
  # bindgen for devicemapper-sys and loopdev-3
  libdevmapper-dev libclang1-14 libclang-common-14-dev pkg-config
  # filesystems made on thin devices, and the pool metadata tools
  e2fsprogs xfsprogs thin-provisioning-tools dmsetup
  # the VM that runs the dm tier: emulator, busybox initramfs, kernel modules
  qemu-system-x86 busybox-static cpio kmod zstd
  # a real OCI tool: builds test images and is the reference unpacker
  umoci skopeo attr
  # the benchmark's peer: LVM thin snapshots (lvcreate -s)
  lvm2
  # the demo reads JSON output with it
  python3
  # the snapshotter daemon: containerd's protobufs are compiled with protoc;
  # containerd's own snapshotter test suite (Go source) runs against it
  protobuf-compiler golang-go golang-github-containerd-containerd-dev
  # a real engine runs containers on thinlayer snapshots
  containerd runc
  # `man thinlayer-...` after tools/install.sh (and the test that reads a page)
  man-db
  # NFS volumes are tested against the kernel's NFS server in the VM
  # (exportfs, rpc.nfsd, rpc.mountd) and mounted with mount.nfs
  nfs-kernel-server nfs-common
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
