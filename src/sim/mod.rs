//! Deterministic simulated device, for tests and fuzzing only (feature `sim`).
//!
//! It plays the driver's part for the sans-I/O machines: executes their actions against an
//! in-memory source and feeds completions back in a seeded random order, with short
//! transfers, injected errors at chosen offsets, delays, out-of-order acknowledgements and
//! stops. [`run_reader`] and [`run_fifo`] drive a machine to its end, check the invariants
//! after every step and at teardown, and return a report. The same seed gives the same run.
//!
//! This module holds what every run shares — the source's content ([`pattern`]), the fault
//! model ([`SimParams`], [`Fault`]: short transfers, injected errors, delays, bursts) drawn
//! from one seeded [`fastrand::Rng`] — and one file per machine (`reader`, `fifo`).
//!
//! This is not a backend: real-device tests still run against real files, pipes and ptys.
//!
//! ```
//! use iocomplete::reader::{FinishReason, ReaderConfig};
//! use iocomplete::sim::{run_reader, SimParams};
//!
//! let params = SimParams { data_len: 10_000, ..SimParams::default() };
//! let report = run_reader(7, ReaderConfig::positional(512).pending_reads(4), &params).unwrap();
//! assert_eq!(report.finish, FinishReason::Eof);
//! assert_eq!(report.bytes_delivered, 10_000);
//! ```

use std::fmt;

use fastrand::Rng;

use crate::error::Error;

mod fifo;
mod reader;

pub use fifo::{run_fifo, FifoRun, FifoTxnSpec};
pub use reader::{run_reader, ReaderRun};

/// The content of the simulated source at `offset`: a function of the offset, so that any
/// misplaced, duplicated or corrupted byte is detected.
pub fn pattern(offset: u64) -> u8 {
    let mut z = offset.wrapping_add(0x5851_F42D_4C95_7F2D);
    z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z >> 56) as u8
}

/// An injected error: an operation whose range covers byte `at` fails with `errno`, the
/// first `times` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Byte offset (file offset, or stream position) that fails.
    pub at: u64,
    /// The errno returned (positive, e.g. `libc::EIO`).
    pub errno: i32,
    /// How many times it fails before the byte reads fine.
    pub times: u32,
}

/// Parameters of a simulated run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimParams {
    /// Bytes in the source (file length, or total bytes the stream produces before closing).
    pub data_len: u64,
    /// Percent of transfers that move fewer bytes than they could.
    pub short_pct: u32,
    /// Largest completion delay, in steps, after an operation is issued.
    pub max_delay: u32,
    /// Percent chance per step that one pending delivery is acknowledged (the rest of the
    /// time other things happen first: deliveries run "on other threads").
    pub ack_pct: u32,
    /// Stream: largest burst of bytes arriving at once.
    pub burst_max: u32,
    /// Stream: percent chance per step that a burst arrives.
    pub burst_pct: u32,
    /// Injected errors.
    pub faults: Vec<Fault>,
    /// Stop the reader at this step (reader runs only).
    pub stop_at_step: Option<u64>,
    /// Answer [`Restart::Yes`](crate::reader::Restart::Yes) this many times, then
    /// [`Restart::No`](crate::reader::Restart::No).
    pub max_restarts: u32,
    /// Multishot: buffers in the provided-buffer ring.
    pub provided_buffers: u16,
    /// Give up (and report a violation: no progress) after this many steps.
    pub max_steps: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            data_len: 64 * 1024,
            short_pct: 20,
            max_delay: 4,
            ack_pct: 50,
            burst_max: 3000,
            burst_pct: 30,
            faults: Vec::new(),
            stop_at_step: None,
            max_restarts: 3,
            provided_buffers: 8,
            max_steps: 1_000_000,
        }
    }
}

/// Why a simulated run did not produce a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimFailure {
    /// The machine rejected the configuration (not a bug: fuzzers skip these).
    InvalidConfig(Error),
    /// An invariant was broken: a bug.
    Violation {
        /// Step at which it was detected.
        step: u64,
        /// What was broken.
        what: String,
    },
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimFailure::InvalidConfig(e) => write!(f, "invalid configuration: {e}"),
            SimFailure::Violation { step, what } => write!(f, "step {step}: {what}"),
        }
    }
}

impl std::error::Error for SimFailure {}

// ---- the simulated source -----------------------------------------------------------------

/// A stream that produces `total` bytes in bursts; some time later the writer closes it.
#[derive(Debug)]
struct Stream {
    total: u64,
    /// Bytes produced so far.
    produced: u64,
    /// Bytes consumed by reads.
    consumed: u64,
    /// The writer has closed its end (after producing everything).
    closed: bool,
}

impl Stream {
    fn new(total: u64) -> Stream {
        Stream {
            total,
            produced: 0,
            consumed: 0,
            closed: false,
        }
    }

    fn avail(&self) -> u64 {
        self.produced - self.consumed
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn tick(&mut self, rng: &mut Rng, p: &SimParams) {
        if rng.u32(..100) >= p.burst_pct.max(1) {
            return;
        }
        if self.produced < self.total {
            let burst = 1 + rng.u64(..u64::from(p.burst_max.max(1)));
            self.produced = (self.produced + burst).min(self.total);
        } else {
            self.closed = true;
        }
    }
}

/// Take a fault covering `[at, at + len)`, if one is armed.
fn take_fault(faults: &mut [Fault], at: u64, len: u64) -> Option<i32> {
    let f = faults
        .iter_mut()
        .find(|f| f.times > 0 && f.at >= at && f.at < at.saturating_add(len))?;
    f.times -= 1;
    Some(f.errno)
}

/// How many of `n` available bytes a transfer moves (short transfers, in `align` units).
fn transfer(rng: &mut Rng, p: &SimParams, n: u64, align: u64) -> (u64, bool) {
    if n > align && rng.u32(..100) < p.short_pct {
        let units = n / align;
        if units > 1 {
            return (align * (1 + rng.u64(..units - 1)), true);
        }
    }
    (n, false)
}

/// Seeds for a randomized test: `default`, or `IOCOMPLETE_SIM_SEEDS` for longer campaigns.
#[cfg(test)]
pub(crate) fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("IOCOMPLETE_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    0..n
}

fn violation(step: u64, what: impl Into<String>) -> SimFailure {
    SimFailure::Violation {
        step,
        what: what.into(),
    }
}
