#!/usr/bin/env bash
# Builds (and caches) the kernel + initramfs that vm-tests/run.sh boots.
#
#   vm-tests/image.sh            build if needed, print nothing when cached
#   vm-tests/image.sh --print    same, then print the cache's image.env
#   vm-tests/image.sh --force    rebuild the initramfs even if cached
#
# Cache dir: ${THINLAYER_VM_DIR:-$REPO/target/vm}. Outputs there:
#   vmlinuz (bzImage), vmlinux (the same kernel uncompressed, booted via PVH:
#   ~4 s faster under TCG), initramfs.cpio, image.env (KVER=, BOOT_KERNEL=...)
# The kernel is Debian's linux-image-amd64 (resolved to its concrete
# linux-image-X-amd64 package with apt-cache; override the package name with
# THINLAYER_VM_KERNEL_PKG), fetched with `apt-get download` and unpacked into
# the cache. Nothing is installed on the host.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# REPO is the repo these scripts live in (not THINLAYER_REPO: the image does
# not depend on which workspace is tested).
REPO=$(cd "$HERE/.." && pwd)
CACHE=${THINLAYER_VM_DIR:-$REPO/target/vm}
INIT="$HERE/init"

# Modules the guest loads at boot, in this order, each after its dependencies
# from modules.dep. crc32c_generic first: ext4/jbd2/libcrc32c only have a soft
# dependency on a crc32c implementation, and there is no modprobe at boot.
MODULES=(
  crc32c_generic
  virtio_pci 9pnet_virtio 9p virtio_blk
  loop
  dm-mod dm-thin-pool dm-snapshot
  ext4 xfs overlay
  # NFS volumes: the kernel's NFS server and its NFSv4 client (nfs, sunrpc,
  # lockd, grace, auth_rpcgss, ... come from modules.dep)
  nfsd nfsv4
)

force=0 print=0
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    --print) print=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

say() { echo "image.sh: $*" >&2; }
die() { echo "image.sh: error: $*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# --- resolve the kernel package -------------------------------------------
resolve_pkg() {
  local pkg ver
  if [[ -n ${THINLAYER_VM_KERNEL_PKG:-} ]]; then
    pkg=$THINLAYER_VM_KERNEL_PKG
  else
    pkg=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
      sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -n1)
    [[ -n $pkg ]] || pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
  fi
  [[ -n $pkg ]] || return 1
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  [[ -n $ver ]] || return 1
  echo "$pkg $ver"
}

# apt-cache takes ~1 s here (no binary pkgcache): remember its answer for as
# long as the apt lists are unchanged.
apt_stamp=$( { echo "${THINLAYER_VM_KERNEL_PKG:-}"
  stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* /var/cache/apt/*.bin 2>/dev/null || :; } | sha256sum | cut -c1-16)
pv=
if [[ -f $CACHE/apt-resolved ]]; then
  read -r stamp p v <"$CACHE/apt-resolved" || :
  [[ $stamp == "$apt_stamp" && -n ${v:-} ]] && pv="$p $v"
fi
if [[ -n $pv ]] || { pv=$(resolve_pkg) && echo "$apt_stamp $pv" >"$CACHE/apt-resolved"; }; then
  read -r PKG PKGVER <<<"$pv"
elif [[ -f $CACHE/image.env && -f $CACHE/vmlinuz && -f $CACHE/initramfs.cpio ]]; then
  # No apt lists (e.g. `apt-get update` not run): keep using what we have.
  # shellcheck disable=SC1091
  . "$CACHE/image.env"
  PKG=$KERNEL_PKG PKGVER=$KERNEL_VERSION
else
  die "cannot resolve linux-image-amd64 with apt-cache (run 'apt-get update' first)"
fi
KVER=${PKG#linux-image-}

hash_inputs() { cat "$INIT" "$HERE/image.sh" | sha256sum | cut -c1-16; }
KEY="$PKG $PKGVER $(hash_inputs)"

if ((!force)) && [[ -f $CACHE/key && $(cat "$CACHE/key") == "$KEY" &&
  -f $CACHE/vmlinuz && -f $CACHE/initramfs.cpio && -f $CACHE/image.env ]]; then
  ((print)) && cat "$CACHE/image.env"
  exit 0
fi

# --- kernel: download + unpack + depmod (keyed on package version) ---------
KROOT="$CACHE/kernel/$PKG"_"$PKGVER"
MODDIR="$KROOT/lib/modules/$KVER"
if [[ ! -f $KROOT/.complete ]]; then
  rm -rf "$CACHE/kernel" "$CACHE/deb"
  mkdir -p "$CACHE/deb" "$KROOT"
  say "downloading $PKG=$PKGVER"
  (cd "$CACHE/deb" && apt-get download -q -o APT::Sandbox::User=root "$PKG=$PKGVER" >/dev/null) ||
    die "apt-get download $PKG=$PKGVER failed"
  deb=$(ls "$CACHE/deb/"*.deb)
  say "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$KROOT"
  [[ -d $MODDIR ]] || MODDIR=$(ls -d "$KROOT"/usr/lib/modules/"$KVER" 2>/dev/null) ||
    die "no lib/modules/$KVER in $deb"
  depmod -b "$KROOT" "$KVER" 2>/dev/null ||
    depmod -b "$KROOT/usr" "$KVER" || die "depmod failed"
  rm -rf "$CACHE/deb"   # 70 MB we no longer need; the unpacked tree is the cache
  touch "$KROOT/.complete"
fi
[[ -d $MODDIR ]] || MODDIR="$KROOT/usr/lib/modules/$KVER"
[[ -f $MODDIR/modules.dep ]] || die "missing $MODDIR/modules.dep"
VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
[[ -f $VMLINUZ ]] || die "missing $VMLINUZ"

# --- initramfs -------------------------------------------------------------
say "building initramfs for $KVER"
STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,newroot,hosttmp,hostvartmp,thinlayer,lib/modules}

BUSYBOX=$(command -v busybox) || die "busybox not found (Debian package busybox-static)"
cp "$BUSYBOX" "$STAGE/bin/busybox"
file_out=$(LC_ALL=C file -b "$STAGE/bin/busybox" 2>/dev/null || true)
[[ -z $file_out || $file_out == *static* ]] || die "$BUSYBOX is not static (install busybox-static)"
for applet in $("$STAGE/bin/busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$STAGE/bin/$applet"
done
install -m 0755 "$INIT" "$STAGE/init"

# Resolve modules + dependencies in load order (depth-first over modules.dep).
declare -A path_of=() deps_of=() seen=()
while IFS= read -r line; do
  mod=${line%%:*}
  name=${mod##*/}; name=${name%%.ko*}; name=${name//-/_}
  path_of[$name]=$mod
  deps_of[$name]=${line#*:}
done <"$MODDIR/modules.dep"
declare -A builtin=()
while IFS= read -r mod; do
  name=${mod##*/}; name=${name%%.ko*}; builtin[${name//-/_}]=1
done <"$MODDIR/modules.builtin"

order=()
visit() {
  local name=${1//-/_} d
  [[ -n ${seen[$name]:-} ]] && return 0
  seen[$name]=1
  if [[ -z ${path_of[$name]:-} ]]; then
    [[ -n ${builtin[$name]:-} ]] && return 0
    die "module $1 not found in $MODDIR/modules.dep"
  fi
  for d in ${deps_of[$name]}; do
    d=${d##*/}; visit "${d%%.ko*}"
  done
  order+=("$name")
}
for m in "${MODULES[@]}"; do visit "$m"; done

: >"$STAGE/modules.list"
for name in "${order[@]}"; do
  src="$MODDIR/${path_of[$name]}"
  dst="$STAGE/lib/modules/$name.ko"
  case $src in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$name" >>"$STAGE/modules.list"
done

# Uncompressed cpio: nothing to decompress at boot (decompressing under TCG is slow).
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc -R 0:0 --quiet) >"$CACHE/initramfs.cpio.tmp"
mv "$CACHE/initramfs.cpio.tmp" "$CACHE/initramfs.cpio"
cp "$VMLINUZ" "$CACHE/vmlinuz"
# QEMU boots an uncompressed ELF vmlinux directly through its PVH entry point:
# that skips SeaBIOS's real-mode path and the in-guest decompression of the
# bzImage, which under TCG costs ~4 s per boot. Fall back to the bzImage.
BOOT_KERNEL=vmlinuz
rm -f "$CACHE/vmlinux"
if grep -q '^CONFIG_PVH=y' "$KROOT/boot/config-$KVER" 2>/dev/null; then
  for magic in '\xfd7zXZ\x00:xz -dc --single-stream' '\x28\xb5\x2f\xfd:zstd -dcq' '\x1f\x8b\x08:gzip -dcq'; do
    off=$(LC_ALL=C grep -obUaP "${magic%%:*}" "$VMLINUZ" | head -n1 | cut -d: -f1) || :
    [[ -n $off ]] || continue
    # shellcheck disable=SC2086  # the decompressor command is meant to split
    tail -c +$((off + 1)) "$VMLINUZ" | ${magic#*:} >"$CACHE/vmlinux.tmp" 2>/dev/null || :
    if [[ $(head -c4 "$CACHE/vmlinux.tmp" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
      mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"; BOOT_KERNEL=vmlinux; break
    fi
  done
  rm -f "$CACHE/vmlinux.tmp"
fi
cat >"$CACHE/image.env" <<EOF
KVER=$KVER
KERNEL_PKG=$PKG
KERNEL_VERSION=$PKGVER
MODDIR=$MODDIR
MODULES="${order[*]}"
BOOT_KERNEL=$BOOT_KERNEL
EOF
echo "$KEY" >"$CACHE/key"
say "ready: $CACHE/vmlinuz, $CACHE/initramfs.cpio ($(du -h "$CACHE/initramfs.cpio" | cut -f1)), modules: ${order[*]}"
((print)) && cat "$CACHE/image.env"
exit 0
