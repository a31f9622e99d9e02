#!/usr/bin/env bash
# iocomplete side by side with the Rust io_uring runtimes and tokio's spawn_blocking, in one
# run: the same three workloads for every engine, order rotated each repetition.
#
#   benches/peers/run.sh > peers.csv          # full run: REPS=3 x SECS=5 (about 7 minutes)
#   QUICK=1 benches/peers/run.sh > peers.csv  # short run: REPS=3 x SECS=2 (about 3 minutes)
#   python3 benches/peers/summarise.py peers.csv
#
# Workloads (see src/lib.rs): cached = 4 KiB randread QD32 on a page-cached 1 GiB file;
# direct = 4 KiB randread QD32 O_DIRECT on a loop device over tmpfs (--direct-io=on);
# seq = 1 MiB sequential O_DIRECT read, QD 4, of the same loop device.
#
# CSV on stdout: `workload,engine,iops,cpu_us_per_io,rep` (comment lines start with '#');
# progress on stderr. Needs root (the loop device; glommio registers its I/O memory).
# Environment: QUICK=1, REPS, SECS, WARM (warm-up seconds before each measured window),
# ENGINES, WORKLOADS (space-separated subsets), DIR (data file directory, default
# /var/tmp/iocomplete-peers), SIZE (data file bytes, default 1 GiB), JOBS (cargo, default 2).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ROOT=$(cd ../.. && pwd)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-3}; SECS=${SECS:-2}; WARM=${WARM:-0.5}
else
    REPS=${REPS:-3}; SECS=${SECS:-5}; WARM=${WARM:-1}
fi
ENGINES=${ENGINES:-"iocomplete iocomplete_tokio tokio_uring glommio monoio compio tokio_blocking"}
WORKLOADS=${WORKLOADS:-"cached direct seq"}
DIR=${DIR:-/var/tmp/iocomplete-peers}
SIZE=${SIZE:-1073741824}

[ "$(id -u)" = 0 ] || die "needs root: the direct and seq workloads read a loop device (losetup), and glommio registers its I/O memory (memlock)"
[ -e /dev/loop-control ] || die "no /dev/loop-control: loop devices are not available here"
command -v losetup >/dev/null || die "losetup not found (Debian package util-linux)"
command -v cargo >/dev/null || die "cargo not found"
# glommio registers its I/O memory with the ring (RLIMIT_MEMLOCK); so do the others' fixed buffers.
ulimit -l unlimited 2>/dev/null || log "could not raise RLIMIT_MEMLOCK (ulimit -l: $(ulimit -l))"

log "building (release, --jobs ${JOBS:-2})"
T0=$SECONDS
cargo build --release --locked --bins --jobs "${JOBS:-2}" --quiet
log "built in $((SECONDS - T0)) s"
BIN=$HERE/target/release

# --- data file and loop device ---------------------------------------------------------------
mkdir -p "$DIR"
FILE=$DIR/data.bin
if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" != "$SIZE" ]; then
    log "writing $FILE ($SIZE bytes, every 4 KiB block stamped with its offset)"
    "$BIN/mkdata" "$FILE" "$SIZE"
fi
LOOP=""
IMG=""
NODE=""
cleanup() {
    if [ -n "$NODE" ]; then rm -f "$NODE"; fi
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2>/dev/null || true; fi
    if [ -n "$IMG" ]; then rm -f "$IMG"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
IMG=$(mktemp /dev/shm/iocomplete-peers.XXXXXX)
cp "$FILE" "$IMG"
LOOP=$(losetup --find --show --direct-io=on "$IMG") || die "losetup --direct-io=on failed"
# Every engine reads the device through a node made in $DIR (a disk filesystem), not the
# one in /dev: glommio takes a file on devtmpfs (TMPFS_MAGIC) for a tmpfs file, looks up
# the wrong device's queue limits and reads it ~10x slower (see README).
NODE=$DIR/loopdev
rm -f "$NODE"
mknod "$NODE" b "$((16#$(stat -c %t "$LOOP")))" "$((16#$(stat -c %T "$LOOP")))"
log "loop device $LOOP over $IMG (direct-io=on), read through the node $NODE"
log "warming the page cache with $FILE"
cat "$FILE" >/dev/null

# --- machine facts -----------------------------------------------------------------------------
ver() { awk -v n="$1" '$0 == "name = \"" n "\"" {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock; }
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo "?")
git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || COMMIT="$COMMIT+dirty-src"
echo "# date: $(date -u -Is)"
echo "# commit: $COMMIT"
echo "# cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); mem: $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "# kernel: $(uname -r); rustc: $(rustc --version | cut -d' ' -f2)"
echo "# versions: tokio-uring $(ver tokio-uring), glommio $(ver glommio), monoio $(ver monoio), compio $(ver compio) (driver $(ver compio-driver)), tokio $(ver tokio)"
echo "# cached: $FILE ($(stat -c %s "$FILE") bytes, $(stat -f -c %T "$DIR")); direct, seq: $LOOP (node $NODE) over $IMG (tmpfs, direct-io=on)"
echo "# reps: $REPS x ${SECS}s after ${WARM}s warm-up; quick: $QUICK; loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workload,engine,iops,cpu_us_per_io,rep"

# --- runs ----------------------------------------------------------------------------------------
read -r -a engines <<<"$ENGINES"
n=${#engines[@]}
LIMIT=$(python3 -c "print(int($SECS + $WARM + 30))")
for ((rep = 1; rep <= REPS; rep++)); do
    for wl in $WORKLOADS; do
        target=$NODE
        [ "$wl" = cached ] && target=$FILE
        for ((i = 0; i < n; i++)); do
            e=${engines[$(((i + rep - 1) % n))]}
            if line=$(SECS=$SECS WARM=$WARM timeout "$LIMIT" "$BIN/$e" "$wl" "$target" 2>/tmp/peers-$e.err) &&
                [ -n "$line" ]; then
                echo "$line,$rep"
                log "rep $rep $(cat /tmp/peers-$e.err)"
            else
                log "rep $rep $wl $e: FAILED: $(tail -3 /tmp/peers-$e.err)"
                echo "# FAILED: $wl,$e,rep $rep"
            fi
            rm -f /tmp/peers-$e.err
        done
    done
done
echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
log "done in $((SECONDS - T0)) s"
