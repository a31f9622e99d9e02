//! The FIFO receive machine on the simulated stream: arbitrary transactions (lengths,
//! drain mode, cancels at any step, deadline timers that fire at any step), burst
//! patterns, short reads, faults; timer firings and timer cancels complete in any order
//! with the operations. `sim::run_fifo` checks every byte arrives once and in order, one
//! poll per `EAGAIN`, the timer armed once and back before the transaction ends, and
//! statuses that match what happened; a violation is a bug.
#![no_main]

use iocomplete::sim::{run_fifo, Fault, FifoTxnSpec, SimFailure, SimParams};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Txn {
    len: u16,
    drain: bool,
    cancel_after: Option<u8>,
    deadline_after: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    data_len: u16,
    short_pct: u8,
    max_delay: u8,
    burst_max: u16,
    burst_pct: u8,
    faults: Vec<(u16, bool, u8)>,
    txns: Vec<Txn>,
    /// Raw lengths (including 0 and > i32::MAX) for a transaction that must be refused.
    huge: Option<u32>,
}

fuzz_target!(|i: Input| {
    let data_len = u64::from(i.data_len % 8192);
    let faults = i.faults.iter().take(4).map(|&(at, eio, times)| Fault {
        at: u64::from(at % 8192),
        errno: if eio { libc::EIO } else { libc::ECONNRESET },
        times: 1 + u32::from(times % 3),
    });
    let params = SimParams {
        data_len,
        short_pct: u32::from(i.short_pct % 100),
        max_delay: u32::from(i.max_delay % 8),
        burst_max: 1 + u32::from(i.burst_max % 2048),
        burst_pct: 5 + u32::from(i.burst_pct % 96),
        faults: faults.collect(),
        ..SimParams::default()
    };
    let mut txns: Vec<FifoTxnSpec> = i
        .txns
        .iter()
        .take(8)
        .map(|t| FifoTxnSpec {
            len: u32::from(t.len % 4096),
            drain: t.drain,
            cancel_after: t.cancel_after.map(|c| u32::from(c % 64)),
            deadline_after: t.deadline_after.map(|d| u32::from(d % 64)),
        })
        .collect();
    if let Some(h) = i.huge {
        let len = if h % 2 == 0 { 0 } else { h | 0x8000_0000 };
        let at = (h as usize >> 8) % (txns.len() + 1);
        txns.insert(at, FifoTxnSpec::receive(len));
    }
    match run_fifo(i.seed, &txns, &params) {
        Ok(_) | Err(SimFailure::InvalidConfig(_)) => {}
        Err(e @ SimFailure::Violation { .. }) => {
            panic!("fifo violation: {e}\ntxns {txns:?}\nparams {params:?}")
        }
    }
});
