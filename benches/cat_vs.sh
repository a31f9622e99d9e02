#!/usr/bin/env bash
# Sequential read of a 1 GiB file to /dev/null: the `cat` example (continuous reader,
# --pending 1 2 4 8 16) against GNU cat and dd bs=1M, page-cached and O_DIRECT, in the
# same run. Tools alternate within every round; the table shows medians and ratios.
#
#   benches/cat_vs.sh [FILE]        (default target/cat_vs.dat, created if absent)
#   RUNS=7 benches/cat_vs.sh        (rounds per case, default 5)
#
# Page-cached: our cat reads 128 KiB per read (GNU cat's buffer size), dd 1 MiB.
# O_DIRECT: our cat --direct reads 1 MiB per read, as dd bs=1M iflag=direct does; GNU
# cat has no direct mode, so dd is the peer there. fio (when installed) runs in the same
# rounds as a third peer: psync 128 KiB cached, io_uring 1 MiB at iodepth 1 and 8 direct
# — it shows what the device gives io_uring at depth. Times are wall-clock for the whole
# process (start-up included: ring, registered pool), except fio's, which are fio's own
# runtime (its start-up dwarfs a cached 1 GiB read); fio runs with invalidate=0 so it
# does not drop the page cache the cached round relies on.
#
# A third case (root only) reads the same bytes O_DIRECT from a loop block device over a
# tmpfs copy of the file (losetup --direct-io=on): a block device at memory speed, where
# reads in flight can pay off, unlike a single-queue virtual disk.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=${1:-target/cat_vs.dat}
RUNS=${RUNS:-5}
SIZE=$((1 << 30))
DEPTHS=(1 2 4 8 16)

cargo build --release --quiet --jobs 2 --example cat
CAT=target/release/examples/cat

if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -ne "$SIZE" ]; then
    echo "creating $FILE (1 GiB of random bytes)" >&2
    head -c "$SIZE" /dev/urandom >"$FILE.tmp"
    mv "$FILE.tmp" "$FILE"
    sync
fi

echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src examples 2>/dev/null || echo ' (with uncommitted changes to src/ or examples/)')"
echo "machine: $(nproc) vCPU, Linux $(uname -r), $(cat --version | head -1), $(dd --version | head -1)"
echo "file: $FILE ($(stat -c %s "$FILE") bytes) on $(df --output=source,fstype "$FILE" | tail -1 | tr -s ' ')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# The output must be the file, byte for byte, before anything is timed.
want=$(md5sum <"$FILE" | cut -d' ' -f1)
for args in "--pending 8" "--pending 8 --direct --chunk 1m"; do
    # shellcheck disable=SC2086
    got=$("$CAT" $args "$FILE" 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "cat $args: output differs from the file" >&2; exit 1; }
done

LOOPDEV=""
SHM=""
cleanup() {
    [ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV" 2>/dev/null
    [ -n "$SHM" ] && rm -f "$SHM"
    return 0
}
trap cleanup EXIT
if [ "$(id -u)" -eq 0 ] && command -v losetup >/dev/null && [ -d /dev/shm ]; then
    SHM=/dev/shm/cat_vs_loop.$$
    cp "$FILE" "$SHM"
    LOOPDEV=$(losetup --find --show --direct-io=on "$SHM")
    echo "loop: $LOOPDEV over $SHM (tmpfs), dio=$(cat /sys/block/"$(basename "$LOOPDEV")"/loop/dio)"
else
    echo "loop case skipped: needs root, losetup and /dev/shm"
fi

declare -A T # "case|tool" -> space-separated seconds

run() { # case tool command...
    local c=$1 tool=$2
    shift 2
    if [ "$1" = fio ]; then
        # Terse v3, field 9: read runtime in milliseconds.
        local ms
        ms=$("$@" --invalidate=0 --output-format=terse --terse-version=3 2>/dev/null | cut -d';' -f9)
        T["$c|$tool"]+="$(awk -v n="$ms" 'BEGIN{printf "%.6f", n/1e3}') "
        return
    fi
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null 2>/dev/null
    e=$(date +%s%N)
    T["$c|$tool"]+="$(awk -v n=$((e - s)) 'BEGIN{printf "%.6f", n/1e9}') "
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

tools_cached=("gnu-cat" "dd-1M")
tools_direct=("dd-1M-direct")
if command -v fio >/dev/null; then
    tools_cached+=("fio-psync-128k")
    tools_direct+=("fio-uring-qd1-direct" "fio-uring-qd8-direct")
fi
tools_loop=("dd-1M-loop")
command -v fio >/dev/null && tools_loop+=("fio-uring-qd1-loop" "fio-uring-qd8-loop")
for p in "${DEPTHS[@]}"; do
    tools_cached+=("iocat-p$p")
    tools_direct+=("iocat-p$p-direct")
    tools_loop+=("iocat-p$p-loop")
done

cmd() { # tool -> command
    case $1 in
        gnu-cat) echo "cat $FILE" ;;
        dd-1M) echo "dd if=$FILE of=/dev/null bs=1M" ;;
        dd-1M-direct) echo "dd if=$FILE of=/dev/null bs=1M iflag=direct" ;;
        fio-psync-128k) echo "fio --name=c --filename=$FILE --rw=read --bs=128k --ioengine=psync --size=$SIZE" ;;
        dd-1M-loop) echo "dd if=$LOOPDEV of=/dev/null bs=1M iflag=direct" ;;
        fio-uring-qd*-direct)
            q=${1#fio-uring-qd}
            q=${q%-direct}
            echo "fio --name=d --filename=$FILE --rw=read --bs=1M --direct=1 --ioengine=io_uring --iodepth=$q --size=$SIZE"
            ;;
        fio-uring-qd*-loop)
            q=${1#fio-uring-qd}
            q=${q%-loop}
            echo "fio --name=l --filename=$LOOPDEV --rw=read --bs=1M --direct=1 --ioengine=io_uring --iodepth=$q --size=$SIZE"
            ;;
        iocat-p*-loop) p=${1#iocat-p}; p=${p%-loop}; echo "$CAT --pending $p --chunk 1m --direct $LOOPDEV" ;;
        iocat-p*-direct) p=${1#iocat-p}; p=${p%-direct}; echo "$CAT --pending $p --chunk 1m --direct $FILE" ;;
        iocat-p*) echo "$CAT --pending ${1#iocat-p} --chunk 128k $FILE" ;;
    esac
}

for r in $(seq 1 "$RUNS"); do
    cat "$FILE" >/dev/null # (re-)warm the page cache
    # Rotate the order every round so no tool always runs first or last.
    n=${#tools_cached[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${tools_cached[$(((i + r) % n))]}
        # shellcheck disable=SC2046
        run cached "$t" $(cmd "$t")
    done
    n=${#tools_direct[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${tools_direct[$(((i + r) % n))]}
        # shellcheck disable=SC2046
        run direct "$t" $(cmd "$t")
    done
    [ -n "$LOOPDEV" ] || continue
    n=${#tools_loop[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${tools_loop[$(((i + r) % n))]}
        # shellcheck disable=SC2046
        run loop "$t" $(cmd "$t")
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

report() { # case peer tools...
    local c=$1 peer=$2
    shift 2
    local mp
    mp=$(echo "${T["$c|$peer"]}" | median)
    printf '\n%s (%d rounds, medians; ratio = throughput / %s: of the medians, then the median of the per-round ratios)\n' "$c" "$RUNS" "$peer"
    printf '  %-20s %9s %10s %8s %8s   %s\n' tool seconds MiB/s ratio "/round" "all runs (s)"
    for t in "$@"; do
        local m per_round
        m=$(echo "${T["$c|$t"]}" | median)
        # Round i of the peer against round i of this tool (the same round, tools alternated).
        per_round=$(paste -d' ' <(echo "${T["$c|$peer"]}" | tr ' ' '\n' | grep -v '^$') \
            <(echo "${T["$c|$t"]}" | tr ' ' '\n' | grep -v '^$') |
            awk '{printf "%.6f ", $1 / $2}' | median)
        printf '  %-20s %9.3f %10.0f %8.2f %8.2f   %s\n' "$t" "$m" \
            "$(awk -v s="$SIZE" -v m="$m" 'BEGIN{print s/m/1048576}')" \
            "$(awk -v a="$mp" -v b="$m" 'BEGIN{print a/b}')" "$per_round" "${T["$c|$t"]}"
    done
}
report cached gnu-cat "${tools_cached[@]}"
report cached dd-1M "${tools_cached[@]}"
report direct dd-1M-direct "${tools_direct[@]}"
if [ -n "$LOOPDEV" ]; then
    report loop dd-1M-loop "${tools_loop[@]}"
fi
