//! Checks shared by the driver tests: DMA transfer reports, split progress and runs,
//! reader deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocomplete::{
    BufferPool, Driver, Error, ErrorKind, Job, Restart, Ring, SplitConfig, SplitDriver,
    SplitOutcome, Target, TransferReport,
};

/// Records every DMA transfer report (through [`hook`](Reports::hook), the driver's
/// callback) and checks the exactly-once `last` rule as it goes.
#[derive(Debug, Default)]
pub struct Reports(Arc<Mutex<Vec<TransferReport>>>);

impl Reports {
    /// A report hook that records here.
    pub fn hook(&self) -> impl FnMut(&TransferReport) + Send + 'static {
        let all = self.0.clone();
        move |r| {
            let mut all = all.lock().unwrap();
            assert!(
                !all.iter().any(|x| x.last),
                "a report after the final transfer: {r:?}"
            );
            all.push(*r);
        }
    }

    /// Every report so far, in order.
    pub fn all(&self) -> Vec<TransferReport> {
        self.0.lock().unwrap().clone()
    }

    /// Final reports (exactly one for a finished transaction).
    pub fn finals(&self) -> usize {
        self.all().iter().filter(|r| r.last).count()
    }

    /// Bytes reported moved.
    pub fn bytes(&self) -> u64 {
        self.all().iter().map(|r| r.bytes).sum()
    }
}

/// Every byte of `[start, end)` covered exactly once by `spans` (offset, length), and in
/// order if `ordered`.
pub fn check_spans(spans: &[(u64, usize)], start: u64, end: u64, ordered: bool) {
    if ordered {
        let mut at = start;
        for &(o, l) in spans {
            assert_eq!(o, at, "ordered delivery out of order");
            at += l as u64;
        }
    }
    let mut s = spans.to_vec();
    s.sort_unstable();
    let mut at = start;
    for (o, l) in s {
        assert_eq!(o, at, "gap or duplicate at {at}");
        at += l as u64;
    }
    assert_eq!(at, end, "bytes missing at the end");
}

/// A copy of `len` bytes from offset 0 of `src` to offset 0 of `dst`.
pub fn copy_job(src: Target, dst: Target, len: u64) -> Job {
    copy_at((src, 0), (dst, 0), len)
}

/// A copy of `len` bytes from `src` to `dst`, each a (target, offset).
pub fn copy_at(
    (src, src_offset): (Target, u64),
    (dst, dst_offset): (Target, u64),
    len: u64,
) -> Job {
    Job::Copy {
        src,
        src_offset,
        dst,
        dst_offset,
        len,
    }
}

/// Run `job` to its end with a new split driver, given its callbacks by `hook`.
pub fn run_job(
    ring: &mut Ring,
    pool: &BufferPool,
    job: Job,
    config: SplitConfig,
    hook: impl FnOnce(SplitDriver) -> SplitDriver,
) -> SplitOutcome {
    let mut drv = hook(SplitDriver::new(ring, pool, job, config).unwrap());
    drv.run(ring).unwrap()
}

/// Split progress reports: never backwards, never past the length.
#[derive(Debug, Default)]
pub struct Progress {
    pub last: u64,
    pub calls: usize,
}

impl Progress {
    /// `drv`, reporting its progress to `p`.
    pub fn hook(p: &Arc<Mutex<Progress>>, drv: SplitDriver) -> SplitDriver {
        let p = p.clone();
        drv.on_progress(move |done, len| {
            let mut p = p.lock().unwrap();
            assert!(done <= len && done >= p.last, "progress {done}/{len}");
            p.last = done;
            p.calls += 1;
        })
    }
}

/// Step a split driver to its completion, checking that it completes once, with no child
/// and no CQE left in the ring.
pub fn finish_split(drv: &mut SplitDriver, ring: &mut Ring) -> SplitOutcome {
    loop {
        if let Some(c) = drv.step(ring, Some(Duration::from_millis(100))).unwrap() {
            assert_eq!(drv.in_flight(), 0, "completed with children in flight");
            assert_eq!(ring.in_flight(), 0, "completed before its last CQE");
            assert!(drv.process(ring).unwrap().is_none(), "completed twice");
            assert!(drv.is_complete());
            return c;
        }
    }
}

/// A reader's `on_failed` hook that expects `EIO`, counts its calls (the returned counter)
/// and answers what `then` says (after healing the device, say).
pub fn on_eio(
    mut then: impl FnMut() -> Restart + Send + 'static,
) -> (
    Arc<AtomicUsize>,
    impl FnMut(&Error) -> Restart + Send + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hook = move |e: &Error| {
        assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
        c.fetch_add(1, Ordering::SeqCst);
        then()
    };
    (calls, hook)
}

/// Run `ring` until nothing is in flight; fail (not hang) after `limit`, saying `what`
/// never ended.
pub fn run_until_idle(ring: &mut Ring, limit: Duration, what: &str) {
    let end = Instant::now() + limit;
    while ring.in_flight() > 0 {
        assert!(Instant::now() < end, "{what} never ended");
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

/// Drop `driver` mid-flight, its `deadline` armed: its children (or transfers: `what`)
/// complete and every buffer is back before the deadline, not only when the timer fires;
/// the timer fires in the end, and nothing is left in the ring.
pub fn drop_mid_flight<D>(
    ring: &mut Ring,
    pool: &BufferPool,
    driver: D,
    deadline: Duration,
    what: &str,
) {
    let armed = Instant::now();
    drop(driver);
    while ring.in_flight() > 1 {
        assert!(armed.elapsed() < deadline, "{what} still in flight");
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert!(armed.elapsed() < deadline);
    let st = pool.stats();
    assert_eq!(st.free, st.total, "buffers held until the deadline: {st:?}");
    while ring.in_flight() > 0 {
        assert!(armed.elapsed() < deadline * 5, "the timer never fired");
        ring.run_once(Some(Duration::from_millis(100))).unwrap();
    }
}

/// One round of a [`deadline_race`]: request the 4 KiB block at `offset` of `target`
/// (buffers from `pool`) with `deadline`.
#[derive(Debug)]
pub struct Round<'a> {
    pub i: usize,
    pub ring: &'a mut Ring,
    pub pool: &'a BufferPool,
    pub target: Target,
    pub offset: u64,
    pub deadline: Duration,
}

/// A deadline racing the last transfer of a one-block request, 3000 times, on a loop
/// device of 4 KiB verify blocks of `seed` (direct I/O) with one buffer. `round` runs
/// each request to its end (checking what it moved) and returns its status, the bytes it
/// moved and the completions it saw: exactly one, with nothing left in the ring and the
/// buffer back; done with the whole block, or timed out. The race must go both ways.
pub fn deadline_race(
    seed: u64,
    mut round: impl FnMut(Round<'_>) -> (iocomplete::Result<()>, u64, usize),
) {
    const ROUNDS: usize = 3000;
    const SIZE: u64 = 1 << 20;
    const DELAYS_US: [u64; 10] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 1000];
    let Some(dev) = super::LoopDev::new(SIZE, Some((4096, seed))) else {
        return;
    };
    let pool = super::pool(1, 4096);
    let (mut ring, target) = super::ring_with(&pool, dev.open(false));
    let (mut ok, mut timed_out, mut moved_anyway) = (0, 0, 0);
    for i in 0..ROUNDS {
        let offset = (i as u64 * 7919 % (SIZE / 4096)) * 4096;
        let deadline = Duration::from_micros(DELAYS_US[i % DELAYS_US.len()]);
        let (status, moved, completions) = round(Round {
            i,
            ring: &mut ring,
            pool: &pool,
            target,
            offset,
            deadline,
        });
        assert_eq!(completions, 1);
        assert_eq!(
            ring.in_flight(),
            0,
            "completed with the timer or a transfer in flight"
        );
        match status {
            Ok(()) => {
                ok += 1;
                assert_eq!(moved, 4096);
            }
            Err(e) => {
                assert!(e.is_timed_out(), "iteration {i}: {e}");
                timed_out += 1;
                moved_anyway += usize::from(moved > 0);
            }
        }
        assert_eq!(pool.stats().free, 1);
    }
    eprintln!(
        "deadline race: {ok} completed, {timed_out} timed out ({moved_anyway} of them had read)"
    );
    assert_eq!(ok + timed_out, ROUNDS);
    assert!(ok > 0 && timed_out > 0, "the race never went both ways");
    super::check_teardown(&ring, &[&pool]);
}

/// A FIFO receiver's hook log: `('B', txn, len)` at each begin, `('E', txn, bytes)` at each end.
pub type FifoLog = std::sync::Arc<std::sync::Mutex<Vec<(char, iocomplete::fifo::TxnId, u32)>>>;

/// A receiver for `t` whose hooks write a [`FifoLog`].
pub fn logged_fifo(
    ring: &iocomplete::Ring,
    t: iocomplete::Target,
) -> (iocomplete::FifoReceiver, FifoLog) {
    let log: FifoLog = Default::default();
    let (b, e) = (log.clone(), log.clone());
    let rx = iocomplete::FifoReceiver::new(ring, t)
        .unwrap()
        .on_begin(move |txn, len| b.lock().unwrap().push(('B', txn, len)))
        .on_end(move |txn, bytes| e.lock().unwrap().push(('E', txn, bytes)));
    (rx, log)
}
