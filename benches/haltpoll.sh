# Sourced by the bench scripts (loop_ab.sh, compare.sh): how idle vCPUs wait decides QD 1
# latency on a KVM guest (PERF.md, "Why the loop device loses at QD 1 and 8").
#
#   HALT_POLL_NS=200000 benches/compare.sh   # the haltpoll cpuidle driver polls up to
#                                            # 200 µs before halting, for this run only
#
# haltpoll_set applies HALT_POLL_NS (when set); haltpoll_restore, which the sourcing
# script calls from its EXIT/INT/TERM trap, puts the previous value back;
# haltpoll_describe prints the setting for the results' header. Each run restores what it
# found, so overlapping runs could leave another's value behind: run benches one at a time
# (they would disturb each other's figures anyway). A run killed with SIGKILL cannot
# restore; put the value back by hand (0 is this driver's setting on the project's VM).

HALTPOLL_PARAM=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALTPOLL_WAS=""

haltpoll_set() {
    [ -n "${HALT_POLL_NS:-}" ] || return 0
    case $HALT_POLL_NS in
        '' | *[!0-9]*) echo "HALT_POLL_NS must be a whole number of nanoseconds" >&2; exit 2 ;;
    esac
    [ -w "$HALTPOLL_PARAM" ] || {
        echo "HALT_POLL_NS: $HALTPOLL_PARAM is not writable (not a guest with the haltpoll driver, or not root)" >&2
        exit 2
    }
    HALTPOLL_WAS=$(cat "$HALTPOLL_PARAM")
    echo "$HALT_POLL_NS" >"$HALTPOLL_PARAM"
}

haltpoll_restore() {
    if [ -n "$HALTPOLL_WAS" ]; then
        echo "$HALTPOLL_WAS" >"$HALTPOLL_PARAM" || true
        HALTPOLL_WAS=""
    fi
}

haltpoll_describe() {
    echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none); guest_halt_poll_ns: $(cat "$HALTPOLL_PARAM" 2>/dev/null || echo n/a)"
}
