//! The I/O loop of `iobench`: keeps `qd` operations in flight on one ring, with one
//! registered buffer per operation that is re-armed with the next request as soon as its
//! completion arrives (the buffer never goes back to the pool in steady state), and
//! records each operation's latency in a fixed log-bucket histogram.
//!
//! Steady state performs no heap allocation per operation: `iobench` counts them, and
//! `tests/tools.rs` checks the count is 0.

use std::time::{Duration, Instant};

use iocomplete::{BufferPool, Op, PoolBuf, Ring, Target};

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rw {
    /// Random reads, offsets aligned to the block size.
    RandRead,
    /// Sequential reads, wrapping at the end of the file.
    Read,
    /// Random writes.
    RandWrite,
    /// Sequential writes, wrapping at the end of the file.
    Write,
}

impl Rw {
    /// Parse the `--rw` value.
    pub(crate) fn parse(s: &str) -> Option<Rw> {
        Some(match s {
            "randread" => Rw::RandRead,
            "read" => Rw::Read,
            "randwrite" => Rw::RandWrite,
            "write" => Rw::Write,
            _ => return None,
        })
    }

    /// Whether the pattern writes.
    pub(crate) fn is_write(self) -> bool {
        matches!(self, Rw::RandWrite | Rw::Write)
    }

    fn is_random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite)
    }
}

/// A latency histogram with log-linear buckets: exact below 64 ns, then 32 buckets per
/// power of two (about 3 % resolution) up to `u64::MAX`. Recording is an index
/// computation and an increment; nothing allocates after construction.
pub(crate) struct Histogram {
    counts: Box<[u64; Histogram::BUCKETS]>,
    total: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 5;
    const SUB: usize = 1 << Self::SUB_BITS;
    const BUCKETS: usize = (64 - Self::SUB_BITS as usize) * Self::SUB;

    /// An empty histogram (its one allocation happens here).
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: Box::new([0; Self::BUCKETS]),
            total: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * Self::SUB as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = e - Self::SUB_BITS;
        (shift as usize + 1) * Self::SUB + ((v >> shift) as usize - Self::SUB)
    }

    /// The smallest value that falls into bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < 2 * Self::SUB {
            return i as u64;
        }
        let shift = (i / Self::SUB - 1) as u32;
        ((i % Self::SUB + Self::SUB) as u64) << shift
    }

    /// Record one value (nanoseconds).
    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
    }

    /// Number of recorded values.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The value at percentile `p` (0..=100): the middle of the bucket holding it.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = Self::lower(i);
                let hi = Self::lower(i + 1).max(lo + 1);
                return lo + (hi - lo - 1) / 2;
            }
        }
        u64::MAX
    }

    /// Add everything `other` recorded (the histograms of several threads' runs).
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts.iter()) {
            *c += o;
        }
        self.total += other.total;
    }

    /// Forget everything recorded.
    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    /// Access pattern.
    pub(crate) rw: Rw,
    /// Block size in bytes.
    pub(crate) bs: usize,
    /// Operations kept in flight.
    pub(crate) qd: usize,
    /// Number of `bs` blocks in the file (offsets are `0..blocks * bs`).
    pub(crate) blocks: u64,
}

/// Totals of a run.
#[derive(Default)]
pub(crate) struct Totals {
    /// Completed operations.
    pub(crate) ops: u64,
    /// Bytes transferred.
    pub(crate) bytes: u64,
    /// Per-operation latency, submission to completion, in nanoseconds.
    pub(crate) lat: Histogram,
}

/// The loop's state: everything is sized at construction.
pub(crate) struct Engine<'p> {
    job: Job,
    target: Target,
    pool: &'p BufferPool,
    /// Submission time of the operation tagged `i` (ns since `epoch`).
    started: Vec<u64>,
    /// File offset of the operation tagged `i`.
    offsets: Vec<u64>,
    epoch: Instant,
    /// Random offsets (`fastrand`'s generator: a few instructions each).
    rng: fastrand::Rng,
    next_seq: u64,
    /// Totals since the last [`Engine::reset`].
    pub(crate) totals: Totals,
}

/// Why a run stopped early.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The ring failed.
    Ring(iocomplete::Error),
    /// An operation failed.
    Op {
        offset: u64,
        error: iocomplete::Error,
    },
    /// A transfer came back short (the file shrank?).
    Short {
        offset: u64,
        got: usize,
        want: usize,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Ring(e) => write!(f, "ring: {e}"),
            RunError::Op { offset, error } => write!(f, "I/O at offset {offset}: {error}"),
            RunError::Short { offset, got, want } => {
                write!(
                    f,
                    "short transfer at offset {offset}: {got} of {want} bytes"
                )
            }
        }
    }
}

impl<'p> Engine<'p> {
    /// Prepare a run of `job` on `target` with buffers from `pool` (at least `qd` slots
    /// of at least `bs` bytes, registered with the ring for fixed-buffer I/O). `stream`
    /// picks the sequence of random offsets: one per thread of a `--threads` run.
    pub(crate) fn new(job: Job, target: Target, pool: &'p BufferPool, stream: u64) -> Engine<'p> {
        Engine {
            job,
            target,
            pool,
            started: vec![0; job.qd],
            offsets: vec![0; job.qd],
            epoch: Instant::now(),
            rng: fastrand::Rng::with_seed(
                0x9E37_79B9_7F4A_7C15
                    ^ job.bs as u64
                    ^ ((job.qd as u64) << 32)
                    ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
            ),
            next_seq: 0,
            totals: Totals::default(),
        }
    }

    /// Zero the totals (e.g. after a warm-up).
    pub(crate) fn reset(&mut self) {
        self.totals.ops = 0;
        self.totals.bytes = 0;
        self.totals.lat.clear();
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    #[inline]
    fn next_offset(&mut self) -> u64 {
        let block = if self.job.rw.is_random() {
            self.rng.u64(..self.job.blocks)
        } else {
            let b = self.next_seq;
            self.next_seq = if b + 1 >= self.job.blocks { 0 } else { b + 1 };
            b
        };
        block * self.job.bs as u64
    }

    #[inline]
    fn issue(&mut self, ring: &mut Ring, tag: usize, buf: PoolBuf, now: u64) {
        let off = self.next_offset();
        let op = if self.job.rw.is_write() {
            Op::write(self.target, off, buf)
        } else {
            Op::read_len(self.target, off, buf, self.job.bs)
        };
        // The tag names the in-flight slot: its submission stamp and offset. The
        // completion comes back through the ring's own FIFO (no atomics, no refcount).
        ring.submit(op.tag(tag as u64)).to_ring();
        self.started[tag] = now;
        self.offsets[tag] = off;
    }

    /// Keep `qd` operations in flight until `stop(&totals)` says so (checked once per
    /// batch of completions, with the time elapsed since the call), or until `ops`
    /// operations (when given) have been issued, then let the last ones finish: with
    /// `ops`, exactly that many run. The totals accumulate across calls until
    /// [`Engine::reset`].
    pub(crate) fn run(
        &mut self,
        ring: &mut Ring,
        ops: Option<u64>,
        mut stop: impl FnMut(&Totals, Duration) -> bool,
    ) -> Result<(), RunError> {
        let t0 = self.now_ns();
        let now = t0;
        let budget = ops.unwrap_or(u64::MAX);
        let first = self
            .job
            .qd
            .min(usize::try_from(budget).unwrap_or(usize::MAX));
        let mut issued = first as u64;
        for tag in 0..first {
            let mut buf = self.pool.try_get().map_err(RunError::Ring)?;
            if self.job.rw.is_write() {
                // Write the whole block: the slot's bytes, whatever they hold.
                buf.set_len(self.job.bs).map_err(RunError::Ring)?;
            }
            self.issue(ring, tag, buf, now);
        }
        let mut in_flight = first;
        let mut stopping = issued >= budget;
        while in_flight > 0 {
            // Submit what was re-armed and wait for a quarter of the queue to complete:
            // one enter (and, with DEFER_TASKRUN, one wake-up) per batch on devices that
            // complete asynchronously; page-cache reads complete inside the submit anyway.
            // Same policy as fio's `iodepth_batch_complete_min` = QD/4 in compare.sh.
            let want = (in_flight / 4).max(1);
            ring.run_wait(want, None).map_err(RunError::Ring)?;
            // One clock read per batch: the completion time of everything reaped now and
            // the submission time of everything re-armed now.
            let now = self.now_ns();
            if !stopping && stop(&self.totals, Duration::from_nanos(now - t0)) {
                stopping = true;
            }
            while let Some(c) = ring.pop_completion() {
                let tag = c.tag() as usize;
                let offset = self.offsets[tag];
                in_flight -= 1;
                self.totals
                    .lat
                    .record(now.saturating_sub(self.started[tag]));
                let n = match c.result() {
                    Ok(n) => n,
                    Err(error) => return Err(RunError::Op { offset, error }),
                };
                if n != self.job.bs {
                    return Err(RunError::Short {
                        offset,
                        got: n,
                        want: self.job.bs,
                    });
                }
                self.totals.ops += 1;
                self.totals.bytes += n as u64;
                let Some(mut buf) = c.into_buf() else {
                    continue;
                };
                if !stopping {
                    if self.job.rw.is_write() {
                        buf.set_len(self.job.bs).map_err(RunError::Ring)?;
                    }
                    self.issue(ring, tag, buf, now);
                    in_flight += 1;
                    issued += 1;
                    stopping = issued >= budget;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histogram_percentiles_match_a_sorted_reference() {
        let mut h = Histogram::new();
        let mut vals: Vec<u64> = (0..10_000u64)
            .map(|i| (i * 2_654_435_761) % 3_000_000 + 1)
            .collect();
        for &v in &vals {
            h.record(v);
        }
        vals.sort_unstable();
        for p in [1.0, 50.0, 90.0, 99.0, 99.9] {
            let exact = vals[((p / 100.0 * vals.len() as f64).ceil() as usize).max(1) - 1];
            let got = h.percentile(p);
            let err = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(err < 0.04, "p{p}: histogram {got}, exact {exact}");
        }
        for v in 0..200u64 {
            let mut one = Histogram::new();
            one.record(v);
            let got = one.percentile(50.0);
            assert!(got.abs_diff(v) <= v / 30 + 1, "{v} -> {got}");
        }
    }
}
