//! The DMA driver: a [`Transaction`] over an [`SgList`] executed on a [`Ring`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::sg::{Segment, Transfer, TransferId};
use super::sglist::SgList;
use super::transaction::{Action, Completion, Config, Transaction, TransferStatus};
use crate::buf::{IoBuf, PoolBuf};
use crate::error::{Error, ErrorKind, Result};
use crate::queue::CompletionQueue;
use crate::request::Bufs;
use crate::ring::{BufPart, Op, OpId, Ring, Target};
use crate::split::Direction;

/// One transfer's completion, as the per-transfer callback sees it (the seed's
/// `EvtDmaTransactionDmaTransferComplete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReport {
    /// The transfer (device offset, length, first segment, pieces).
    pub transfer: Transfer,
    /// How it ended.
    pub status: TransferStatus,
    /// Bytes it moved.
    pub bytes: u64,
    /// What the transaction answered — [`Transaction::transfer_completed`] for `Complete`,
    /// [`Transaction::completed_final`] for `Error` and `Cancelled`: true exactly once,
    /// on the final transfer, after which the buffers may be handed back.
    pub last: bool,
}

/// Counters of one transaction, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// Transfers submitted to the ring.
    pub transfers: u64,
    /// Transfers that had to wait for a buffer another transfer in flight was using (a
    /// segment split across transfers).
    pub deferred: u64,
    /// Cancels sent for transfers in flight.
    pub cancels: u64,
    /// Most transfers in flight at once.
    pub max_in_flight: usize,
}

/// A transfer submitted to the ring.
#[derive(Debug, Clone, Copy)]
struct Flight {
    transfer: Transfer,
    op: OpId,
}

/// The deadline timer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    None,
    Pending(Duration),
    Armed(OpId),
    Done,
}

/// Tag of the timer's operation; transfers use their id.
const TIMER_TAG: u64 = u64::MAX;

/// The errno a transfer status carries for an error that has none (the request was refused
/// before reaching the kernel); the typed error is kept for the completion.
fn errno_of(e: &Error) -> i32 {
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.kind() {
        ErrorKind::StaleTarget => libc::EBADF,
        ErrorKind::PoolExhausted => libc::ENOBUFS,
        ErrorKind::Unsupported { .. } => libc::EOPNOTSUPP,
        ErrorKind::UnexpectedEof { .. } => libc::EIO,
        _ => libc::EINVAL,
    }
}

/// Why [`DmaDriver::new`] refused a transaction, with the scatter/gather list handed back
/// untouched (its buffers may hold data to write). Converts into the crate's [`Error`], so
/// `?` works in functions returning [`Result`].
#[derive(Debug)]
pub struct Rejected {
    error: Error,
    sg: SgList,
}

impl Rejected {
    /// The error.
    pub fn error(&self) -> Error {
        self.error
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// The list, back.
    pub fn into_sg(self) -> SgList {
        self.sg
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Rejected {}

impl From<Rejected> for Error {
    fn from(r: Rejected) -> Error {
        r.error
    }
}

/// Everything [`DmaDriver::new`] checks before building the transaction.
fn check(
    ring: &Ring,
    target: Target,
    sg: &SgList,
    direction: Direction,
    config: Config,
) -> Result<crate::FdInfo> {
    let info = ring.info(target)?;
    if !info.kind.is_seekable() {
        return Err(Error::wrong_kind("a file or block device", info.kind));
    }
    match direction {
        Direction::Read if !info.readable => return Err(Error::new(ErrorKind::NotReadable)),
        Direction::Write if !info.writable => return Err(Error::new(ErrorKind::NotWritable)),
        // Its writes would land at the end of the file, not at the segments' offsets.
        Direction::Write if info.append => return Err(Error::new(ErrorKind::AppendOnly)),
        _ => {}
    }
    if let Some(s) = sg
        .segments()
        .iter()
        .find(|s| !crate::split::addressable(s.device_offset, s.len))
    {
        return Err(Error::new(ErrorKind::OffsetOutOfRange {
            offset: s.device_offset,
            len: s.len,
        }));
    }
    if info.direct {
        let a = info.offset_align;
        let misaligned = |what, value| {
            Error::new(ErrorKind::Misaligned {
                what,
                value,
                align: a,
            })
        };
        if config.max_transfer_len() % u64::from(a) != 0 {
            return Err(misaligned("max transfer", config.max_transfer_len()));
        }
        for (seg, buf) in sg.iter() {
            info.check_direct(seg.device_offset, seg.len, buf.data_ptr() as u64)?;
        }
    }
    Ok(info)
}

/// Executes a DMA-style [`Transaction`] over an [`SgList`] on a [`Ring`]: one vectored
/// operation per transfer (`Op::readv_parts` / `Op::writev_parts`, so `READV_FIXED` /
/// `WRITEV_FIXED` when the pool is registered and the kernel has them), transfers bounded
/// by the config's max transfer length and max segments.
///
/// - The per-transfer callback gets a [`TransferReport`] for every transfer: its
///   [`TransferStatus`], the bytes it moved, and `last` — the driver calls
///   [`Transaction::transfer_completed`] for a `Complete` transfer and
///   [`Transaction::completed_final`] for an `Error` or `Cancelled` one, and `last` is what
///   they return: true exactly once, on the final transfer.
/// - [`stop`](Self::stop) ends the transaction with [`ErrorKind::Cancelled`]; a deadline
///   ends it with [`ErrorKind::TimedOut`] (a kernel timer, raced against the transfers and
///   a stop through the transaction's [`CompletionGate`](crate::gate::CompletionGate)).
///   Transfers in flight are cancelled and drain first.
/// - [`bytes_transferred`](Self::bytes_transferred) counts what actually moved, even when
///   a stop or a timeout wins.
/// - The buffers are handed back ([`take_sg`](Self::take_sg), [`run`](Self::run)) only
///   after the final transfer's completion came back. A transfer whose buffers another
///   transfer in flight still holds (a segment split across two transfers) waits for them.
/// - Bad input — a target that is not a file or block device, open the wrong way, or a
///   direct target and segments, buffers or a max transfer not aligned as it needs — is an
///   error from [`new`](Self::new), before anything reaches the kernel.
///
/// Dropping a driver mid-flight is safe: the buffers of transfers in flight are parked in
/// the ring until the kernel is done with them, and return to their pool when their
/// completions arrive. An armed deadline timer stays in the ring until it fires (a drop
/// has no ring to cancel it with): to end everything early, [`stop`](Self::stop) and
/// drive the transaction to its completion.
///
/// ```
/// use iocomplete::dma::{Config, DmaDriver, SgList};
/// use iocomplete::split::Direction;
/// use iocomplete::{BufferPool, Ring};
/// use std::io::Write;
///
/// let mut f = tempfile::tempfile().unwrap();
/// f.write_all(&(0..=255u8).cycle().take(64 * 1024).collect::<Vec<_>>()).unwrap();
/// let mut ring = Ring::new()?;
/// let pool = BufferPool::builder().slots(8).slot_len(4096).build()?;
/// ring.register_pool(&pool);
/// let file = ring.register(f)?;
/// let mut sg = SgList::new();
/// sg.push_extent(&pool, 1000, 5000)?; // two segments
/// sg.push_extent(&pool, 40_000, 100)?; // one more
/// let mut finals = 0;
/// let config = Config::new().max_transfer(4096);
/// let driver = DmaDriver::new(&mut ring, file, sg, Direction::Read, config, None,
///     |r: &iocomplete::dma::TransferReport| finals += r.last as u32)?;
/// let (done, sg) = driver.run(&mut ring)?;
/// assert_eq!((done.status, done.bytes), (Ok(()), 5100));
/// assert_eq!(sg.bufs()[2].data()[0], (40_000 % 256) as u8);
/// assert_eq!(finals, 1);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct DmaDriver<F> {
    tx: Transaction<Vec<Segment>>,
    /// The list's buffers; `None` while a transfer in flight holds one.
    bufs: Vec<Option<PoolBuf>>,
    target: Target,
    queue: Arc<CompletionQueue<crate::Completion>>,
    /// The deadline timer's own queue: an armed timer keeps only this one alive, so after
    /// a drop mid-flight the children's completions (and their buffers) are freed as soon
    /// as the last of them arrives, not when the timer fires.
    timer_queue: Arc<CompletionQueue<crate::Completion>>,
    flights: Vec<Flight>,
    /// Submitted by the transaction, waiting for buffers held by another transfer.
    deferred: VecDeque<Transfer>,
    /// Emptied buffer vectors from completed transfers, reused for the next ones.
    spare: Vec<PoolBuf>,
    spare_io: Vec<IoBuf>,
    timer: Timer,
    /// The first error that had no errno of its own (a refused request), to report typed.
    first_error: Option<Error>,
    outcome: Option<Completion>,
    delivered: bool,
    started: bool,
    stopped: bool,
    /// Direct-I/O alignment of a read target (1 otherwise): a transfer resuming at an
    /// offset that is not a multiple of it follows a short read at end of file.
    read_align: u64,
    stats: DmaStats,
    on_transfer: F,
}

impl<F> fmt::Debug for DmaDriver<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDriver")
            .field("tx", &self.tx)
            .field("target", &self.target)
            .field("in_flight", &self.flights.len())
            .field("deferred", &self.deferred.len())
            .field("outcome", &self.outcome)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: FnMut(&TransferReport)> DmaDriver<F> {
    /// Validate and prepare a transaction moving `sg` in `direction` on `target`, with the
    /// transfer limits of `config` (its `timer` setting is replaced by whether a
    /// `deadline` is given). Nothing is submitted until the first
    /// [`process`](Self::process) / [`step`](Self::step) / [`run`](Self::run).
    ///
    /// The deadline counts from the first submission. One no kernel timer can reach
    /// (about 292 years or more, e.g. `from_secs(i64::MAX)` or [`Duration::MAX`]) means no
    /// deadline.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::StaleTarget`]; [`ErrorKind::WrongTargetKind`] for a target that is
    /// not a file or block device; [`ErrorKind::NotReadable`] / [`ErrorKind::NotWritable`]
    /// for one not open for `direction`, [`ErrorKind::AppendOnly`] for a write to one open
    /// `O_APPEND` (which ignores offsets); [`ErrorKind::ZeroLength`] for an empty list;
    /// [`ErrorKind::OffsetOutOfRange`] for a segment ending past the largest file offset
    /// (2⁶³ − 1); [`ErrorKind::OutOfRange`] for a config out of range;
    /// [`ErrorKind::Misaligned`] for a direct
    /// target and a segment offset or length, a buffer address or the max transfer not
    /// aligned as it needs. The error hands the
    /// list back ([`Rejected::into_sg`]); `?` turns it into the plain [`Error`].
    pub fn new(
        ring: &mut Ring,
        target: Target,
        sg: SgList,
        direction: Direction,
        config: Config,
        deadline: Option<Duration>,
        on_transfer: F,
    ) -> std::result::Result<DmaDriver<F>, Rejected> {
        let info = match check(ring, target, &sg, direction, config) {
            Ok(info) => info,
            Err(error) => return Err(Rejected { error, sg }),
        };
        let read_align = if info.direct && direction == Direction::Read {
            u64::from(info.offset_align)
        } else {
            1
        };
        let deadline = crate::split::kernel_deadline(deadline);
        let config = config.timer(deadline.is_some());
        let tx = match Transaction::new(sg.segments().to_vec(), direction, config) {
            Ok(tx) => tx,
            Err(error) => return Err(Rejected { error, sg }),
        };
        let (_, bufs) = sg.into_parts();
        let max = config.max_in_flight_count() as usize;
        Ok(DmaDriver {
            tx,
            bufs: bufs.into_iter().map(Some).collect(),
            target,
            queue: Arc::new(CompletionQueue::new(max + 1)),
            timer_queue: Arc::new(CompletionQueue::new(1)),
            flights: Vec::with_capacity(max),
            deferred: VecDeque::with_capacity(max),
            spare: Vec::new(),
            spare_io: Vec::new(),
            timer: deadline.map_or(Timer::None, Timer::Pending),
            first_error: None,
            outcome: None,
            delivered: false,
            started: false,
            stopped: false,
            read_align,
            stats: DmaStats::default(),
            on_transfer,
        })
    }

    /// Bytes actually moved so far, by every transfer, whatever the status.
    pub fn bytes_transferred(&self) -> u64 {
        self.tx.bytes_transferred()
    }

    /// The transaction (limits, status, progress).
    pub fn transaction(&self) -> &Transaction<Vec<Segment>> {
        &self.tx
    }

    /// Counters.
    pub fn stats(&self) -> DmaStats {
        self.stats
    }

    /// The request's completion, once it completed.
    pub fn outcome(&self) -> Option<Completion> {
        self.outcome
    }

    /// Transfers in the ring now.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Stop the transaction (the seed's `StopSystemTransfer`): it completes with
    /// [`ErrorKind::Cancelled`] unless a status was set first, after the transfers in
    /// flight drained. Returns false if it was already stopped or finished.
    pub fn stop(&mut self, ring: &mut Ring) -> bool {
        if self.stopped || self.tx.buffers_releasable() {
            return false;
        }
        self.stopped = true;
        self.tx.stop();
        self.pump(ring);
        true
    }

    /// Consume the completions that arrived, submit what the transaction asks for, and
    /// return its completion the first time it is available (`None` before and after).
    /// Does not drive the ring; see [`step`](Self::step).
    pub fn process(&mut self, ring: &mut Ring) -> Option<Completion> {
        if !self.started {
            self.started = true;
            // Not for a transaction that already ended (stopped before the start).
            let pending = match self.timer {
                Timer::Pending(d) if !self.tx.buffers_releasable() => Some(d),
                _ => None,
            };
            if let Some(d) = pending {
                let id = ring
                    .submit(Op::timeout(d).tag(TIMER_TAG))
                    .to_queue(&self.timer_queue);
                self.timer = Timer::Armed(id);
            }
        }
        loop {
            self.pump(ring);
            match self.queue.pop().or_else(|| self.timer_queue.pop()) {
                Some(c) => self.on_completion(ring, c),
                None => break,
            }
        }
        match self.outcome {
            Some(c) if !self.delivered => {
                self.delivered = true;
                Some(c)
            }
            _ => None,
        }
    }

    /// Drive the ring once (waiting up to `timeout`), then [`process`](Self::process).
    ///
    /// # Errors
    ///
    /// Only if the ring itself fails.
    pub fn step(
        &mut self,
        ring: &mut Ring,
        timeout: Option<Duration>,
    ) -> Result<Option<Completion>> {
        if let Some(c) = self.process(ring) {
            return Ok(Some(c));
        }
        if self.outcome.is_some() {
            return Ok(None);
        }
        ring.run_once(timeout)?;
        Ok(self.process(ring))
    }

    /// Drive the ring until the transaction completes; return its completion and the list
    /// (after a read, each buffer's `len()` is the prefix of it that was received —
    /// [`Transaction::segment_moved`]: bytes after a gap left by a stop, an error or a
    /// short read are not counted).
    ///
    /// # Errors
    ///
    /// If the ring fails, or the completion was already handed out.
    pub fn run(mut self, ring: &mut Ring) -> Result<(Completion, SgList)> {
        loop {
            if self.delivered {
                return Err(Error::new(ErrorKind::AlreadyCompleted));
            }
            if let Some(c) = self.step(ring, Some(Duration::from_millis(100)))? {
                return match self.take_sg() {
                    Some(sg) => Ok((c, sg)),
                    None => Err(Error::invalid("dma: buffers not back after completion")),
                };
            }
        }
    }

    /// The list back, once the final transfer's completion came back (or before anything
    /// was submitted: that ends the transaction, which completes with
    /// [`ErrorKind::Cancelled`] and 0 bytes at the next [`process`](Self::process));
    /// `None` while a transfer may still touch the buffers, or once taken.
    pub fn take_sg(&mut self) -> Option<SgList> {
        let home = self.flights.is_empty()
            && !self.bufs.is_empty()
            && self.bufs.iter().all(Option::is_some);
        if !(home && (self.tx.buffers_releasable() || !self.started)) {
            return None;
        }
        if !self.started && !self.stopped {
            // Nothing was submitted: the stop withdraws every transfer and ends the DMA
            // part now; its actions are carried out by the next `process`.
            self.stopped = true;
            self.tx.stop();
        }
        let bufs = std::mem::take(&mut self.bufs);
        Some(SgList::from_parts(
            self.tx.segments().to_vec(),
            bufs.into_iter().flatten().collect(),
        ))
    }

    fn pump(&mut self, ring: &mut Ring) {
        while let Some(action) = self.tx.poll_action() {
            match action {
                Action::Submit(t) if t.device_offset % self.read_align != 0 => {
                    // Direct I/O returns a count that is not a multiple of the alignment
                    // only at end of file: this resumption is past it. End of file, without
                    // a request the kernel would refuse.
                    self.report(t, TransferStatus::Complete, 0);
                }
                Action::Submit(t) => {
                    if !self.try_submit(ring, t) {
                        self.stats.deferred += 1;
                        self.deferred.push_back(t);
                    }
                }
                Action::Cancel(id) => {
                    if let Some(k) = self.deferred.iter().position(|t| t.id == id) {
                        // Never reached the kernel: it ends cancelled at once.
                        if let Some(t) = self.deferred.remove(k) {
                            self.report(t, TransferStatus::Cancelled, 0);
                        }
                    } else if let Some(f) = self.flights.iter().find(|f| f.transfer.id == id) {
                        self.stats.cancels += 1;
                        // False when the completion is already reaped (in our queue).
                        ring.cancel(f.op);
                    }
                }
                Action::CancelTimer => match self.timer {
                    Timer::Armed(id) => {
                        ring.cancel(id);
                    }
                    Timer::Pending(_) => {
                        // Never armed: it can never fire.
                        self.timer = Timer::Done;
                        let r = self.tx.timer_cancelled();
                        debug_assert!(r.is_ok(), "{r:?}");
                    }
                    Timer::None | Timer::Done => {}
                },
                Action::Complete(c) => self.complete(c),
            }
        }
    }

    /// Submit `t` if all its buffers are home; false (nothing done) otherwise.
    fn try_submit(&mut self, ring: &mut Ring, t: Transfer) -> bool {
        let segs = self.tx.segments();
        if !t
            .pieces(segs)
            .all(|p| self.bufs.get(p.segment).is_some_and(Option::is_some))
        {
            return false;
        }
        let mut parts = Vec::with_capacity(t.segment_count);
        let op = match self.tx.direction() {
            Direction::Read => {
                let mut v = std::mem::take(&mut self.spare);
                for p in t.pieces(segs) {
                    if let Some(b) = self.bufs[p.segment].take() {
                        v.push(b);
                        parts.push(BufPart {
                            start: p.offset as usize,
                            len: p.len as usize,
                        });
                    }
                }
                Op::readv_parts(self.target, t.device_offset, v, parts)
            }
            Direction::Write => {
                let mut v = std::mem::take(&mut self.spare_io);
                for p in t.pieces(segs) {
                    if let Some(b) = self.bufs[p.segment].take() {
                        v.push(IoBuf::Pool(b));
                        parts.push(BufPart {
                            start: p.offset as usize,
                            len: p.len as usize,
                        });
                    }
                }
                Op::writev_parts(self.target, t.device_offset, v, parts)
            }
        };
        let op = ring
            .submit(op.tag(u64::from(t.id.get())))
            .to_queue(&self.queue);
        self.flights.push(Flight { transfer: t, op });
        self.stats.transfers += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.flights.len());
        true
    }

    fn on_completion(&mut self, ring: &mut Ring, mut c: crate::Completion) {
        if c.tag() == TIMER_TAG {
            self.timer = Timer::Done;
            // Fired: `TimedOut`. Anything else — cancelled after the final transfer, or a
            // timer the ring or kernel refused — never fired and never will.
            let r = match c.result() {
                Err(e) if e.is_timed_out() => self.tx.timeout().map(|_| ()),
                _ => self.tx.timer_cancelled(),
            };
            debug_assert!(r.is_ok(), "{r:?}");
            return;
        }
        let id = TransferId::new(c.tag() as u32);
        let Some(k) = self.flights.iter().position(|f| f.transfer.id == id) else {
            debug_assert!(false, "completion for unknown transfer {id:?}");
            return;
        };
        let t = self.flights.swap_remove(k).transfer;
        self.put_home(t, c.take_bufs());
        let (status, bytes) = match c.result() {
            Ok(n) => (TransferStatus::Complete, n as u64),
            Err(e) if e.is_cancelled() => (TransferStatus::Cancelled, 0),
            Err(e) => {
                if e.raw_os_error().is_none() {
                    self.first_error.get_or_insert(e);
                }
                (TransferStatus::Error(errno_of(&e)), 0)
            }
        };
        self.report(t, status, bytes);
        // What the transaction asks for now goes first: the rest of a short transfer (which
        // must fill its buffers before a later transfer sharing one), or cancels after an
        // error (a waiting transfer is then withdrawn, never submitted).
        self.pump(ring);
        // Buffers came home: deferred transfers may go now.
        for _ in 0..self.deferred.len() {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            if !self.try_submit(ring, d) {
                self.deferred.push_back(d);
            }
        }
    }

    /// Tell the transaction (and the callback) how transfer `t` ended.
    fn report(&mut self, t: Transfer, status: TransferStatus, bytes: u64) {
        let r = match status {
            TransferStatus::Complete => self.tx.transfer_completed(t.id, status, bytes),
            TransferStatus::Cancelled | TransferStatus::Error(_) => {
                self.tx.completed_final(t.id, status, bytes)
            }
        };
        debug_assert!(
            r.is_ok(),
            "dma driver out of step with its transaction: {r:?}"
        );
        (self.on_transfer)(&TransferReport {
            transfer: t,
            status,
            bytes,
            last: r.unwrap_or(false),
        });
    }

    /// Return a completed transfer's buffers to their segments.
    fn put_home(&mut self, t: Transfer, bufs: Bufs) {
        let segs = self.tx.segments();
        match bufs {
            Bufs::PoolList(mut v) => {
                for (p, b) in t.pieces(segs).zip(v.drain(..)) {
                    self.bufs[p.segment] = Some(b);
                }
                self.spare = v;
            }
            Bufs::List(mut v) => {
                for (p, b) in t.pieces(segs).zip(v.drain(..)) {
                    if let IoBuf::Pool(b) = b {
                        self.bufs[p.segment] = Some(b);
                    }
                }
                self.spare_io = v;
            }
            other => debug_assert!(false, "unexpected buffers {other:?}"),
        }
    }

    fn complete(&mut self, mut c: Completion) {
        if let (Err(e), Some(first)) = (c.status, self.first_error) {
            if e == Error::from_errno(errno_of(&first)) {
                c.status = Err(first);
            }
        }
        if self.tx.direction() == Direction::Read {
            for (i, b) in self.bufs.iter_mut().enumerate() {
                if let Some(b) = b {
                    // A prefix of the segment, whose length fits the buffer.
                    let _ = b.set_len(self.tx.segment_moved(i) as usize);
                }
            }
        }
        self.outcome = Some(c);
    }
}
