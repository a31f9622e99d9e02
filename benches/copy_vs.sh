#!/usr/bin/env bash
# The `copy` example (split transfer, zero-copy through registered buffers) against
# `dd bs=1M` and `cp`, in the same run, on a 1 GiB file:
#
#   cached  the source is in the page cache; buffered writes (dst removed between runs,
#           so its dirty pages are dropped, never written back: memory-speed copying)
#   direct  O_DIRECT on both sides (`copy --direct`, `dd iflag=direct oflag=direct`);
#           `cp` has no direct mode: it runs buffered, for reference only
#
# Peers and `copy` are interleaved: for each configuration, each repetition runs dd, cp
# and copy back to back, so a machine whose load changes during the run (a shared VM)
# affects all three alike. Printed per configuration: the median copy time and MiB/s, and
# the medians of the per-repetition ratios dd_time/copy_time and cp_time/copy_time (> 1:
# copy is faster). The peers' own medians, over all their runs, head each scenario.
#
#   benches/copy_vs.sh [DIR]        (DIR: where the 2 GiB of files go; default /var/tmp)
#   env: REPS=3 CHUNKS="64K 256K 1M 4M" INFLIGHT="1 4 16 32" SCENARIOS="cached direct"
#
# Needs a release build of the example (built here), GNU dd and cp. About 5-7 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
CHUNKS=${CHUNKS:-"64K 256K 1M 4M"}
INFLIGHT=${INFLIGHT:-"1 4 16 32"}
SCENARIOS=${SCENARIOS:-"cached direct"}
SIZE=$((1 << 30))
BASE=${1:-/var/tmp}

cargo build --release --example copy -j2 >/dev/null 2>&1
COPY=target/release/examples/copy

DIR=$(mktemp -d "$BASE/copy_vs.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
SRC=$DIR/src
DST=$DIR/dst
head -c "$SIZE" /dev/urandom >"$SRC"
sync

# run_s CMD...: one run (dst removed first); prints the wall time in seconds.
run_s() {
    local t0 t1
    rm -f "$DST"
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
    t1=$(date +%s%N)
    rm -f "$DST"
    awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.4f\n", ns / 1e9 }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

mibs() { awk -v t="$1" -v size="$SIZE" 'BEGIN { printf "%.0f", size / 1048576 / t }'; }

echo "# copy_vs: $(nproc) vCPU, Linux $(uname -r), $(df -T "$DIR" | awk 'NR==2 {print $2}') on $(df "$DIR" | awk 'NR==2 {print $1}'), 1 GiB file, $REPS interleaved repetitions"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src examples benches 2>/dev/null || echo ' (with uncommitted changes to src/, examples/ or benches/)')"

for scenario in $SCENARIOS; do
    if [ "$scenario" = cached ]; then
        dd_cmd=(dd if="$SRC" of="$DST" bs=1M)
        flag=()
    else
        dd_cmd=(dd if="$SRC" of="$DST" bs=1M iflag=direct oflag=direct)
        flag=(--direct)
    fi
    cat "$SRC" >/dev/null
    # Correctness once per scenario.
    rm -f "$DST"
    $COPY "${flag[@]}" --chunk 1M --inflight 4 "$SRC" "$DST" 2>/dev/null
    cmp -s "$SRC" "$DST" || { echo "copy ${flag[*]} produced a different file" >&2; exit 1; }
    all_dd=()
    all_cp=()
    rows=()
    configs=()
    for chunk in $CHUNKS; do
        [ "$chunk" = 1M ] && configs+=("$chunk serial")
        for q in $INFLIGHT; do configs+=("$chunk $q"); done
    done
    for cfg in "${configs[@]}"; do
        read -r chunk q <<<"$cfg"
        if [ "$q" = serial ]; then args=(--serial --chunk "$chunk"); else args=(--chunk "$chunk" --inflight "$q"); fi
        ts=() r_dd=() r_cp=()
        for _ in $(seq "$REPS"); do
            t_dd=$(run_s "${dd_cmd[@]}")
            t_cp=$(run_s cp "$SRC" "$DST")
            t=$(run_s "$COPY" "${flag[@]}" "${args[@]}" "$SRC" "$DST")
            all_dd+=("$t_dd")
            all_cp+=("$t_cp")
            ts+=("$t")
            r_dd+=("$(awk -v a="$t_dd" -v b="$t" 'BEGIN { print a / b }')")
            r_cp+=("$(awk -v a="$t_cp" -v b="$t" 'BEGIN { print a / b }')")
        done
        t=$(printf '%s\n' "${ts[@]}" | median)
        rows+=("$(printf '%-7s %-12s %6s %8s %9.3f %8s %7.2f %7.2f' "$scenario" copy "$chunk" "$q" "$t" "$(mibs "$t")" \
            "$(printf '%s\n' "${r_dd[@]}" | median)" "$(printf '%s\n' "${r_cp[@]}" | median)")")
    done
    printf '\n%-7s %-12s %6s %8s %9s %8s %7s %7s\n' scenario tool chunk inflight median_s MiB/s dd/copy cp/copy
    t=$(printf '%s\n' "${all_dd[@]}" | median)
    printf '%-7s %-12s %6s %8s %9.3f %8s %7s %7s\n' "$scenario" "dd bs=1M" - - "$t" "$(mibs "$t")" - -
    t=$(printf '%s\n' "${all_cp[@]}" | median)
    [ "$scenario" = cached ] && cp_name=cp || cp_name="cp(buffered)"
    printf '%-7s %-12s %6s %8s %9.3f %8s %7s %7s\n' "$scenario" "$cp_name" - - "$t" "$(mibs "$t")" - -
    printf '%s\n' "${rows[@]}"
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
