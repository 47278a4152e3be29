#!/usr/bin/env bash
# The demo's commands, run by tools/demo.sh on a kernel with dm-thin (the
# host, or the VM). Each step prints the command, then its output.
#
#   THINLAYER_ROOT=DIR tools/demo-flow.sh PATH-TO-THINLAYER
set -euo pipefail
BIN=${1:?usage: demo-flow.sh PATH-TO-THINLAYER}
: "${THINLAYER_ROOT:?set THINLAYER_ROOT}"
WORK=$(mktemp -d /tmp/thinlayer-demo-work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

step() {
  printf '\n$ thinlayer %s\n' "$*"
  "$BIN" "$@"
}

note() { printf '\n# %s\n' "$*"; }

echo "thinlayer demo, state in $THINLAYER_ROOT"
note "a thin pool on sparse loop-backed files, with a 1G base filesystem for layers"
step pool create --data-size 4G --base-size 1G
step pool status

note "an image built with umoci (a real OCI tool): two layers, with a static busybox to run"
BUSYBOX=$(command -v busybox || true)
[[ -x $BUSYBOX ]] || { echo "busybox is missing: run tools/setup.sh" >&2; exit 1; }
(
  cd "$WORK"
  umoci init --layout oci >/dev/null
  umoci new --image oci:demo >/dev/null
  umoci unpack --image oci:demo bundle >/dev/null
  mkdir -p bundle/rootfs/etc bundle/rootfs/app bundle/rootfs/bin bundle/rootfs/proc bundle/rootfs/dev bundle/rootfs/srv/cache
  cp "$BUSYBOX" bundle/rootfs/bin/busybox
  for a in sh cat echo hostname ls df; do ln -s busybox "bundle/rootfs/bin/$a"; done
  echo "warm entry from the image" > bundle/rootfs/srv/cache/warm
  echo "hello from the image" > bundle/rootfs/app/greeting
  head -c 4194304 /dev/urandom > bundle/rootfs/app/data.bin
  umoci repack --image oci:demo bundle >/dev/null
  umoci unpack --image oci:demo bundle2 >/dev/null
  echo "version 2" > bundle2/rootfs/app/version
  umoci repack --image oci:demo bundle2 >/dev/null
)
mkdir -p "$WORK/change/app"
echo "changed in my layer" > "$WORK/change/app/greeting"
tar -C "$WORK/change" -cf "$WORK/change.tar" app

# The same flow on both drivers: block-level (thin) and file-level (overlay).
for driver in thin overlay; do
  export THINLAYER_DRIVER=$driver
  note "driver $driver: import the image"
  step image import "$WORK/oci" --name demo/app:1.0
  step image ls
  TOP=$("$BIN" image inspect demo/app:1.0 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"][-1])')

  note "driver $driver: a new layer on top of the image, from a small changeset"
  step snapshot layer "$TOP" --name mylayer --from-tar "$WORK/change.tar"
  step layer ls

  note "driver $driver: mount it read-only and look inside"
  MP=$("$BIN" layer mount mylayer)
  echo "$MP"
  printf '\n$ cat %s/app/greeting %s/app/version\n' "$MP" "$MP"
  cat "$MP/app/greeting" "$MP/app/version"
  step layer umount mylayer

  note "driver $driver: its changes against its parent, as an OCI layer"
  step layer diff mylayer -o "$WORK/mylayer-$driver.tar"
  tar -tvf "$WORK/mylayer-$driver.tar"

  note "driver $driver: save the image back: the digests it was imported with, so umoci reads it and the image id is the same"
  step image save demo/app:1.0 -o "$WORK/saved-$driver.tar"
  mkdir "$WORK/saved-$driver" && tar -C "$WORK/saved-$driver" -xf "$WORK/saved-$driver.tar"
  printf '\n$ umoci stat --image saved-%s:1.0 | head -3\n' "$driver"
  umoci stat --image "$WORK/saved-$driver:1.0" | head -3
  if [ "$driver" = overlay ]; then
    printf '\n$ cmp saved-thin.tar saved-overlay.tar\n'
    cmp "$WORK/saved-thin.tar" "$WORK/saved-overlay.tar" && echo "the same bytes from both drivers"
  fi

  note "driver $driver: a container with a named volume, an anonymous one filled from the image, and a host directory read-only"
  mkdir -p "$WORK/host-config" && echo "from the host" > "$WORK/host-config/setting"
  step container create --name web-$driver --image demo/app:1.0 --hostname web \
    -v appdata:/app/data -v /srv/cache -v "$WORK/host-config:/etc/app:ro"
  step container exec web-$driver -- /bin/sh -c \
    'hostname; cat /app/greeting /etc/app/setting /srv/cache/warm; echo "written by a container on '$driver'" >> /app/data/log; echo "v3" > /app/version; echo x > /etc/app/setting || echo "(read-only, as asked)"'
  step container ls

  note "driver $driver: commit the container's changes (not its hostname or hosts files) as a layer"
  step container commit web-$driver --name web-$driver-v3
  "$BIN" layer diff web-$driver-v3 | tar -tv

  note "driver $driver: remove the container and its anonymous volume; the named volume stays"
  step container rm -v web-$driver
  step volume ls

  note "driver $driver: a new container from the committed layer sees the change and the volume's data"
  step container create --name again-$driver --layer web-$driver-v3 -v appdata:/app/data
  step container exec again-$driver -- /bin/sh -c 'cat /app/version /app/data/log'
  step container rm again-$driver
done
unset THINLAYER_DRIVER

note "a thin volume: its own filesystem with a hard size, cloned in O(1)"
step volume create fast --driver thin --size 64M
step volume clone fast fast-copy
step volume ls
step volume rm fast fast-copy appdata

note "both drivers export the very same bytes for the layer"
printf '\n$ sha256sum mylayer-thin.tar mylayer-overlay.tar\n'
(cd "$WORK" && sha256sum mylayer-thin.tar mylayer-overlay.tar)
cmp "$WORK/mylayer-thin.tar" "$WORK/mylayer-overlay.tar"

note "containerd runs a container on a thin snapshot: thinlayer serves containerd's snapshots API as a proxy snapshotter"
CTD=$WORK/containerd
mkdir -p "$CTD"
cat >"$CTD/config.toml" <<EOF
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD/containerd.sock"
[proxy_plugins]
  [proxy_plugins.thinlayer]
    type = "snapshot"
    address = "$CTD/thinlayer.sock"
EOF
printf '\n$ cat containerd/config.toml\n'
cat "$CTD/config.toml"
printf '\n$ thinlayer --driver thin snapshotter serve --address %s &\n' "$CTD/thinlayer.sock"
"$BIN" --driver thin snapshotter serve --address "$CTD/thinlayer.sock" 2>"$CTD/daemon.log" &
SNAP_PID=$!
containerd --config "$CTD/config.toml" >"$CTD/containerd.log" 2>&1 &
CTD_PID=$!
stop_engine() {
  if kill -TERM "$CTD_PID" 2>/dev/null; then wait "$CTD_PID" 2>/dev/null || :; fi
  if kill -TERM "$SNAP_PID" 2>/dev/null; then wait "$SNAP_PID" 2>/dev/null || :; fi
}
trap 'stop_engine; rm -rf "$WORK"' EXIT
for _ in $(seq 150); do [ -S "$CTD/containerd.sock" ] && [ -S "$CTD/thinlayer.sock" ] && break; sleep 0.2; done
ctr() {
  printf '\n$ ctr %s\n' "$*"
  command ctr --address "$CTD/containerd.sock" --namespace demo "$@"
}
skopeo copy --quiet "oci:$WORK/oci:demo" "docker-archive:$WORK/demo-docker.tar:docker.io/demo/app:1.0"
ctr image import --snapshotter thinlayer "$WORK/demo-docker.tar"
ctr run --snapshotter thinlayer docker.io/demo/app:1.0 c1 /bin/sh -c \
  'cat /app/greeting; echo "written by a runc container" > /app/mine; cat /app/mine; df -h / | tail -1'
ctr snapshots --snapshotter thinlayer ls
ctr snapshots --snapshotter thinlayer usage c1
note "containerd's snapshots are thinlayer layers, each a thin device, in the one store"
step --driver thin layer ls
step pool status
note "removing the container and the image frees their thin devices"
ctr containers rm c1
ctr image rm --sync docker.io/demo/app:1.0
step --driver thin layer ls
stop_engine
printf '\n$ tail -1 containerd/daemon.log\n'
tail -1 "$CTD/daemon.log"

note "the pool survives deactivation (as after a reboot)"
step pool deactivate
step pool activate
step layer inspect mylayer
step pool destroy --force
printf '\n$ thinlayer pool status   (expected to fail: the pool is gone)\n'
if "$BIN" pool status; then exit 1; fi
echo
echo "demo finished"
