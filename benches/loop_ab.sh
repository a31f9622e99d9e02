#!/usr/bin/env bash
# Many short alternated pairs of fio io_uring and iobench, 4 KiB O_DIRECT randread on a loop
# device over tmpfs: on a loaded machine one 5 s repetition per engine (compare.sh) cannot
# tell QD 1 apart, many 1 s pairs can. fio gets compare.sh's options (fixed buffers,
# registered file, submit batch QD, complete_min max(QD/4, 1)).
#
#   benches/loop_ab.sh [DEVICE]     # default: a fresh loop device over a 1 GiB /dev/shm file
#   QDS="1 8" PAIRS=20 SECS=1 benches/loop_ab.sh
#   IOBENCH_RING=plain benches/loop_ab.sh    # the same with iobench's A/B ring modes
#   HALT_POLL_NS=200000 benches/loop_ab.sh   # with guest halt polling (benches/haltpoll.sh):
#                                            # set for the run, restored on exit
#
# Prints one line per run and, per QD, the median of the per-pair IOPS ratios
# (iobench ÷ fio), how many pairs iobench won, and the median CPU µs per I/O of each.
set -euo pipefail
cd "$(dirname "$0")/.."
QDS=${QDS:-"1 8 32 128"}
PAIRS=${PAIRS:-10}
SECS=${SECS:-1}

cargo build --release --example iobench --jobs 2 --quiet
IOB=target/release/examples/iobench
DEV=${1:-}
SHM=""
. benches/haltpoll.sh
cleanup() { # only what this script made or changed
    if [ -n "$SHM" ]; then
        [ -n "$DEV" ] && losetup -d "$DEV" 2>/dev/null
        rm -f "$SHM"
    fi
    haltpoll_restore
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
haltpoll_set
if [ -z "$DEV" ]; then
    SHM=$(mktemp /dev/shm/loop_ab.XXXXXX)
    head -c $((1 << 30)) /dev/urandom >"$SHM"
    DEV=$(losetup --find --show --direct-io=on "$SHM")
fi
echo "# $(date -Is) commit $(git rev-parse --short HEAD) device $DEV load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$(haltpoll_describe)"

OUT=$(mktemp)
for qd in $QDS; do
    min=$((qd / 4 > 1 ? qd / 4 : 1))
    for ((p = 1; p <= PAIRS; p++)); do
        # Alternate which engine goes first.
        order="fio iob"
        [ $((p % 2)) = 0 ] && order="iob fio"
        for e in $order; do
            if [ "$e" = fio ]; then
                fio --name=ab --filename="$DEV" --rw=randread --bs=4k --direct=1 --time_based=1 \
                    --runtime="$SECS" --invalidate=0 --norandommap=1 --randrepeat=0 \
                    --ioengine=io_uring --fixedbufs=1 --registerfiles=1 --iodepth="$qd" \
                    --iodepth_batch_submit="$qd" --iodepth_batch_complete_min="$min" \
                    --iodepth_batch_complete_max="$qd" --output-format=terse --terse-version=3 \
                    2>/dev/null | awk -F';' -v qd="$qd" -v p="$p" \
                    '{printf "%s %s fio %d %.3f\n", qd, p, $8, ($8 > 0) ? ($88 + $89) / 100 / $8 * 1e6 : 0}'
            else
                "$IOB" --rw randread --bs 4k --qd "$qd" --direct --seconds "$SECS" "$DEV" 2>/dev/null |
                    python3 -c 'import json, sys
j = json.loads(sys.stdin.read().strip().splitlines()[-1])
print("%s %s iobench %d %.3f" % (sys.argv[1], sys.argv[2], j["iops"], (j["cpu_usr"] + j["cpu_sys"]) / 100 / j["iops"] * 1e6))' "$qd" "$p"
            fi
        done
    done | tee -a "$OUT"
done
echo "# load at end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    qd, p, e, iops, cpu = line.split()
    runs[int(qd)].setdefault(p, {})[e] = (int(iops), float(cpu))
for qd in sorted(runs):
    pairs = [r for r in runs[qd].values() if len(r) == 2 and r["fio"][0] > 0]
    ratios = [r["iobench"][0] / r["fio"][0] for r in pairs]
    print("QD %3d: %d pairs, iobench/fio IOPS median %.2f (%.2f-%.2f), iobench ahead in %d;"
          " CPU us/IO iobench %.2f, fio %.2f" % (
              qd, len(pairs), statistics.median(ratios), min(ratios), max(ratios),
              sum(x > 1 for x in ratios),
              statistics.median(r["iobench"][1] for r in pairs),
              statistics.median(r["fio"][1] for r in pairs)))
PY
rm -f "$OUT"
