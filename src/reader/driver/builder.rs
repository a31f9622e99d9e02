//! [`ContinuousReaderBuilder`]: the reader's settings and callbacks, checked against the
//! target, the pool and the ring before anything reaches the kernel. Settings are common
//! to both kinds of callbacks; the callbacks themselves, and where they run, are set per
//! kind ([`Shared`], [`Local`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use super::multishot::{Provided, StreamReads};
use super::workers::{CancelHandle, Dispatch, Signal, Workers};
use super::{Callbacks, Child, ContinuousReader, Local, Shared};
use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, ErrorKind, Result};
use crate::reader::{ReaderConfig, ReaderMachine, Restart};
use crate::ring::{FdKind, Port, Ring, Target};

/// Builder of a [`ContinuousReader`]: from [`ContinuousReader::builder`] ([`Shared`]
/// callbacks, the default) or [`ContinuousReader::local_builder`] ([`Local`] callbacks).
pub struct ContinuousReaderBuilder<C: Callbacks = Shared> {
    target: Target,
    pool: BufferPool,
    /// The settings the target does not decide (pending reads, range, order, window,
    /// acknowledgement bound); completed at build.
    cfg: ReaderConfig,
    transfer_len: Option<u32>,
    stream_reads: StreamReads,
    /// The callbacks, and (for [`Shared`] ones) where `on_read` runs.
    callbacks: C,
    signal: Arc<Signal>,
}

impl<C: Callbacks> fmt::Debug for ContinuousReaderBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContinuousReaderBuilder")
            .field("target", &self.target)
            .field("cfg", &self.cfg)
            .field("transfer_len", &self.transfer_len)
            .field("stream_reads", &self.stream_reads)
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

impl ContinuousReader {
    /// A builder for a reader of `target` (registered on the ring the reader will be
    /// built on) into slots of `pool` (its header and trailer room come with every
    /// buffer), with [`Shared`] callbacks: they may run on worker threads, and the reader
    /// may move to another thread.
    pub fn builder(target: Target, pool: &BufferPool) -> ContinuousReaderBuilder {
        let callbacks = Shared {
            on_read: None,
            on_failed: None,
            dispatch: Dispatch::Inline,
        };
        ContinuousReaderBuilder::new(target, pool, callbacks)
    }
}

impl<'a> ContinuousReader<Local<'a>> {
    /// A builder for a reader of `target` into slots of `pool`, as
    /// [`builder`](ContinuousReader::builder), with [`Local`] callbacks: `FnMut + 'a`,
    /// they may borrow the caller's locals and need not be `Send`, `Sync` or `'static`.
    /// They run inline, on the thread that drives the reader (there is no
    /// [`dispatch`](ContinuousReaderBuilder::dispatch) to ask for workers), and the reader
    /// is not `Send`.
    ///
    /// A scoped run borrowing locals: the reader holds the borrows until it is dropped,
    /// so end it (here by its block) before using what it borrowed mutably.
    ///
    /// ```
    /// use iocomplete::{BufferPool, ContinuousReader, Driver, Ring};
    ///
    /// let mut f = tempfile::tempfile().unwrap();
    /// let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    /// std::io::Write::write_all(&mut f, &content).unwrap();
    /// let mut ring = Ring::new()?;
    /// let pool = BufferPool::builder().slots(8).slot_len(16 * 1024).build()?;
    /// let file = ring.register(f)?;
    ///
    /// let mut total = 0u64; // borrowed mutably by `on_read`: no Arc, no atomics
    /// let mut copy = Vec::new();
    /// {
    ///     let mut reader = ContinuousReader::local_builder(file, &pool)
    ///         .pending_reads(4)
    ///         .ordered(true)
    ///         .on_read(|buf, _offset| {
    ///             total += buf.len() as u64;
    ///             copy.extend_from_slice(buf.data());
    ///         })
    ///         .build(&mut ring)?;
    ///     reader.run(&mut ring)?;
    /// } // the reader, and its borrows of `total` and `copy`, end here
    /// assert_eq!(total, content.len() as u64);
    /// assert_eq!(copy, content);
    /// assert_eq!(pool.stats().free, 8);
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    ///
    /// Local callbacks never run on workers: a local builder has no `dispatch`, so this
    /// does not compile.
    ///
    /// ```compile_fail
    /// # use iocomplete::{BufferPool, ContinuousReader, Dispatch, Ring};
    /// # let mut ring = Ring::new()?;
    /// # let pool = BufferPool::builder().slots(8).slot_len(4096).build()?;
    /// # let file = ring.register(tempfile::tempfile().unwrap())?;
    /// let mut n = 0;
    /// let reader = ContinuousReader::local_builder(file, &pool)
    ///     .on_read(|_buf, _offset| n += 1)
    ///     .dispatch(Dispatch::Workers(2)) // no such method for `Local` callbacks
    ///     .build(&mut ring)?;
    /// # Ok::<(), iocomplete::Error>(())
    /// ```
    pub fn local_builder(target: Target, pool: &BufferPool) -> ContinuousReaderBuilder<Local<'a>> {
        let callbacks = Local {
            on_read: None,
            on_failed: None,
        };
        ContinuousReaderBuilder::new(target, pool, callbacks)
    }
}

impl ContinuousReaderBuilder {
    /// Where `on_read` runs (default [`Dispatch::Inline`]). At most as many workers as
    /// the pool has slots (each delivery holds one, so more could never all be busy).
    /// Only for [`Shared`] callbacks: [`Local`] ones always run inline.
    pub fn dispatch(mut self, d: Dispatch) -> Self {
        self.callbacks.dispatch = d;
        self
    }

    /// `on_read(buf, offset)`, called for every filled buffer (see
    /// [`ContinuousReader`]'s handlers). Without it, filled buffers go straight back to
    /// the pool. For a callback that mutates or borrows locals, use
    /// [`ContinuousReader::local_builder`].
    pub fn on_read(mut self, f: impl Fn(PoolBuf, u64) + Send + Sync + 'static) -> Self {
        self.callbacks.on_read = Some(Arc::new(f));
        self
    }

    /// `on_failed(&error) -> Restart`, called after a failure (see
    /// [`ContinuousReader`]'s handlers). Without it, a failure ends the reader
    /// ([`Restart::No`]).
    pub fn on_failed(mut self, f: impl FnMut(&Error) -> Restart + Send + 'static) -> Self {
        self.callbacks.on_failed = Some(Box::new(f));
        self
    }
}

impl<'a> ContinuousReaderBuilder<Local<'a>> {
    /// `on_read(buf, offset)`, called for every filled buffer, inline on the driving
    /// thread, one call at a time (see [`ContinuousReader`]'s handlers). Without it,
    /// filled buffers go straight back to the pool.
    pub fn on_read(mut self, f: impl FnMut(PoolBuf, u64) + 'a) -> Self {
        self.callbacks.on_read = Some(Box::new(f));
        self
    }

    /// `on_failed(&error) -> Restart`, called after a failure, on the driving thread (see
    /// [`ContinuousReader`]'s handlers). Without it, a failure ends the reader
    /// ([`Restart::No`]).
    pub fn on_failed(mut self, f: impl FnMut(&Error) -> Restart + 'a) -> Self {
        self.callbacks.on_failed = Some(Box::new(f));
        self
    }
}

impl<C: Callbacks> ContinuousReaderBuilder<C> {
    /// The defaults, with `callbacks` (none set yet).
    fn new(target: Target, pool: &BufferPool, callbacks: C) -> Self {
        ContinuousReaderBuilder {
            target,
            pool: pool.clone(),
            cfg: ReaderConfig::positional(0),
            transfer_len: None,
            stream_reads: StreamReads::Auto,
            callbacks,
            signal: Arc::default(),
        }
    }

    /// Reads kept in flight for a file or block device (default 2). Streams keep one.
    pub fn pending_reads(mut self, n: u32) -> Self {
        self.cfg = self.cfg.pending_reads(n);
        self
    }

    /// Bytes per read (default: the pool's slot capacity; not 0). With direct I/O it must
    /// be a multiple of the target's alignment. Multishot stream reads fill up to a whole
    /// slot, and so do the reads of a stream chosen for multishot that turns out not to
    /// allow it (see [`StreamReads`]).
    pub fn transfer_len(mut self, len: u32) -> Self {
        self.transfer_len = Some(len);
        self
    }

    /// Read only `[start, end)` (files and block devices).
    pub fn range(mut self, start: u64, end: u64) -> Self {
        self.cfg = self.cfg.range(start, end);
        self
    }

    /// Start at `offset` and read to the end of the file (files and block devices).
    pub fn start_at(mut self, offset: u64) -> Self {
        self.cfg = self.cfg.start_at(offset);
        self
    }

    /// Deliver in file order (a bounded reorder window) instead of completion order.
    /// Default off. Streams are always in order. With [`Dispatch::Workers`], deliveries
    /// are handed out in order but `on_read` calls on different workers may overlap.
    pub fn ordered(mut self, on: bool) -> Self {
        self.cfg = self.cfg.ordered(on);
        self
    }

    /// Ordered mode: most reads in flight or held back (default: `2 * pending_reads`,
    /// capped at the pool's slots minus one, at least `pending_reads`). Must be below the
    /// pool's slot count.
    pub fn reorder_window(mut self, reads: u32) -> Self {
        self.cfg = self.cfg.reorder_window(reads);
        self
    }

    /// Most deliveries awaiting acknowledgement before the reader holds back new reads
    /// (default [`ReaderConfig::DEFAULT_MAX_UNACKED`]; matters with workers).
    pub fn max_unacked(mut self, n: u32) -> Self {
        self.cfg = self.cfg.max_unacked(n);
        self
    }

    /// How streams are read (default [`StreamReads::Auto`]).
    pub fn stream_reads(mut self, s: StreamReads) -> Self {
        self.stream_reads = s;
        self
    }

    /// A handle that cancels the reader once built (capture it in `on_read` to cancel
    /// from there, or hand it to another thread).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            signal: self.signal.clone(),
        }
    }

    /// Check the configuration against the target, the pool and the ring, and start
    /// reading: the first reads go to the kernel when the reader is first processed.
    ///
    /// Typed errors, before anything reaches the kernel: a target not open for reading
    /// ([`ErrorKind::NotReadable`]), of an unsupported kind or given a byte range it cannot
    /// take ([`ErrorKind::WrongTargetKind`]), not registered ([`ErrorKind::StaleTarget`]),
    /// a zero transfer length ([`ErrorKind::ZeroLength`]), or one over the slot capacity
    /// ([`ErrorKind::BufferTooSmall`]), direct I/O settings that do not fit the target's
    /// alignment ([`ErrorKind::Misaligned`]), a pool with fewer slots than the reads, the
    /// reorder window or the workers need ([`ErrorKind::PoolTooSmall`]), zero workers
    /// ([`ErrorKind::OutOfRange`]), multishot requested on a ring without it
    /// ([`ErrorKind::Unsupported`]) or with a pool of more than 65536 slots
    /// ([`ErrorKind::OutOfRange`]); the machine's configuration errors
    /// ([`ReaderConfig::validate`](crate::reader::ReaderConfig::validate)).
    pub fn build(self, ring: &mut Ring) -> Result<ContinuousReader<C>> {
        let info = ring.info(self.target)?;
        if !info.readable {
            return Err(Error::new(ErrorKind::NotReadable));
        }
        let g = self.pool.geometry();
        let capacity = u32::try_from(g.capacity.min(i32::MAX as usize)).unwrap_or(u32::MAX);
        let transfer_len = self.transfer_len.unwrap_or(capacity);
        if transfer_len == 0 {
            return Err(Error::zero_length("read (transfer_len)"));
        }
        if transfer_len as usize > g.capacity {
            return Err(Error::new(ErrorKind::BufferTooSmall {
                need: u64::from(transfer_len),
                have: g.capacity as u64,
            }));
        }
        match self.callbacks.dispatch() {
            Dispatch::Workers(0) => {
                return Err(Error::out_of_range("Dispatch::Workers", 1, g.slots as u64))
            }
            Dispatch::Workers(n) if n > g.slots => {
                return Err(Error::new(ErrorKind::PoolTooSmall {
                    what: "Dispatch::Workers",
                    need: u32::try_from(n).unwrap_or(u32::MAX),
                    have: g.slots as u32,
                }))
            }
            _ => {}
        }
        let mut cfg = self.cfg;
        cfg.transfer_len = transfer_len;
        let mut multishot = false;
        let mut probing = false;
        if info.kind.is_seekable() {
            if info.direct {
                if g.align < info.mem_align as usize {
                    return Err(Error::new(ErrorKind::Misaligned {
                        what: "buffer",
                        value: g.align as u64,
                        align: info.mem_align,
                    }));
                }
                cfg.align = info.offset_align;
            }
            if (g.slots as u64) < u64::from(cfg.pending_reads) + u64::from(cfg.ordered) {
                return Err(Error::new(ErrorKind::PoolTooSmall {
                    what: "pending_reads (plus one when ordered)",
                    need: cfg.pending_reads.saturating_add(u32::from(cfg.ordered)),
                    have: g.slots as u32,
                }));
            }
            if cfg.ordered {
                let room = u32::try_from(g.slots - 1).unwrap_or(u32::MAX);
                let window = cfg.reorder_window.unwrap_or_else(|| {
                    cfg.pending_reads
                        .saturating_mul(2)
                        .min(room)
                        .max(cfg.pending_reads)
                });
                // Reads held back for ordering keep their slots: a window the pool cannot
                // cover, plus one slot for the read that unblocks it, could deadlock.
                if window > room {
                    return Err(Error::new(ErrorKind::PoolTooSmall {
                        what: "reorder_window (plus one)",
                        need: window.saturating_add(1),
                        have: g.slots as u32,
                    }));
                }
                cfg.reorder_window = Some(window);
            } else {
                cfg.reorder_window = None; // unordered: no window
            }
        } else if info.kind.is_stream() {
            if cfg.start != 0 || cfg.end.is_some() {
                return Err(Error::wrong_kind(
                    "a file or block device (for a byte range)",
                    info.kind,
                ));
            }
            multishot = self
                .stream_reads
                .multishot(ring.capabilities(), info.kind, g.slots)?;
            // Sockets are always read without blocking; other streams prove it first (see
            // `StreamReads`): the machine starts single-shot, the driver switches it.
            probing = multishot && info.kind != FdKind::Socket;
            // A multishot read fills whole provided buffers.
            let len = if multishot { capacity } else { transfer_len };
            cfg = ReaderConfig::stream(len)
                .multishot(multishot && !probing)
                .max_unacked(cfg.max_unacked);
        } else {
            return Err(Error::wrong_kind(
                "a file, block device, pipe, FIFO, socket or tty",
                info.kind,
            ));
        }
        let machine = ReaderMachine::new(cfg)?;

        // Other threads (workers' acknowledgements, cancel handles) wake a driver blocked
        // in the ring through the ring's own wake-up poll. `ring` is set once, here; the
        // cancel handle given out earlier shares `signal`.
        let _ = self.signal.ring.set(ring.handle()?);
        let pending = cfg.effective_pending_reads() as usize;
        // Completions: one per slot (single-shot reads, multishot buffers) and a few more.
        let mut port = Port::<Child>::new(g.slots + pending + 8);
        port.cancel_on_drop(ring)?;
        let workers = match self.callbacks.workers() {
            Some((n, on_read)) => Some(Workers::spawn(n, g.slots, &on_read, &self.signal)?),
            None => None,
        };
        let window = (cfg.effective_reorder_window() as usize).max(pending);
        Ok(ContinuousReader {
            machine,
            target: self.target,
            pool: self.pool,
            port,
            filled: HashMap::with_capacity(window + pending + 4),
            provided: Provided::new(g.slots, multishot),
            deferred: VecDeque::with_capacity(pending + 4),
            probing,
            signal: self.signal,
            cancel_applied: false,
            report: None,
            handed_out: false,
            enobufs: 0,
            buffer_waits: 0,
            workers,
            callbacks: self.callbacks,
            multishot,
        })
    }
}
