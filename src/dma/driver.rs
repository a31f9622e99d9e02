//! The DMA driver: a [`Transaction`] over an [`SgList`] executed on a [`Ring`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use super::sg::{Segment, Transfer, TransferId};
use super::sglist::SgList;
use super::transaction::{DmaAction, DmaConfig, DmaOutcome, Transaction};
use crate::buf::{IoBuf, PoolBuf};
use crate::error::{Error, ErrorKind, Result};

use crate::ring::{
    addressable, kernel_deadline, BufPart, Bufs, Direction, Done, Driver, Op, Port, PortEvent,
    Ring, Target,
};

/// One transfer's completion, as the [`on_transfer`](DmaDriverBuilder::on_transfer)
/// callback sees it, once per transfer as its completion arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReport {
    /// The transfer (device offset, length, first segment, pieces).
    pub transfer: Transfer,
    /// How it ended: `Ok(())`, or its typed error (of kind
    /// [`Cancelled`](ErrorKind::Cancelled) for a cancelled transfer).
    pub status: Result<()>,
    /// Bytes it moved.
    pub bytes: u64,
    /// What the transaction answered — [`Transaction::transfer_completed`] for `Ok`,
    /// [`Transaction::completed_final`] for an error: true exactly once, on the final
    /// transfer, after which the buffers may be handed back.
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

/// The per-transfer callback.
type OnTransfer = Box<dyn FnMut(&TransferReport) + Send>;

/// Why [`DmaDriverBuilder::build`] refused a transaction, with the scatter/gather list
/// handed back untouched (its buffers may hold data to write). Converts into the crate's
/// [`Error`], so `?` works in functions returning [`Result`].
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

/// Everything [`DmaDriverBuilder::build`] checks before building the transaction.
fn check(
    ring: &Ring,
    target: Target,
    sg: &SgList,
    direction: Direction,
    config: DmaConfig,
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
        .find(|s| !addressable(s.device_offset, s.len))
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

/// Sets up a [`DmaDriver`]: from [`DmaDriver::builder`], finished by
/// [`build`](Self::build).
pub struct DmaDriverBuilder {
    target: Target,
    sg: SgList,
    direction: Direction,
    config: DmaConfig,
    deadline: Option<Duration>,
    on_transfer: Option<OnTransfer>,
}

impl fmt::Debug for DmaDriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDriverBuilder")
            .field("target", &self.target)
            .field("sg", &self.sg)
            .field("direction", &self.direction)
            .field("config", &self.config)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl DmaDriverBuilder {
    /// The transfer limits (its `timer` setting is replaced by whether a
    /// [`deadline`](Self::deadline) is given). Default: [`DmaConfig::new`].
    pub fn config(mut self, config: DmaConfig) -> DmaDriverBuilder {
        self.config = config;
        self
    }

    /// End the transaction with [`ErrorKind::TimedOut`] after `d`, counted from the first
    /// submission. One no kernel timer can reach (about 292 years or more, e.g.
    /// `from_secs(i64::MAX)` or [`Duration::MAX`]) means no deadline.
    pub fn deadline(mut self, d: Duration) -> DmaDriverBuilder {
        self.deadline = Some(d);
        self
    }

    /// Call `f` with every transfer's [`TransferReport`] as it completes.
    pub fn on_transfer(
        mut self,
        f: impl FnMut(&TransferReport) + Send + 'static,
    ) -> DmaDriverBuilder {
        self.on_transfer = Some(Box::new(f));
        self
    }

    /// Validate and prepare the transaction. Nothing is submitted until the driver is
    /// first processed ([`Driver::process`], [`step`](Driver::step), [`run`](Driver::run)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::StaleTarget`]; [`ErrorKind::WrongTargetKind`] for a target that is
    /// not a file or block device; [`ErrorKind::NotReadable`] / [`ErrorKind::NotWritable`]
    /// for one not open for the direction, [`ErrorKind::AppendOnly`] for a write to one
    /// open `O_APPEND` (which ignores offsets); [`ErrorKind::ZeroLength`] for an empty
    /// list; [`ErrorKind::OffsetOutOfRange`] for a segment ending past the largest file
    /// offset (2⁶³ − 1); [`ErrorKind::OutOfRange`] for a config out of range;
    /// [`ErrorKind::Misaligned`] for a direct target and a segment offset or length, a
    /// buffer address or the max transfer not aligned as it needs. The error hands the
    /// list back ([`Rejected::into_sg`]); `?` turns it into the plain [`Error`].
    pub fn build(self, ring: &mut Ring) -> std::result::Result<DmaDriver, Rejected> {
        let DmaDriverBuilder {
            target,
            sg,
            direction,
            config,
            deadline,
            on_transfer,
        } = self;
        let deadline = kernel_deadline(deadline);
        let config = config.timer(deadline.is_some());
        let checked = check(ring, target, &sg, direction, config).and_then(|info| {
            let tx = Transaction::new(sg.segments().to_vec(), direction, config)?;
            Ok((info, tx))
        });
        let (info, tx) = match checked {
            Ok(v) => v,
            Err(error) => return Err(Rejected { error, sg }),
        };
        let read_align = if info.direct && direction == Direction::Read {
            u64::from(info.offset_align)
        } else {
            1
        };
        let (_, bufs) = sg.into_parts();
        let max = config.max_in_flight_count() as usize;
        Ok(DmaDriver {
            tx,
            bufs: bufs.into_iter().map(Some).collect(),
            target,
            port: Port::new(max),
            // Twice the most in flight: a full map rehashes in place, never allocating.
            keys: HashMap::with_capacity(2 * max),
            deferred: VecDeque::with_capacity(max),
            spare: Vec::new(),
            spare_io: Vec::new(),
            deadline,
            cancelled: false,
            read_align,
            stats: DmaStats::default(),
            on_transfer,
        })
    }
}

/// Executes a DMA-style [`Transaction`] over an [`SgList`] on a [`Ring`]: one vectored
/// operation per transfer (`Op::readv_parts` / `Op::writev_parts`, so `READV_FIXED` /
/// `WRITEV_FIXED` when the pool is registered and the kernel has them), transfers bounded
/// by the config's max transfer length and max segments. A [`Driver`]: its output is the
/// [`DmaOutcome`] and the list, handed back.
///
/// - The [`on_transfer`](DmaDriverBuilder::on_transfer) callback gets a
///   [`TransferReport`] for every transfer: its status, the bytes it moved, and `last` —
///   the driver calls [`Transaction::transfer_completed`] for a transfer that ended `Ok`
///   and [`Transaction::completed_final`] for one that failed or was cancelled, and `last`
///   is what they return: true exactly once, on the final transfer.
/// - [`cancel`](Driver::cancel) ends the transaction with [`ErrorKind::Cancelled`]; a
///   deadline ends it with [`ErrorKind::TimedOut`] (a kernel timer, raced against the
///   transfers and a cancel through the transaction's
///   [`CompletionGate`](crate::gate::CompletionGate)). Transfers in flight are cancelled
///   and drain first.
/// - [`bytes_transferred`](Self::bytes_transferred) counts what actually moved, even when
///   a cancel or a timeout wins.
/// - The buffers are handed back, with the outcome, only after the final transfer's
///   completion came back (after a read, each buffer's `len()` is the prefix of it that
///   was received — [`Transaction::segment_moved`]: bytes after a gap left by a cancel, an
///   error or a short read are not counted). A transfer whose buffers another transfer in
///   flight still holds (a segment split across two transfers) waits for them. Cancelled
///   before anything was submitted, the transaction completes `Cancelled` with the list
///   as it was.
/// - Bad input — a target that is not a file or block device, open the wrong way, or a
///   direct target and segments, buffers or a max transfer not aligned as it needs — is an
///   error from [`build`](DmaDriverBuilder::build), before anything reaches the kernel.
///
/// Dropping a driver mid-flight is safe: the buffers of transfers in flight are parked in
/// the ring until the kernel is done with them, and return to their pool when their
/// completions arrive. An armed deadline timer stays in the ring until it fires (a drop
/// has no ring to cancel it with): to end everything early, [`cancel`](Driver::cancel) and
/// drive the transaction to its completion.
///
/// ```
/// use iocomplete::dma::{DmaConfig, DmaDriver, SgList};
/// use iocomplete::ring::Direction;
/// use iocomplete::{BufferPool, Driver, Ring};
/// use std::io::Write;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
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
/// let finals = Arc::new(AtomicU32::new(0));
/// let f = finals.clone();
/// let mut driver = DmaDriver::builder(file, sg, Direction::Read)
///     .config(DmaConfig::new().max_transfer(4096))
///     .on_transfer(move |r| drop(f.fetch_add(u32::from(r.last), Ordering::Relaxed)))
///     .build(&mut ring)?;
/// let (done, sg) = driver.run(&mut ring)?;
/// assert_eq!((done.status, done.bytes), (Ok(()), 5100));
/// assert_eq!(sg.bufs()[2].data()[0], (40_000 % 256) as u8);
/// assert_eq!(finals.load(Ordering::Relaxed), 1);
/// # Ok::<(), iocomplete::Error>(())
/// ```
pub struct DmaDriver {
    tx: Transaction<Vec<Segment>>,
    /// The list's buffers; `None` while a transfer in flight holds one; empty once handed
    /// back.
    bufs: Vec<Option<PoolBuf>>,
    target: Target,
    port: Port<Transfer>,
    /// The port keys of the transfers in flight, by id (for their cancels).
    keys: HashMap<TransferId, usize>,
    /// Submitted by the transaction, waiting for buffers held by another transfer.
    deferred: VecDeque<Transfer>,
    /// Emptied buffer vectors from completed transfers, reused for the next ones.
    spare: Vec<PoolBuf>,
    spare_io: Vec<IoBuf>,
    /// The deadline, until it is armed at the first process (or the transaction ends
    /// before that).
    deadline: Option<Duration>,
    cancelled: bool,
    /// Direct-I/O alignment of a read target (1 otherwise): a transfer resuming at an
    /// offset that is not a multiple of it follows a short read at end of file.
    read_align: u64,
    stats: DmaStats,
    on_transfer: Option<OnTransfer>,
}

impl fmt::Debug for DmaDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDriver")
            .field("tx", &self.tx)
            .field("target", &self.target)
            .field("port", &self.port)
            .field("deferred", &self.deferred.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DmaDriver {
    /// A driver moving `sg` in `direction` on `target`; set it up with the builder's
    /// methods and [`build`](DmaDriverBuilder::build) it.
    pub fn builder(target: Target, sg: SgList, direction: Direction) -> DmaDriverBuilder {
        DmaDriverBuilder {
            target,
            sg,
            direction,
            config: DmaConfig::new(),
            deadline: None,
            on_transfer: None,
        }
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

    /// The request's outcome, once it completed.
    pub fn outcome(&self) -> Option<DmaOutcome> {
        self.tx.outcome()
    }

    /// Transfers in the ring now.
    pub fn in_flight(&self) -> usize {
        self.port.in_flight()
    }

    fn pump(&mut self, ring: &mut Ring) {
        while let Some(action) = self.tx.poll_action() {
            match action {
                DmaAction::Submit(t) if t.device_offset % self.read_align != 0 => {
                    // Direct I/O returns a count that is not a multiple of the alignment
                    // only at end of file: this resumption is past it. End of file, without
                    // a request the kernel would refuse.
                    self.report(t, Ok(0));
                }
                DmaAction::Submit(t) => {
                    if !self.try_submit(ring, t) {
                        self.stats.deferred += 1;
                        self.deferred.push_back(t);
                    }
                }
                DmaAction::Cancel(id) => {
                    if let Some(&key) = self.keys.get(&id) {
                        self.stats.cancels += 1;
                        // False when the completion already arrived (in the port).
                        self.port.cancel(ring, key);
                    } else if let Some(k) = self.deferred.iter().position(|t| t.id == id) {
                        // Never reached the kernel: it ends cancelled at once.
                        if let Some(t) = self.deferred.remove(k) {
                            self.report(t, Err(Error::new(ErrorKind::Cancelled)));
                        }
                    }
                }
                DmaAction::CancelTimer => {
                    // Not armed yet (the transaction ended before its start): it never will.
                    if !self.port.cancel_timer(ring) && self.deadline.take().is_some() {
                        let r = self.tx.timer_cancelled();
                        debug_assert!(r.is_ok(), "{r:?}");
                    }
                }
                DmaAction::Complete(_) => {}
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
        let op = match self.tx.direction() {
            Direction::Read => Op::readv_parts(self.target, t.device_offset, v, parts),
            Direction::Write => {
                let mut io = std::mem::take(&mut self.spare_io);
                io.extend(v.drain(..).map(IoBuf::Pool));
                self.spare = v;
                Op::writev_parts(self.target, t.device_offset, io, parts)
            }
        };
        let key = self.port.submit(ring, op, t);
        self.keys.insert(t.id, key);
        self.stats.transfers += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.port.in_flight());
        true
    }

    fn on_done(&mut self, ring: &mut Ring, d: Done<Transfer>) {
        let t = d.child;
        self.keys.remove(&t.id);
        self.put_home(t, d.bufs);
        self.report(t, d.result);
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

    /// Tell the transaction (and the callback) how transfer `t` ended: the bytes it moved,
    /// or its error.
    fn report(&mut self, t: Transfer, result: Result<u32>) {
        let (status, bytes) = (result.map(drop), result.map_or(0, u64::from));
        let r = match status {
            Ok(()) => self.tx.transfer_completed(t.id, status, bytes),
            Err(_) => self.tx.completed_final(t.id, status, bytes),
        };
        debug_assert!(
            r.is_ok(),
            "dma driver out of step with its transaction: {r:?}"
        );
        if let Some(f) = &mut self.on_transfer {
            f(&TransferReport {
                transfer: t,
                status,
                bytes,
                last: r.unwrap_or(false),
            });
        }
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

    /// The outcome and the list, once the transaction completed and every buffer is home
    /// (`None` before, and once handed back). After a read, each buffer's `len()` is the
    /// prefix of its segment that was received.
    fn hand_back(&mut self) -> Option<(DmaOutcome, SgList)> {
        let outcome = self.tx.outcome()?;
        if self.bufs.is_empty() || !self.bufs.iter().all(Option::is_some) {
            return None;
        }
        // Cancelled before anything was submitted, the list comes back as it was.
        let read = self.tx.direction() == Direction::Read && self.stats.transfers > 0;
        let bufs = std::mem::take(&mut self.bufs).into_iter().enumerate();
        let bufs = bufs.filter_map(|(i, b)| {
            let mut b = b?;
            if read {
                // A prefix of the segment, whose length fits the buffer.
                let _ = b.set_len(self.tx.segment_moved(i) as usize);
            }
            Some(b)
        });
        let bufs = bufs.collect();
        Some((
            outcome,
            SgList::from_parts(self.tx.segments().to_vec(), bufs),
        ))
    }
}

impl Driver for DmaDriver {
    /// The request's outcome and the list, handed back.
    type Output = (DmaOutcome, SgList);

    fn process(&mut self, ring: &mut Ring) -> Result<Option<(DmaOutcome, SgList)>> {
        if !ring.owns(self.target) {
            return Err(Error::new(ErrorKind::WrongRing { what: "dma driver" }));
        }
        if let Some(d) = self.deadline.take() {
            // The deadline counts from the first submission. `build` kept only deadlines
            // a kernel timer reaches: one refused anyway never fires.
            if !self.port.arm_timer(ring, d) {
                let r = self.tx.timer_cancelled();
                debug_assert!(r.is_ok(), "{r:?}");
            }
        }
        loop {
            self.pump(ring);
            match self.port.next() {
                Some(PortEvent::Op(d)) => self.on_done(ring, d),
                Some(PortEvent::Timer { fired }) => {
                    let r = if fired {
                        self.tx.timeout().map(drop)
                    } else {
                        self.tx.timer_cancelled()
                    };
                    debug_assert!(r.is_ok(), "{r:?}");
                }
                None => break,
            }
        }
        Ok(self.hand_back())
    }

    /// Cancel the transaction: it completes with
    /// [`ErrorKind::Cancelled`] unless a status was set first, after the transfers in
    /// flight drained. Returns false if it was already cancelled or finished; false, and
    /// nothing happens, on a ring other than the driver's.
    fn cancel(&mut self, ring: &mut Ring) -> bool {
        if self.cancelled || self.tx.buffers_releasable() || !ring.owns(self.target) {
            return false;
        }
        self.cancelled = true;
        self.tx.cancel();
        self.pump(ring);
        true
    }

    /// True once the outcome and the list were handed out.
    fn is_idle(&self) -> bool {
        self.bufs.is_empty()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;
    use crate::buf::BufferPool;

    #[test]
    fn rejected_debug_is_compact() {
        let pool = BufferPool::builder()
            .slots(64)
            .slot_len(4096)
            .build()
            .unwrap();
        let mut sg = SgList::new();
        assert_eq!(sg.push_extent(&pool, 0, 64 * 4096).unwrap(), 64);
        let r = Rejected {
            error: Error::from_errno(libc::EIO),
            sg,
        };
        let s = format!("{r:?}");
        assert_eq!(
            s,
            "Rejected { error: Os(EIO), sg: SgList { entries: 64, total_len: 262144 } }"
        );
        // The list comes back whole.
        assert_eq!(r.into_sg().len(), 64);
    }
}
