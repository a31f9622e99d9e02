#!/usr/bin/env bash
# The scaling curve: `iobench --threads N` (one ring, pool and descriptor per thread) against
# fio `--numjobs=N` (io_uring, fixed buffers, registered file, the same batching as
# compare.sh), 4 KiB random reads at QD 32 per thread, page-cached and O_DIRECT on a loop
# device over tmpfs, in the same run.
#
#   benches/scale.sh [RESULTS.csv]          # THREADS="1 2", REPS=3, SECS=3
#
# Each repetition runs every (workload, N, engine) once, engines alternated and their
# order rotated. Prints the CSV (workload,engine,threads,rep,iops,cpu_pct) and, per
# workload, the medians, iobench(N) ÷ iobench(1) and iobench ÷ fio at each N (median of
# the per-repetition ratios, with their range). Needs root for the loop device (that
# workload is skipped otherwise) and fio (installed from Debian's packages if missing).
# Environment: THREADS, REPS, SECS, QD (default 32), DIR (default /var/tmp/iocomplete-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
SECS=${SECS:-3}
QD=${QD:-32}
DIR=${DIR:-/var/tmp/iocomplete-bench}
OUT=${1:-target/perf/scale-$(date +%Y%m%d-%H%M%S).csv}
mkdir -p "$DIR" "$(dirname "$OUT")"
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
cargo build --release --example iobench --jobs 2 --quiet
IOB=target/release/examples/iobench
FILE=$DIR/data.bin
[ -f "$FILE" ] || "$IOB" --rw read --bs 1m --qd 1 --ops 1 --size 1g "$FILE" >/dev/null 2>&1
cat "$FILE" >/dev/null
LOOP="" SHM=""
cleanup() {
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    [ -n "$SHM" ] && rm -f "$SHM"
    return 0
}
trap cleanup EXIT INT TERM
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ]; then
    SHM=$(mktemp /dev/shm/iocomplete-scale.XXXXXX)
    cp "$FILE" "$SHM"
    LOOP=$(losetup --find --show --direct-io=on "$SHM")
fi
MIN=$((QD / 4 > 1 ? QD / 4 : 1))

iob() { # target direct threads -> "iops cpu%"
    local d=""; [ "$2" = 1 ] && d="--direct"
    "$IOB" --rw randread --bs 4k --qd "$QD" $d --seconds "$SECS" --threads "$3" "$1" 2>/dev/null |
        python3 -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(r["iops"], round(r["cpu_usr"] + r["cpu_sys"], 1))'
}
fio_n() { # target direct threads -> "iops cpu%" (CPU: all jobs together, % of one core;
    # with --group_reporting fio reports the jobs' average, hence x N)
    fio --name=scale --filename="$1" --rw=randread --bs=4k --direct="$2" --time_based=1 \
        --runtime="$SECS" --invalidate=0 --norandommap=1 --randrepeat=0 --numjobs="$3" \
        --group_reporting=1 --ioengine=io_uring --fixedbufs=1 --registerfiles=1 \
        --iodepth="$QD" --iodepth_batch_submit="$QD" --iodepth_batch_complete_min="$MIN" \
        --iodepth_batch_complete_max="$QD" --output-format=json 2>/dev/null |
        python3 -c 'import json, sys
j = json.load(sys.stdin)["jobs"][0]
print(int(j["read"]["iops"]), round((j["usr_cpu"] + j["sys_cpu"]) * int(sys.argv[1]), 1))' "$3"
}

{
    echo "# date: $(date -Is); commit: $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "# cores: $(nproc); kernel: $(uname -r); $(fio --version); qd per thread: $QD; reps: $REPS x ${SECS}s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "workload,engine,threads,rep,iops,cpu_pct"
} >"$OUT"
for rep in $(seq 1 "$REPS"); do
    for wl in cached direct; do
        if [ $wl = cached ]; then target=$FILE d=0; else target=$LOOP d=1; fi
        [ -z "$target" ] && continue
        for n in $THREADS; do
            order="iobench fio"
            [ $(((rep + n) % 2)) = 0 ] && order="fio iobench"
            for e in $order; do
                if [ $e = iobench ]; then r=$(iob "$target" $d "$n"); else r=$(fio_n "$target" $d "$n"); fi
                echo "$wl,$e,$n,$rep,${r% *},${r#* }" | tee -a "$OUT" >&2
            done
        done
    done
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
cat "$OUT"
python3 - "$OUT" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)  # (wl, n, rep) -> engine -> (iops, cpu)
for line in open(sys.argv[1]):
    if line.startswith("#") or line.startswith("workload"):
        continue
    wl, e, n, rep, iops, cpu = line.strip().split(",")
    runs[(wl, int(n), rep)][e] = (float(iops), float(cpu))
def med(xs):
    return "%.2f× (%.2f–%.2f)" % (statistics.median(xs), min(xs), max(xs)) if xs else "-"
for wl in ("cached", "direct"):
    ns = sorted({n for (w, n, _) in runs if w == wl})
    for n in ns:
        reps = [r for (w, m, rep), r in runs.items() if w == wl and m == n and len(r) == 2]
        if not reps:
            continue
        iob = statistics.median(r["iobench"][0] for r in reps)
        fio = statistics.median(r["fio"][0] for r in reps)
        vs_fio = [r["iobench"][0] / r["fio"][0] for r in reps]
        vs_one = [runs[(wl, n, rep)]["iobench"][0] / runs[(wl, 1, rep)]["iobench"][0]
                  for (w, m, rep) in runs if w == wl and m == n and (wl, 1, rep) in runs]
        cpu = lambda e: statistics.median(r[e][1] / 100 / r[e][0] * 1e6 for r in reps)
        print("%s N=%d: iobench %.0f IOPS (%.2f µs CPU/IO), fio %.0f (%.2f); iobench ÷ fio %s;"
              " iobench(N) ÷ iobench(1) %s"
              % (wl, n, iob, cpu("iobench"), fio, cpu("fio"), med(vs_fio), med(vs_one)))
PY
