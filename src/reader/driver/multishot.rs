//! How a stream is read ([`StreamReads`]), and what multishot reads need: the
//! provided-buffer ring they read into and the buffers their completions hand out.

use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, Result};
use crate::ring::{BufRing, BufRingLease, Capabilities, FdKind, Ring};

/// How a stream source (pipe, FIFO, socket, tty) is read.
///
/// A multishot read works only on a file that can be read without blocking
/// (`FMODE_NOWAIT`): on any other, io_uring emulates that with the file's poll state, and
/// at end of file — poll says "hung up", not "readable" — the multishot read stays armed
/// forever instead of completing with 0 (Linux 6.18). Sockets and `pipe(2)` pipes can;
/// a named FIFO, or a pipe reopened by path (`/dev/stdin`, `/proc/self/fd/N`), cannot,
/// nor can ttys. So the first read of a pipe, tty or character device is a single-shot
/// read with `RWF_NOWAIT`, which the kernel refuses (`EOPNOTSUPP`, nothing read) exactly
/// on those files: the reader then keeps to single-shot reads; otherwise it switches to
/// multishot from the next read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamReads {
    /// Multishot when the ring has `IORING_OP_READ_MULTISHOT` and provided-buffer rings
    /// and the source is a pipe, FIFO or socket that can be read without blocking (see
    /// above); single-shot reads otherwise. The default.
    ///
    /// Ttys get single-shot reads: on Linux 6.18 a multishot read of a pty under load
    /// sometimes misses a wake-up (data stays queued until the task next enters the
    /// kernel), while a single-shot read re-polls the tty each time it is armed.
    Auto,
    /// Always one single-shot read at a time (an `O_NONBLOCK` source then answers
    /// `EAGAIN` when empty, and the reader waits with a readiness poll).
    SingleShot,
    /// Multishot whenever the source allows it (single-shot reads for a file that cannot
    /// be read without blocking, see above); [`ErrorKind::Unsupported`] at build when
    /// the ring cannot, [`ErrorKind::OutOfRange`] when the pool has more than 65536
    /// slots (provided-buffer ids are 16 bits; `Auto` reads such a pool single-shot).
    ///
    /// [`ErrorKind::Unsupported`]: crate::ErrorKind::Unsupported
    /// [`ErrorKind::OutOfRange`]: crate::ErrorKind::OutOfRange
    Multishot,
}

impl StreamReads {
    /// Whether a stream of `kind` read from a pool of `slots` slots on a ring with `caps`
    /// is read multishot.
    pub(super) fn multishot(self, caps: &Capabilities, kind: FdKind, slots: usize) -> Result<bool> {
        let can = caps.read_multishot && caps.buf_ring;
        // Provided-buffer ids are 16 bits: a larger pool cannot back a buffer ring.
        let fits = slots <= 1 << 16;
        // Multishot needs a pollable file (other character devices may not be), and
        // misses wake-ups on ttys (see `StreamReads::Auto`).
        let suits = matches!(kind, FdKind::Pipe | FdKind::Socket);
        match self {
            StreamReads::Auto => Ok(can && fits && suits),
            StreamReads::SingleShot => Ok(false),
            StreamReads::Multishot if !can => {
                Err(Error::unsupported("IORING_OP_READ_MULTISHOT (Linux 6.7)"))
            }
            StreamReads::Multishot if !fits => Err(Error::out_of_range(
                "slots of a multishot reader's pool",
                1,
                1 << 16,
            )),
            StreamReads::Multishot => Ok(true),
        }
    }
}

/// The provided-buffer ring of a multishot reader, and the buffers its completions handed
/// out that await `Deliver` or `Discard`.
#[derive(Debug)]
pub(super) struct Provided {
    /// Registered at the first multishot read. Dropping the lease (with an unfinished
    /// reader) retires it.
    lease: Option<BufRingLease>,
    /// Its size: at most half the pool (the largest power of two not above it). Offered
    /// slots stay with the kernel until data comes, and the other half serves the
    /// deliveries in the user's hands and other readers of the same pool.
    entries: u16,
    /// Buffers handed out by completions, by buffer id (= slot).
    out: Vec<Option<PoolBuf>>,
}

impl Provided {
    /// For a reader of a pool of `slots` slots; `multishot`: whether it may read
    /// multishot at all (nothing is set aside otherwise).
    pub(super) fn new(slots: usize, multishot: bool) -> Provided {
        let half = (slots / 2).clamp(1, 32768);
        Provided {
            lease: None,
            entries: 1u16 << (usize::BITS - 1 - half.leading_zeros()),
            out: if multishot {
                (0..slots).map(|_| None).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The buffer ring to arm a multishot read on, registered at the first call. `None`
    /// while it offers no buffer: armed now, the read would only end with `ENOBUFS` at
    /// once. `Err` when it cannot be registered.
    pub(super) fn buf_ring(
        &mut self,
        ring: &mut Ring,
        pool: &BufferPool,
    ) -> Result<Option<BufRing>> {
        let br = match &self.lease {
            Some(lease) => lease.buf_ring(),
            None => self
                .lease
                .insert(ring.lease_buf_ring(pool, self.entries)?)
                .buf_ring(),
        };
        Ok((ring.buf_ring_offered(br) > 0).then_some(br))
    }

    /// Hold `buf`, handed out by a completion, until its delivery; returns its id.
    pub(super) fn keep(&mut self, buf: PoolBuf) -> Result<u16> {
        let id = buf.slot();
        let bad = || Error::invalid("provided buffer id out of range");
        let slot = self.out.get_mut(id as usize).ok_or_else(bad)?;
        let id = u16::try_from(id).map_err(|_| bad())?;
        *slot = Some(buf);
        Ok(id)
    }

    /// The buffer held under `id`.
    pub(super) fn take(&mut self, id: u16) -> Option<PoolBuf> {
        self.out.get_mut(usize::from(id)).and_then(Option::take)
    }

    /// Unregister the buffer ring (the reader finished: no multishot read is in flight).
    pub(super) fn unregister(&mut self, ring: &mut Ring) {
        if let Some(lease) = self.lease.take() {
            // Cannot fail: the multishot read has completed (the machine finished). Were
            // it to, dropping the lease retires the ring all the same.
            let _ = ring.unregister_buf_ring(lease.buf_ring());
        }
    }
}
