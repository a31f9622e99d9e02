#!/usr/bin/env bash
# iobench against fio (and psync, libaio, dd) on the same file, in the same run.
#
#   benches/compare.sh [RESULTS.csv]        # full run, about 10 minutes
#   QUICK=1 benches/compare.sh              # smoke run, about 2 minutes
#   FALLBACK=1 benches/compare.sh           # the thread-pool backend instead, about 5 minutes
#
# Each workload runs every engine REPS times (default 3 x SECS=5 s), alternating the
# engines and rotating their order each repetition, so slow drifts (other load, page cache,
# CPU frequency) hit every engine alike. Raw results go to a CSV (one line per run, machine
# facts as leading '#' lines); the summary (medians, min-max, same-run ratios) is printed
# by benches/plot.py, which also renders the SVG plots into perf/.
#
# FALLBACK=1 measures the backend for hosts where io_uring is blocked instead: 4 KiB random
# reads at QD 1 and 32 (QDS), page-cached and O_DIRECT on the loop device, by iobench on the
# thread pool (IOCOMPLETE_BACKEND=threads), fio psync and posixaio (glibc's POSIX AIO, its
# own threads), and iobench on io_uring for reference; workloads `fallback_*`, results in
# target/perf/fallback-*.csv, summarised (no plots) with the ratios iobench_threads ÷ peer.
#
# Needs root for the loop device (skipped otherwise). Installs fio from Debian's packages
# when missing. Environment: QUICK=1, FALLBACK=1, REPS, SECS, DIR (work files; default
# /var/tmp/iocomplete-bench on the root disk), SIZE (file size, default 1g), PLOT=0 to skip
# the plots, OUT (plot directory, default perf/), HALT_POLL_NS (on a KVM guest with the
# haltpoll cpuidle driver: how long idle vCPUs poll before halting, for this run only;
# see benches/haltpoll.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/benches/haltpoll.sh"

QUICK=${QUICK:-0}
FALLBACK=${FALLBACK:-0}
if [ "$FALLBACK" = 1 ]; then
    QDS=${QDS:-"1 32"}
fi
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}; SECS=${SECS:-1}; QDS=${QDS:-"1 32"}; DISK_QDS=${DISK_QDS:-"1 32"}
else
    REPS=${REPS:-3}; SECS=${SECS:-5}; QDS=${QDS:-"1 8 32 128"}; DISK_QDS=${DISK_QDS:-"1 32 128"}
fi
case $SECS in
    '' | *[!0-9]* | 0) echo "compare.sh: SECS must be a whole number of seconds >= 1 (fio's runtime)" >&2; exit 2 ;;
esac
DIR=${DIR:-/var/tmp/iocomplete-bench}
SIZE=${SIZE:-1g}
STAMP=$(date +%Y%m%d-%H%M%S)
if [ "$FALLBACK" = 1 ]; then
    RESULTS=${1:-$ROOT/target/perf/fallback-$STAMP.csv}
else
    RESULTS=${1:-$ROOT/target/perf/results-$STAMP.csv}
fi
mkdir -p "$DIR" "$(dirname "$RESULTS")"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
if ! command -v fio >/dev/null; then
    log "installing fio (Debian package)"
    apt-get update -qq && apt-get install -y -qq fio >/dev/null
fi
command -v python3 >/dev/null || { echo "compare.sh: python3 is required" >&2; exit 1; }
log "building iobench (release)"
cargo build --release --example iobench --jobs 2 --quiet
IOB=$ROOT/target/release/examples/iobench
TIME=/usr/bin/time
[ -x "$TIME" ] || TIME=""

# --- files ---------------------------------------------------------------------------------
FILE=$DIR/data.bin
LOOP=""
SHM_IMG=""
cleanup() {
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2>/dev/null || true; fi
    if [ -n "$SHM_IMG" ]; then rm -f "$SHM_IMG"; fi
    haltpoll_restore
}
trap cleanup EXIT
trap 'exit 130' INT TERM
haltpoll_set

if [ ! -f "$FILE" ]; then
    log "creating $FILE ($SIZE)"
    "$IOB" --rw read --bs 1m --qd 1 --seconds 0.01 --size "$SIZE" "$FILE" >/dev/null 2>&1
fi
FILE_BYTES=$(stat -c %s "$FILE")
log "warming the page cache with $FILE"
cat "$FILE" >/dev/null

if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ]; then
    SHM_IMG=$(mktemp /dev/shm/iocomplete-loop.XXXXXX)
    cp "$FILE" "$SHM_IMG"
    LOOP=$(losetup --find --show --direct-io=on "$SHM_IMG" 2>/dev/null) || LOOP=""
    [ -n "$LOOP" ] && log "loop device $LOOP over $SHM_IMG (direct-io=on)"
fi
[ -z "$LOOP" ] && log "no loop device (needs root and /dev/loop-control): loop workloads skipped"

# --- machine facts ---------------------------------------------------------------------------
ROOTDEV=$(findmnt -no SOURCE / 2>/dev/null || echo "?")
{
    echo "# date: $(date -Is)"
    echo "# commit: $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "# cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "# kernel: $(uname -r); fio: $(fio --version); mem: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "# root disk: $ROOTDEV ($(lsblk -dno MODEL,SIZE "$ROOTDEV" 2>/dev/null | xargs || echo '?')); file: $FILE ($FILE_BYTES bytes, $(stat -f -c %T "$DIR"))"
    echo "# loop: ${LOOP:-none} over ${SHM_IMG:-none}"
    echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    # How an idle vCPU waits decides QD 1 latency on a VM (benches/haltpoll.sh).
    echo "# $(haltpoll_describe)"
    echo "# reps: $REPS x ${SECS}s; quick: $QUICK; fallback: $FALLBACK"
    echo "workload,engine,rw,bs,qd,direct,rep,iops,bw_bytes,lat_p50_ns,lat_p99_ns,cpu_usr,cpu_sys"
} >"$RESULTS"

# --- engines: each prints "iops,bw_bytes,lat_p50_ns,lat_p99_ns,cpu_usr,cpu_sys" ---------------
FIO_PARSE='
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["write"] if sys.argv[1] in ("write", "randwrite") else j["read"]
pct = d.get("lat_ns", {}).get("percentile", {})
usr, sys_ = j["usr_cpu"], j["sys_cpu"]
if len(sys.argv) > 2:  # "%U %S" of the whole fio process tree, from /usr/bin/time -o
    u, s = map(float, open(sys.argv[2]).read().split()[-2:])
    secs = d["runtime"] / 1000.0
    usr, sys_ = 100 * u / secs, 100 * s / secs
print("%.0f,%d,%d,%d,%.2f,%.2f" % (d["iops"], d["bw_bytes"], pct.get("50.000000", 0),
      pct.get("99.000000", 0), usr, sys_))
'
IOB_PARSE='
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
if r.get("backend") != sys.argv[1]:
    sys.exit("iobench ran on backend %r, not %r" % (r.get("backend"), sys.argv[1]))
print("%s,%s,%s,%s,%s,%s" % (r["iops"], r["bw_bytes"], r["lat_p50_ns"], r["lat_p99_ns"],
      r["cpu_usr"], r["cpu_sys"]))
'

iobench_on() { # backend target rw bs qd direct: IOCOMPLETE_BACKEND forces it, JSON checks it
    local d=""; [ "$6" = 1 ] && d="--direct"
    IOCOMPLETE_BACKEND=$1 "$IOB" --rw "$3" --bs "$4" --qd "$5" $d --seconds "$SECS" "$2" 2>/dev/null |
        python3 -c "$IOB_PARSE" "$1"
}

run_iobench() { iobench_on uring "$@"; } # target rw bs qd direct

# The thread-pool backend (default workers: 4 per CPU, at most the ring's SQ entries).
run_iobench_threads() { iobench_on threads "$@"; } # target rw bs qd direct

fio_common() { # target rw bs direct
    local size=""; [ -f "$1" ] && size="--size=$FILE_BYTES"
    echo "--name=cmp --filename=$1 --rw=$2 --bs=$3 --direct=$4 $size --time_based=1 \
--runtime=$SECS --invalidate=0 --norandommap=1 --randrepeat=0 --lat_percentiles=1 \
--output-format=json"
}

# Batching for fio as for iobench: submit everything queued in one call, reap whenever at
# least a quarter of the queue (and at least one I/O) has completed.
fio_batch() { # qd
    echo "--iodepth=$1 --iodepth_batch_submit=$1 --iodepth_batch_complete_min=$(($1 / 4 > 1 ? $1 / 4 : 1)) \
--iodepth_batch_complete_max=$1"
}

run_fio_uring() { # target rw bs qd direct
    # shellcheck disable=SC2046
    fio $(fio_common "$1" "$2" "$3" "$5") --ioengine=io_uring --fixedbufs=1 --registerfiles=1 \
        $(fio_batch "$4") 2>/dev/null | python3 -c "$FIO_PARSE" "$2"
}

run_fio_libaio() { # target rw bs qd direct
    # shellcheck disable=SC2046
    fio $(fio_common "$1" "$2" "$3" "$5") --ioengine=libaio $(fio_batch "$4") 2>/dev/null |
        python3 -c "$FIO_PARSE" "$2"
}

# glibc's POSIX AIO (aio_read + aio_suspend): a user-space thread pool, like the fallback.
# fio counts the CPU of its job thread only (RUSAGE_THREAD), not glibc's AIO threads, which
# do the reads: the CPU columns are the whole process tree's (/usr/bin/time, startup
# included) over fio's runtime instead, as iobench's cover its backend's threads.
run_fio_posixaio() { # target rw bs qd direct
    local t="" rc=0
    [ -n "$TIME" ] && t=$(mktemp)
    # shellcheck disable=SC2046
    ${t:+"$TIME" -o "$t" -f '%U %S'} fio $(fio_common "$1" "$2" "$3" "$5") --ioengine=posixaio \
        $(fio_batch "$4") 2>/dev/null | python3 -c "$FIO_PARSE" "$2" ${t:+"$t"} || rc=1
    [ -n "$t" ] && rm -f "$t"
    return $rc
}

run_fio_psync() { # target rw bs qd(ignored: synchronous) direct
    # shellcheck disable=SC2046
    fio $(fio_common "$1" "$2" "$3" "$5") --ioengine=psync 2>/dev/null |
        python3 -c "$FIO_PARSE" "$2"
}

run_dd() { # target rw(read) bs qd(ignored) direct: one pass over the file
    local flag=""; [ "$5" = 1 ] && flag="iflag=direct"
    local err rc=0; err=$(mktemp)
    # dd wants upper-case multipliers (1M, 128K).
    if [ -n "$TIME" ]; then
        "$TIME" -f 'TIME %U %S %e' dd if="$1" of=/dev/null bs="${3^^}" $flag 2>"$err" || rc=1
    else
        dd if="$1" of=/dev/null bs="${3^^}" $flag 2>"$err" || rc=1
    fi
    [ $rc = 0 ] && python3 - "$err" "$3" <<'PY' || rc=1
import re, sys
text = open(sys.argv[1]).read()
bs = sys.argv[2].lower()
mult = {"k": 1024, "m": 1 << 20}.get(bs[-1], 1)
bs = int(bs.rstrip("km")) * mult
copied = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", text, re.M)
nbytes, secs = int(copied.group(1)), float(copied.group(2))
t = re.search(r"TIME ([\d.]+) ([\d.]+) ([\d.]+)", text)
usr = sys_ = 0.0
if t:
    wall = max(float(t.group(3)), 1e-9)
    usr, sys_ = 100 * float(t.group(1)) / wall, 100 * float(t.group(2)) / wall
print("%.0f,%.0f,0,0,%.2f,%.2f" % (nbytes / bs / secs, nbytes / secs, usr, sys_))
PY
    rm -f "$err"
    return $rc
}

# One workload: every engine once per repetition, order rotated each repetition.
# workload target rw bs qd direct engine...
bench() {
    local wl=$1 target=$2 rw=$3 bs=$4 qd=$5 direct=$6; shift 6
    local engines=("$@") n=$# rep i k e line
    for ((rep = 1; rep <= REPS; rep++)); do
        for ((i = 0; i < n; i++)); do
            k=$(((i + rep - 1) % n))
            e=${engines[$k]}
            if line=$("run_$e" "$target" "$rw" "$bs" "$qd" "$direct") && [ -n "$line" ]; then
                echo "$wl,$e,$rw,$bs,$qd,$direct,$rep,$line" >>"$RESULTS"
                log "$wl $e bs=$bs qd=$qd rep=$rep: $line"
            else
                log "$wl $e bs=$bs qd=$qd rep=$rep: FAILED"
            fi
        done
    done
}

log "results -> $RESULTS"

if [ "$FALLBACK" = 1 ]; then
    # The thread-pool backend against the peers a host without io_uring has. psync is
    # synchronous: at QD 32 it still has one read in flight.
    FB_ENGINES="iobench_threads fio_psync fio_posixaio iobench"
    for qd in $QDS; do
        # shellcheck disable=SC2086
        bench fallback_cached_randread "$FILE" randread 4k "$qd" 0 $FB_ENGINES
    done
    if [ -n "$LOOP" ]; then
        for qd in $QDS; do
            # shellcheck disable=SC2086
            bench fallback_loop_direct_randread "$LOOP" randread 4k "$qd" 1 $FB_ENGINES
        done
    fi
    echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
    log "done: $RESULTS"
    python3 "$ROOT/benches/plot.py" "$RESULTS" --summary-only
    exit 0 # (the EXIT trap detaches the loop device)
fi

# 1. 4 KiB random read, page-cached: software overhead. psync is synchronous (its QD is 1).
for qd in $QDS; do
    if [ "$qd" = 1 ]; then
        bench cached_randread "$FILE" randread 4k 1 0 iobench fio_uring fio_psync
    else
        bench cached_randread "$FILE" randread 4k "$qd" 0 iobench fio_uring
    fi
done

# 2. 4 KiB random read, O_DIRECT, loop block device over a tmpfs file.
if [ -n "$LOOP" ]; then
    for qd in $QDS; do
        bench loop_direct_randread "$LOOP" randread 4k "$qd" 1 iobench fio_uring
    done
fi

# 3. 4 KiB random read, O_DIRECT, file on the root disk.
for qd in $DISK_QDS; do
    bench disk_direct_randread "$FILE" randread 4k "$qd" 1 iobench fio_uring fio_libaio
done

# 4. Sequential read, 128 KiB and 1 MiB, page-cached and O_DIRECT (QD 4; dd is QD 1).
for bs in 128k 1m; do
    bench cached_seqread "$FILE" read "$bs" 4 0 iobench fio_uring dd
    bench direct_seqread "$FILE" read "$bs" 4 1 iobench fio_uring dd
done

echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
log "done: $RESULTS"
if [ "${PLOT:-1}" = 1 ]; then
    python3 "$ROOT/benches/plot.py" "$RESULTS" --out "${OUT:-$ROOT/perf}"
else
    python3 "$ROOT/benches/plot.py" "$RESULTS" --summary-only
fi
