use super::*;

#[test]
fn empty_range_past_the_end_finishes_at_the_range_without_reading() {
    // Found by the `reader` fuzz target: the simulator expected Eof here.
    let p = SimParams {
        data_len: 0,
        ..SimParams::default()
    };
    let cfg = ReaderConfig::positional(77)
        .pending_reads(3)
        .range(50_659, 50_659);
    let r = run_reader(1, cfg, &p).unwrap();
    assert_eq!(r.finish, FinishReason::EndOfRange);
    assert_eq!((r.bytes_delivered, r.reads_issued), (0, 0));
}

#[test]
fn re_reads_near_an_unaligned_eof_stay_aligned() {
    // Found by the `reader` fuzz target: after a restart, a hole re-read was clipped
    // at the (unaligned) EOF, giving a misaligned direct-I/O length (28160+239).
    let p = SimParams {
        data_len: 28_399,
        short_pct: 9,
        max_delay: 6,
        ack_pct: 61,
        burst_max: 1156,
        burst_pct: 32,
        faults: vec![Fault {
            at: 27_019,
            errno: libc::EIO,
            times: 2,
        }],
        max_restarts: 2,
        ..SimParams::default()
    };
    for seed in 0..200 {
        let cfg = ReaderConfig::positional(256)
            .align(128)
            .pending_reads(31)
            .reorder_window(40)
            .max_unacked(27)
            .ordered(seed % 2 == 0);
        let r = run_reader(seed, cfg, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(r.bytes_delivered, 28_399);
    }
}
