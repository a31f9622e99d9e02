//! The continuous reader's state machine on the simulated device: arbitrary
//! configurations, completion orders, short transfers, faults, stops and restarts.
//! `sim::run_reader` checks every invariant (exactly-once delivery, content, ordering,
//! teardown); a violation is a bug, an invalid configuration is skipped.
#![no_main]

use iocomplete::reader::ReaderConfig;
use iocomplete::sim::{run_reader, Fault, SimFailure, SimParams};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    stream: bool,
    multishot: bool,
    transfer_len: u16,
    align_log2: u8,
    pending_reads: u8,
    range: Option<(u16, u16)>,
    ordered: bool,
    reorder_extra: u8,
    max_unacked: Option<u16>,
    data_len: u16,
    short_pct: u8,
    max_delay: u8,
    ack_pct: u8,
    burst_max: u16,
    burst_pct: u8,
    faults: Vec<(u16, bool, u8)>,
    stop_at_step: Option<u16>,
    max_restarts: u8,
    provided_buffers: u8,
}

fuzz_target!(|i: Input| {
    let align = 1u32 << (i.align_log2 % 13);
    // Raw values: the machine must reject what is invalid with a typed error, so zero
    // lengths, misalignment, bad windows, multishot on a file or an alignment on a stream
    // are left in.
    let base = if i.stream {
        ReaderConfig::stream(u32::from(i.transfer_len))
    } else {
        ReaderConfig::positional(u32::from(i.transfer_len))
    };
    let base = if !i.stream || i.align_log2 >= 0x80 {
        base.align(align)
    } else {
        base
    };
    let mut cfg = base
        .multishot(i.multishot)
        .pending_reads(u32::from(i.pending_reads % 40))
        .ordered(i.ordered)
        .reorder_window(u32::from(i.pending_reads % 40) + u32::from(i.reorder_extra % 16));
    if let Some(u) = i.max_unacked {
        cfg = cfg.max_unacked(u32::from(u % 300));
    }
    if let Some((s, l)) = i.range {
        let start = u64::from(s) * u64::from(align.min(64));
        cfg = cfg.range(start, start + u64::from(l));
    }
    // Bounded work, so a slow run is a livelock, not a big input: at most 512 reads'
    // worth of data, at most 64 KiB.
    let tl = u64::from(i.transfer_len.max(1));
    let data_len = u64::from(i.data_len).min(tl * 512);
    let params = SimParams {
        data_len,
        short_pct: u32::from(i.short_pct % 100),
        max_delay: u32::from(i.max_delay % 16),
        ack_pct: 10 + u32::from(i.ack_pct % 91),
        burst_max: 1 + u32::from(i.burst_max).max((data_len / 64) as u32),
        burst_pct: 5 + u32::from(i.burst_pct % 96),
        faults: i
            .faults
            .iter()
            .take(4)
            .map(|&(at, eio, times)| Fault {
                at: u64::from(at),
                errno: if eio { libc::EIO } else { libc::ENXIO },
                times: 1 + u32::from(times % 4),
            })
            .collect(),
        stop_at_step: i.stop_at_step.map(u64::from),
        max_restarts: u32::from(i.max_restarts % 5),
        // A buffer ring has at least one buffer (registration refuses an empty one).
        provided_buffers: 1 + u16::from(i.provided_buffers % 64),
        ..SimParams::default()
    };
    match run_reader(i.seed, cfg, &params) {
        Ok(_) | Err(SimFailure::InvalidConfig(_)) => {}
        Err(e @ SimFailure::Violation { .. }) => {
            panic!("reader violation: {e}\nconfig {cfg:?}\nparams {params:?}")
        }
    }
});
