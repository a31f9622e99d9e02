#!/usr/bin/env bash
# The long reliability campaign (not part of CI): the test suite under AddressSanitizer,
# every fuzz target, loom at 3 preemptions, the simulated-device tests on many seeds, a
# soak of reads over the faulty FUSE device (random EIO and delays, every block
# verified), and the randomized API-sequence harness on many seeds (8 x 1M ops by
# default: IOCOMPLETE_API_SEQ_SEEDS, IOCOMPLETE_API_SEQ_CAMPAIGN_OPS). Prints a summary
# naming the commit: runs, execs, faults injected, bytes verified, failures.
#
#   scripts/campaign.sh [FUZZ_SECONDS_PER_TARGET] [SOAK_SECONDS]    (defaults 600 300)
#   scripts/campaign.sh 30 20                                       (a short run)
#
# Needs: root (FUSE mounts, loop devices) for the fault tests and the soak; a nightly
# toolchain for ASan and cargo-fuzz (installed if missing). Uses at most 2 build jobs.
# Exits non-zero if any stage failed; logs are in target/campaign/.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzz_secs=${1:-600}
soak_secs=${2:-300}
sim_seeds=${IOCOMPLETE_SIM_SEEDS:-2000}
api_seeds=${IOCOMPLETE_API_SEQ_SEEDS:-8}
api_ops=${IOCOMPLETE_API_SEQ_CAMPAIGN_OPS:-1000000}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
export CARGO_TERM_COLOR=never
logs=target/campaign
mkdir -p "$logs"
start=$SECONDS
summary=()
failures=0

# Record one stage: name, runs, execs, faults injected, bytes verified, failures, seconds.
record() {
    summary+=("$(printf '%-22s %9s %12s %9s %15s %8s %6ss' "$@")")
    [ "$6" = 0 ] || failures=$((failures + 1))
}

# Sum of "test result: ok. N passed; M failed" over a cargo test log.
test_counts() {
    grep -E '^test result:' "$1" | awk '{p+=$4; f+=$6} END {printf "%d %d\n", p, f}'
}

echo "=== 1. test suite under AddressSanitizer (nightly, no build-std)"
t0=$SECONDS
# Only the crate and its tests are instrumented: without rust-src there is no -Zbuild-std,
# so std itself is not (ASan still catches our heap/stack/arena errors and leaks).
RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
    CARGO_TARGET_DIR=target/asan ASAN_OPTIONS=detect_leaks=1 \
    LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=1" \
    cargo +nightly test --no-fail-fast --target x86_64-unknown-linux-gnu >"$logs/asan.log" 2>&1
rc=$?
read -r passed failed < <(test_counts "$logs/asan.log")
[ $rc -eq 0 ] || failed=$((failed > 0 ? failed : 1))
asan_errors=$(grep -c 'ERROR: AddressSanitizer\|ERROR: LeakSanitizer' "$logs/asan.log")
record "asan test suite" "$passed" - - - "$((failed + asan_errors))" $((SECONDS - t0))

echo "=== 2. fuzz targets (fuzz/run.sh: reader fifo frame ring_ops plan gate dma_transaction), ${fuzz_secs}s each"
t0=$SECONDS
fuzz/run.sh "$fuzz_secs" 2>&1 | tee "$logs/fuzz.log"
rc=${PIPESTATUS[0]}
execs=$(grep -Eo '[0-9]+ execs' "$logs/fuzz.log" | grep -Eo '[0-9]+' | tail -1)
nfail=$(grep -Eo '[0-9]+ failed' "$logs/fuzz.log" | tail -1 | grep -Eo '[0-9]+')
ntargets=$(grep -Eo '^fuzz: [0-9]+ targets' "$logs/fuzz.log" | grep -Eo '[0-9]+')
[ $rc -eq 0 ] || nfail=${nfail:-1}
record "fuzz" "${ntargets:-0}" "${execs:-0}" - - "${nfail:-1}" $((SECONDS - t0))

echo "=== 3. loom, LOOM_MAX_PREEMPTIONS=3"
t0=$SECONDS
LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release --lib loom >"$logs/loom.log" 2>&1
rc=$?
read -r passed failed < <(test_counts "$logs/loom.log")
[ $rc -eq 0 ] || failed=$((failed > 0 ? failed : 1))
record "loom (3 preemptions)" "$passed" - - - "$failed" $((SECONDS - t0))

echo "=== 4. simulated device, $sim_seeds seeds per randomized test"
t0=$SECONDS
IOCOMPLETE_SIM_SEEDS=$sim_seeds cargo test --release --lib -- reader fifo sim \
    >"$logs/sim.log" 2>&1
rc=$?
read -r passed failed < <(test_counts "$logs/sim.log")
[ $rc -eq 0 ] || failed=$((failed > 0 ? failed : 1))
record "sim machines" "$passed" - - - "$failed" $((SECONDS - t0))

echo "=== 5. soak over the faulty FUSE device, ${soak_secs}s"
t0=$SECONDS
IOCOMPLETE_SOAK_SECS=$soak_secs cargo test --release --test faults \
    soak_random_faults_verify_every_block -- --ignored --nocapture >"$logs/soak.log" 2>&1
rc=$?
line=$(grep -E '^SOAK ' "$logs/soak.log" | tail -1)
field() { grep -Eo "$1=[0-9]+" <<<"$line" | cut -d= -f2; }
if [ -n "$line" ] && [ $rc -eq 0 ]; then
    record "soak (FUSE + loop)" "$(field reads)" - "$(field faults_injected)" \
        "$(field bytes_verified)" 0 $((SECONDS - t0))
else
    grep -q 'SKIP' "$logs/soak.log" && echo "soak skipped: $(grep SKIP "$logs/soak.log")"
    record "soak (FUSE + loop)" 0 - 0 0 1 $((SECONDS - t0))
fi

echo "=== 6. API-sequence harness: $api_seeds seeds x $api_ops ops (release)"
t0=$SECONDS
api_fail=0
api_total=0
: >"$logs/api_sequence.log"
for i in $(seq 1 "$api_seeds"); do
    seed=$((0x5EED0000 + i))
    IOCOMPLETE_API_SEQ_SEED=$seed IOCOMPLETE_API_SEQ_OPS=$api_ops IOCOMPLETE_API_SEQ_SECS=1800 \
        cargo test --release --test api_sequence -- --nocapture >>"$logs/api_sequence.log" 2>&1 ||
        { api_fail=$((api_fail + 1)); echo "api_sequence seed $seed FAILED"; }
    api_total=$((api_total + api_ops))
done
record "api sequence" "$api_seeds" "$api_total" - - "$api_fail" $((SECONDS - t0))

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
echo
echo "=== campaign summary (commit $commit, fuzz ${fuzz_secs}s/target, soak ${soak_secs}s, $(uname -r), $(nproc) cores)"
printf '%-22s %9s %12s %9s %15s %8s %7s\n' stage runs execs faults bytes_verified failures time
printf '%s\n' "${summary[@]}"
echo "total: $((SECONDS - start))s, $failures stage(s) failed; logs in $logs/"
[ $failures -eq 0 ]
