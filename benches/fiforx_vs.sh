#!/usr/bin/env bash
# FIFO receive throughput: `fiforx --len N -` on a pipe fed at full speed, against
# `head -c N` and `dd bs=64K iflag=fullblock count=N/64K` in the same run, interleaved,
# REPS times each; then the wake-up latency bench (benches/fifo_latency.rs).
#
#   benches/fiforx_vs.sh            # N = 1 GiB, 5 reps
#   N=$((256<<20)) REPS=3 benches/fiforx_vs.sh
#
# Only the consumer is timed (/usr/bin/time -f '%e %U %S'); the feeder is
# `head -c N /dev/zero` (or FEED='cmd' producing at least N bytes). Output goes to
# /dev/null. Figures: median elapsed, MiB/s, consumer CPU (user+sys) in ms per GiB, and
# each peer's ratio to fiforx.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-$((1 << 30))}
REPS=${REPS:-5}
FEED=${FEED:-"head -c $N /dev/zero"}
if (( N % 65536 )); then
    echo "N must be a multiple of 64 KiB (for dd count=)" >&2
    exit 2
fi

cargo build --release --jobs 2 --example fiforx >&2
FX=target/release/examples/fiforx
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

declare -A CMD=(
    [fiforx]="$FX --len $N -"
    [head]="head -c $N"
    [dd]="dd bs=64K iflag=fullblock count=$((N / 65536)) status=none"
)
ORDER=(fiforx head dd)

echo "# $(nproc) vCPU, Linux $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src examples benches 2>/dev/null || echo ' (with uncommitted changes to src/, examples/ or benches/)')"
echo "# N=$N bytes, REPS=$REPS, feeder: $FEED"
for ((r = 0; r < REPS; r++)); do
    for name in "${ORDER[@]}"; do
        # shellcheck disable=SC2086
        bash -c "$FEED" | /usr/bin/time -f '%e %U %S' -o "$tmp/t" ${CMD[$name]} > /dev/null 2> "$tmp/err" \
            || { echo "$name failed:" >&2; cat "$tmp/err" >&2; exit 1; }
        echo "$name $(cat "$tmp/t")" >> "$tmp/all"
        if [[ $name == fiforx && $r == 0 ]]; then
            echo "# fiforx says: $(grep '^fiforx:' "$tmp/err")"
        fi
    done
done

python3 - "$tmp/all" "$N" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, e, u, s = line.split()
    rows.setdefault(name, []).append((float(e), float(u) + float(s)))
n = int(sys.argv[2])
gib = n / (1 << 30)
res = {}
for name, v in rows.items():
    e = statistics.median(x[0] for x in v)
    c = statistics.median(x[1] for x in v)
    res[name] = (e, c)
fe, fc = res["fiforx"]
print(f"{'consumer':<8} {'elapsed s':>9} {'MiB/s':>8} {'cpu ms/GiB':>11} {'fiforx speed ×':>15} {'fiforx cpu ×':>13}")
for name in ["fiforx", "head", "dd"]:
    e, c = res[name]
    print(f"{name:<8} {e:>9.3f} {n / e / 2**20:>8.0f} {c * 1000 / gib:>11.0f} {e / fe:>15.2f} {c / fc if fc else float('nan'):>13.2f}")
print("(fiforx speed × = peer elapsed / fiforx elapsed; fiforx cpu × = peer CPU / fiforx CPU; > 1 favours fiforx)")
EOF

echo
echo "# wake-up latency at low rates (writer write -> receiver has the bytes), same pipe kind"
cargo bench --jobs 2 --bench fifo_latency 2>/dev/null
