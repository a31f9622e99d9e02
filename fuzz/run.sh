#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60), one after the other, one core.
#
#   fuzz/run.sh [SECONDS]
#
# Uses `cargo +nightly fuzz run` (ASan on), falling back to `RUSTC_BOOTSTRAP=1 cargo fuzz
# run` on a stable-only machine; installs cargo-fuzz if missing. New corpus entries stay
# in fuzz/corpus/TARGET (only the seed* files are committed); a crash is saved under
# fuzz/artifacts/TARGET and fails the run. Prints one summary line per target and a
# total; exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
targets=(reader fifo frame ring_ops plan gate dma_transaction split_machine)

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi

mkdir -p target
total_execs=0
failed=()
printf '%-16s %10s %9s %8s %s\n' target execs exec/s corpus status
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="target/fuzz-$t.log"
    status=ok
    if ! "${fuzz[@]}" run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 \
        >"$log" 2>&1; then
        status=FAILED
        failed+=("$t")
    fi
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    execs=${execs:-0}
    total_execs=$((total_execs + execs))
    printf '%-16s %10s %9s %8s %s\n' "$t" "$execs" "${rate:-0}" "$corpus" "$status"
    if [ "$status" != ok ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|error(\[|:)' "$log" | head -20 || true
    fi
done
echo "fuzz: ${#targets[@]} targets x ${secs}s, $total_execs execs, ${#failed[@]} failed${failed:+ (${failed[*]})}"
[ ${#failed[@]} -eq 0 ]
