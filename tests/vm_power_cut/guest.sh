#!/usr/bin/env bash
# The guest's half of the power-cut test (tests/vm_power_cut.rs): run by
# vm-tests/run.sh in a VM whose /var/tmp/disk is a kept disk, so the pool's
# files and thinlayer's root outlive the VM.
#
#   guest.sh round N DIR THINLAYER   first boot (N = 1): make the pool and
#                                    the base layer; later boots:
#                                    recover and check. Then the workload,
#                                    until the host cuts the power.
#   guest.sh check DIR THINLAYER     recover and check only (the last boot)
#
# DIR is the host's scratch directory (read-only here): `base.tar` (the
# base layer: a static busybox and a file `data`), `oci` (an image layout:
# tags v1.., one-layer images with a file `variant` each), `variants` (lines `ROUND TAG SHA256`: the tags each
# round imports, with the sha256 of the file `variant` their layer adds)
# and `expect` (what the operations that reported success promise; see
# check_records).
#
# What the host reads on the console, one line each, never interleaved
# (each is one short write to a pipe):
#   START KIND NAME        an operation is about to run
#   OK KIND NAME SHA|-     it returned 0 (SHA: of the content it wrote)
#   FAIL ...               an operation or a check failed: the test fails
#   RECOVERED ...          what recovery after the cut said it repaired
#   CHECKED N ...          every expectation held, records and devices agree
#   WORKLOAD ROUND N       the workers start
#   CUT WINDOW             the first operation of the workload reported
#                          success: arms the host's power cut
# The workload would run far longer than the cut's delay.
set -euo pipefail

mode=${1:?mode: round or check}
if [[ $mode == round ]]; then
  round=${2:?round number}
  shift 2
else
  round=0
  shift
fi
DIR=${1:?scratch directory}
TL=${2:?thinlayer binary}
export THINLAYER_ROOT=/var/tmp/disk/root
W=/tmp/work
mkdir -p "$W"
workload=0

fail() {
  echo "FAIL $*"
  exit 1
}

tl() { "$TL" "$@"; }

sha_of() { sha256sum <"$1" | cut -c1-64; }

# ---------------------------------------------------------------- checks

# After a cut: the metadata as the cut left it is clean, activation
# succeeds (it runs thin_check too), then everything the host expects is
# there, and records and thin devices agree.
recover_and_check() {
  [[ -f $THINLAYER_ROOT/pool/pool.json ]] || fail "check: no pool record on the kept disk"
  local meta=$THINLAYER_ROOT/pool/metadata out
  out=$(thin_check "$meta" 2>&1) || fail "check: thin_check of the metadata the cut left: $(tr '\n' ' ' <<<"$out")"
  out=$(tl pool activate 2>&1) || fail "check: pool activate after the cut: $(tr '\n' ' ' <<<"$out")"
  sed -n 's/^.*recovered: /RECOVERED pool activate: /p' <<<"$out"
  echo "activated: $(grep -v 'recovered: ' <<<"$out" | tr '\n' ' ')"
  check_records
}

# Every line of DIR/expect, and records against devices. Expectations
# (SHA `-`: the object exists, its content is not read this time):
#   layer NAME SHA        layer NAME exists; its file /data has SHA
#   no-layer NAME         no layer is named NAME
#   image NAME SHA FILE   image NAME exists; FILE in its top layer has SHA
#   container NAME SHA    container NAME exists (state created); its /f and
#                         its volume's /vol/f have SHA
#   volume NAME           thin volume NAME exists with its device
#   no-volume NAME        no volume is named NAME
# The listings run first: the first command to open a store recovers what
# a killed command left there (the RECOVERED lines), and the first
# container or volume command what a killed container or volume command
# left.
check_records() {
  python3 - "$TL" "$DIR/expect" "$THINLAYER_ROOT" <<'PY'
import hashlib, json, os, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor

tl, expect, root = sys.argv[1:4]
failures = []
lock = threading.Lock()


def fail(msg):
    with lock:
        failures.append(msg)
        print(f"FAIL {msg}", flush=True)


def run(*args):
    r = subprocess.run([tl, *args], capture_output=True, text=True)
    for line in r.stderr.splitlines():
        if "recover" in line.lower() or "lost" in line.lower() or "freed" in line.lower():
            with lock:
                print(f"RECOVERED {' '.join(args[:2])}: {line}", flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"thinlayer {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def js(*args):
    return json.loads(run(*args, "--json"))


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# Commands run a few at a time where nothing orders them: each thinlayer
# command costs the guest most of a second. Containers first: undoing a
# container cut mid-create removes its layers, so the layers are listed
# after; images after layers, whose listing recovers their store.
pool_of = ThreadPoolExecutor(3)
containers = js("container", "ls")
volumes_f = pool_of.submit(js, "volume", "ls")
status_f = pool_of.submit(js, "pool", "status")
layers = js("layer", "ls")
images = js("image", "ls")
volumes, status = volumes_f.result(), status_f.result()
if status.get("needs_check"):
    fail(f"the kernel flagged the pool's metadata for a check: {status}")

layer_by_name = {l["name"]: l for l in layers if l.get("name")}
image_names = {n: i for i in images for n in i["names"]}
container_by_name = {c["name"]: c for c in containers}
volume_by_name = {v["name"]: v for v in volumes}


def in_mounted(kind, name, check):
    mp = run(kind, "mount", name).strip()
    try:
        return check(mp)
    finally:
        run(kind, "umount", name)


def check(line):
    f = line.split()
    what, name = f[0], f[1]
    try:
        if what == "layer":
            if name not in layer_by_name:
                fail(f"layer {name} reported made before the cut is gone")
                return
            got = f[2] if f[2] == "-" else in_mounted("layer", name, lambda m: sha(os.path.join(m, "data")))
            if got != f[2]:
                fail(f"layer {name}: /data has sha256 {got}, {f[2]} was written")
        elif what == "no-layer":
            if name in layer_by_name:
                fail(f"layer {name} reported removed before the cut is back")
        elif what == "image":
            img = image_names.get(f"{name}:latest")
            if img is None:
                fail(f"image {name} reported imported before the cut is gone")
                return
            if f[2] != "-":
                top = img["layers"][-1]
                got = in_mounted("layer", top, lambda m: sha(os.path.join(m, f[3])))
                if got != f[2]:
                    fail(f"image {name}: {f[3]} has sha256 {got}, the image has {f[2]}")
        elif what == "container":
            c = container_by_name.get(name)
            if c is None:
                fail(f"container {name} reported made before the cut is gone")
                return
            if f[2] != "-":
                def both(m):
                    return sha(os.path.join(m, "f")), sha(os.path.join(m, "vol/f"))
                got = in_mounted("container", name, both)
                if got != (f[2], f[2]):
                    fail(f"container {name}: /f and /vol/f have {got}, {f[2]} was written and synced")
        elif what == "volume":
            v = volume_by_name.get(name)
            if v is None or v.get("thin_id") is None:
                fail(f"thin volume {name} reported made before the cut is gone: {v}")
        elif what == "no-volume":
            if name in volume_by_name:
                fail(f"volume {name} reported removed before the cut is back")
        else:
            fail(f"unknown expectation: {line.strip()}")
    except (RuntimeError, OSError) as e:
        fail(f"{what} {name}: {e}")


lines = [l for l in open(expect) if l.split()]
checked = len(lines)
list(pool_of.map(check, lines))

# Records and devices: the pool's record names exactly the thin ids the
# kernel's metadata holds (read with thin_ls from a metadata snapshot of
# the live pool), nothing is pending but the last change, which the
# kernel committed (the kernel's transaction id is the commit: a change is
# recorded as pending in the pool's change log and not written again,
# thinpool::recovery and thinpool::pool::log), and each id's
# tag names a record that names it back (a layer, a thin volume, the
# base).
def record(path):
    with open(path) as fh:
        head = fh.readline()
        if not head.startswith("thinlayer-record"):
            fh.seek(0)
        return json.load(fh)


def devices():
    """The thin ids in the kernel's metadata, and the pool's record."""
    meta = status["metadata"]["loop_device"]
    out = subprocess.run(["dmsetup", "ls", "--target", "thin-pool"], capture_output=True,
                         text=True, check=True).stdout
    pools = [l.split()[0] for l in out.splitlines() if l.strip() and not l.startswith("No devices")]
    if len(pools) != 1:
        raise ValueError(f"expected one thin pool, dmsetup has {pools}")
    # The kernel's transaction id before the record: a record is written
    # before the kernel moves on.
    fields = subprocess.run(["dmsetup", "status", "--noflush", pools[0]], capture_output=True,
                            text=True, check=True).stdout.split()
    kernel_tx = int(fields[3])
    rec = settle(pool_record(os.path.join(root, "pool")), kernel_tx)
    subprocess.run(["dmsetup", "message", pools[0], "0", "reserve_metadata_snap"], check=True)
    try:
        r = subprocess.run(["thin_ls", "-m", "--no-headers", "-o", "DEV", meta], capture_output=True,
                           text=True, check=True)
    finally:
        subprocess.run(["dmsetup", "message", pools[0], "0", "release_metadata_snap"], check=True)
    return sorted(int(x) for x in r.stdout.split()), rec


def pool_record(pool_dir):
    """pool.json with the entries of its change log (pool.log) replayed, read
    here independently of thinlayer's code: 512-byte sectors, each b"TLL1",
    a little-endian length and CRC-32, then JSON; taken in order while whole,
    of this pool and of the record's epoch. Each entry's pending change is
    committed if another entry follows it."""
    import struct, zlib
    pool = record(os.path.join(pool_dir, "pool.json"))
    try:
        with open(os.path.join(pool_dir, "pool.log"), "rb") as fh:
            log = fh.read()
    except FileNotFoundError:
        log = b""
    for i in range(len(log) // 512):
        slot = log[i * 512:(i + 1) * 512]
        if slot[:4] != b"TLL1":
            break
        n, crc = struct.unpack("<II", slot[4:12])
        body = slot[12:12 + n]
        if len(body) != n or zlib.crc32(body) != crc:
            break
        e = json.loads(body)
        if e["pool"] != pool["id"] or e["epoch"] != pool.get("log_epoch", 0) or e["index"] != i:
            break
        op = pool.get("pending")
        if e["transaction_id"] != pool["transaction_id"]:
            fail(f"pool.log entry {i} is at transaction {e['transaction_id']}, the record before it at "
                 f"{pool['transaction_id']} (pending: {op})")
        if op:
            apply(pool, op)
        pool["pending"] = e["pending"]
    return pool


def apply(pool, op):
    """A committed change applied to the record."""
    if op["op"] == "delete":
        pool["thins"].pop(str(op["id"]), None)
    else:
        pool["thins"][str(op["id"])] = {"tag": op["tag"]}
    pool["pending"] = None


def settle(pool, kernel_tx):
    """The record as a reader sees it: a pending change of the earlier
    protocol, which moved the kernel's transaction id with each change,
    applied when the kernel is one past it; a kernel at any other
    transaction than the record's is a failure."""
    op = pool.get("pending")
    if op is not None and kernel_tx == pool["transaction_id"] + 1:
        apply(pool, op)
        pool["transaction_id"] = kernel_tx
    if pool["transaction_id"] != kernel_tx:
        fail(f"the kernel is at transaction {kernel_tx}, the pool's record at "
             f"{pool['transaction_id']} (pending: {op})")
    return pool


def volume_devices(pool, volumes):
    """Thin volumes by name -> id, from the volume records and from the
    pool's tags: they must be the same."""
    recs = {v["name"]: v["thin_id"] for v in volumes if v["driver"] == "thin"}
    tagged = {t["tag"][len("volume:"):]: int(k) for k, t in pool["thins"].items()
              if t["tag"].startswith("volume:")}
    return recs, tagged


kernel_ids, thin_vols = [], {}
try:
    kernel_ids, pool = devices()
    recorded = sorted(int(k) for k in pool["thins"])
    if pool.get("pending") is not None:
        fail(f"the pool's record has a change in flight after recovery: {pool['pending']}")
    if kernel_ids != recorded:
        fail(f"thin devices {kernel_ids} in the metadata, {recorded} in the pool's record")
    tags = [t["tag"] for t in pool["thins"].values()]
    layer_ids = {l["id"] for l in layers}
    tagged_layers = {t[len("layer:"):] for t in tags if t.startswith("layer:")}
    if tagged_layers != layer_ids:
        fail(f"layers without a device: {sorted(layer_ids - tagged_layers)}; "
             f"devices without a layer: {sorted(tagged_layers - layer_ids)}")
    others = sorted(t for t in tags if t != "base" and not t.startswith(("layer:", "volume:")))
    if others or tags.count("base") != 1:
        fail(f"devices tagged neither base, layer nor volume: {others}")
    thin_vols, tagged_vols = volume_devices(pool, volumes)
    if thin_vols != tagged_vols:
        fail(f"thin volumes {thin_vols} but devices tagged as volumes {tagged_vols}")
    for c in containers:
        if c["state"] != "created":
            fail(f"container {c['name']} is {c['state']} after recovery")
        for lid in c["layers"]:
            if lid not in layer_ids:
                fail(f"container {c['name']} names layer {lid}, which has no record")
        for m in c["Mounts"]:
            if m["Type"] == "volume" and m["Name"] not in volume_by_name:
                fail(f"container {c['name']} names volume {m['Name']}, which has no record")
    for i in images:
        for lid in i["layers"]:
            if lid not in layer_ids:
                fail(f"image {i['names']} names layer {lid}, which has no record")
    journals = [j for j in os.listdir(os.path.join(root, "thin", "journals")) if j.endswith(".json")]
    if journals:
        fail(f"journals left after recovery: {journals}")
except (RuntimeError, OSError, subprocess.CalledProcessError, KeyError, ValueError) as e:
    fail(f"records and devices: {e}")

if failures:
    sys.exit(1)
print(f"CHECKED {checked} expectations; {len(kernel_ids)} thin devices, {len(layers)} layers, "
      f"{len(images)} images, {len(containers)} containers, {len(thin_vols)} thin volumes agree", flush=True)
PY
}

# -------------------------------------------------------------- workload

# op KIND NAME SHA CMD...: one operation, bracketed by START and OK. SHA
# `@out` takes the first 64 hex digits CMD printed.
op() {
  local kind=$1 name=$2 sha=$3 out
  shift 3
  echo "START $kind $name"
  if ! out=$("$@" 2>&1); then
    fail "$kind $name: $* failed: $(tr '\n' ' ' <<<"$out")"
  fi
  if [[ $sha == @out ]]; then
    sha=$(grep -Eo '[0-9a-f]{64}' <<<"$out" | head -n1) || fail "$kind $name: no sha256 in: $out"
  fi
  echo "OK $kind $name $sha"
  # mkdir is atomic: one worker, the first to get here, opens the window.
  if ((workload)) && mkdir "$W/window" 2>/dev/null; then
    echo "CUT WINDOW"
  fi
}

MAX=60 # per worker: far more than fit before the cut

# Snapshots of the base layer, each with 1 MiB of its own (written by
# thinlayer through its mount of the new device); every third step removes
# the one made two steps before.
snapshots() {
  local n name d
  for ((n = 1; n <= MAX; n++)); do
    name=s$round-$n
    d=$W/$name
    mkdir -p "$d"
    head -c 1048576 /dev/urandom >"$d/data"
    tar -C "$d" -cf "$d.tar" data
    op snap "$name" "$(sha_of "$d/data")" tl snapshot layer base --name "$name" --from-tar "$d.tar"
    if ((n % 3 == 0)); then
      op rm-snap "s$round-$((n - 2))" - tl layer rm "s$round-$((n - 2))"
    fi
  done
}

# Imports of this round's variants: one-layer images of their own, so each
# makes one thin device.
imports() {
  local r tag sha
  while read -r r tag sha; do
    ((r == round)) || continue
    op import "imp-$tag" "$sha" tl image import "$DIR/oci:$tag" --name "imp-$tag"
  done <"$DIR/variants"
}

# Containers on the base layer, each with a named local volume; then a
# process in it writes 512 KiB to its writable layer and its volume and
# syncs.
containers() {
  local n c
  for ((n = 1; n <= MAX; n++)); do
    c=c$round-$n
    op container "$c" - tl container create --name "$c" --layer base -v "cv$round-$n:/vol"
    op write "$c" @out tl container exec "$c" -- /bin/sh -c \
      'b=/bin/busybox; $b dd if=/dev/urandom of=/f bs=64k count=8 2>/dev/null && $b cp /f /vol/f && $b sync && $b sha256sum /f'
  done
}

# Thin volumes (a device each); every third step removes one made before.
volumes() {
  local n
  for ((n = 1; n <= MAX; n++)); do
    op volume "tv$round-$n" - tl volume create --driver thin --size 64M "tv$round-$n"
    if ((n % 3 == 0)); then
      op rm-volume "tv$round-$((n - 2))" - tl volume rm "tv$round-$((n - 2))"
    fi
  done
}

first_boot() {
  local out sha
  out=$(tl pool create --data-size 2G --base-size 256M 2>&1) || fail "setup: pool create: $out"
  sha=$(tar -xOf "$DIR/base.tar" data | sha256sum | cut -c1-64) || fail "setup: no data in $DIR/base.tar"
  op snap base "$sha" tl layer create --name base --from-tar "$DIR/base.tar"
}

case $mode in
  check)
    recover_and_check
    ;;
  round)
    if ((round == 1)); then
      first_boot
    else
      recover_and_check
    fi
    echo "WORKLOAD ROUND $round"
    workload=1
    snapshots &
    imports &
    containers &
    volumes &
    wait
    echo "WORKLOAD DONE: every operation finished before the power cut"
    exit 3
    ;;
  *) fail "usage: guest.sh round N DIR THINLAYER | check DIR THINLAYER" ;;
esac
