//! [`SgList`]: a scatter/gather list of pooled buffers mapped to device offsets.

use std::fmt;

use crate::buf::{BufferPool, PoolBuf};
use crate::error::{Error, ErrorKind, Result};

use super::sg::Segment;

/// A scatter/gather list: pooled buffers, each mapped to a device offset — the memory side
/// of a DMA [`Transaction`](super::Transaction), executed on a ring by a
/// [`DmaDriver`](super::DmaDriver).
///
/// Entry `i` moves `bufs()[i].len()` bytes between the buffer's data area and the device
/// at `segments()[i].device_offset`: for a write, the buffer's data; for a read, set the
/// buffer's `len()` to the bytes wanted first (as for [`Op::readv`](crate::Op::readv)) —
/// or let [`push_extent`](Self::push_extent) do it. After a read, each buffer's `len()` is
/// the prefix of it that was received: never bytes after a gap (a cancel, an error or a
/// short read that left one), which would be stale memory.
///
/// Only pooled buffers: the ring must own what the kernel may touch until the completion
/// arrives, and pool slots are what it can park (and, from a registered pool, what
/// `READV_FIXED`/`WRITEV_FIXED` use).
///
/// Invariants: `segments()[i].len` is the length `bufs()[i]` had when pushed (what the
/// entry moves; after a read that ended early the buffer's `len()` can be smaller), and no
/// segment's device range overflows.
///
/// ```
/// use iocomplete::dma::SgList;
/// let pool = iocomplete::BufferPool::builder().slots(4).slot_len(4096).build()?;
/// let mut sg = SgList::new();
/// // 6000 bytes at device offset 1 MiB: two buffers (4096 + 1904 bytes).
/// assert_eq!(sg.push_extent(&pool, 1 << 20, 6000)?, 2);
/// assert_eq!(sg.total_len(), 6000);
/// assert_eq!(sg.segments()[1].device_offset, (1 << 20) + 4096);
/// # Ok::<(), iocomplete::Error>(())
/// ```
#[derive(Default)]
pub struct SgList {
    segments: Vec<Segment>,
    bufs: Vec<PoolBuf>,
}

/// Compact: the entry count and total bytes, not every segment and buffer (a list can
/// hold thousands).
impl fmt::Debug for SgList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgList")
            .field("entries", &self.segments.len())
            .field("total_len", &self.total_len())
            .finish()
    }
}

impl SgList {
    /// An empty list.
    pub fn new() -> SgList {
        SgList::default()
    }

    /// An empty list with room for `n` entries.
    pub fn with_capacity(n: usize) -> SgList {
        SgList {
            segments: Vec::with_capacity(n),
            bufs: Vec::with_capacity(n),
        }
    }

    /// Append `buf`, mapped to `device_offset`: `buf.len()` bytes move.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::OffsetOutOfRange`] if the device
    /// range overflows (the buffer is dropped back to its pool).
    pub fn push(&mut self, buf: PoolBuf, device_offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        if device_offset.checked_add(len).is_none() {
            return Err(Error::new(ErrorKind::OffsetOutOfRange {
                offset: device_offset,
                len,
            }));
        }
        self.segments.push(Segment::new(device_offset, len));
        self.bufs.push(buf);
        Ok(())
    }

    /// Append an extent of `len` bytes at `device_offset`, taking as many buffers from
    /// `pool` as it needs (each set to its full capacity, the last to the rest). Returns
    /// how many entries were added. For reads: the buffers' contents are whatever the
    /// slots held; for writes, fill their data before executing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::PoolExhausted`] if the pool runs out;
    /// [`ErrorKind::ZeroLength`] for a zero length,
    /// [`ErrorKind::OffsetOutOfRange`] for an
    /// overflowing range. On error the list is as it was.
    pub fn push_extent(
        &mut self,
        pool: &BufferPool,
        device_offset: u64,
        len: u64,
    ) -> Result<usize> {
        if len == 0 {
            return Err(Error::zero_length("scatter/gather extent"));
        }
        if device_offset.checked_add(len).is_none() {
            return Err(Error::new(ErrorKind::OffsetOutOfRange {
                offset: device_offset,
                len,
            }));
        }
        let before = self.len();
        let cap = pool.geometry().capacity as u64;
        let mut at = 0u64;
        while at < len {
            let mut buf = match pool.try_get() {
                Ok(b) => b,
                Err(e) => {
                    self.segments.truncate(before);
                    self.bufs.truncate(before);
                    return Err(e);
                }
            };
            let n = cap.min(len - at);
            // `n <= capacity`, so this cannot fail.
            buf.set_len(n as usize)?;
            self.segments.push(Segment::new(device_offset + at, n));
            self.bufs.push(buf);
            at += n;
        }
        Ok(self.len() - before)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes the list moves.
    pub fn total_len(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The segments (device offset and length of each entry).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The buffers, in order.
    pub fn bufs(&self) -> &[PoolBuf] {
        &self.bufs
    }

    /// Entries as (segment, buffer) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (Segment, &PoolBuf)> + '_ {
        self.segments.iter().copied().zip(self.bufs.iter())
    }

    /// The buffers, giving the list up.
    pub fn into_bufs(self) -> Vec<PoolBuf> {
        self.bufs
    }

    /// Segments and buffers, giving the list up.
    pub fn into_parts(self) -> (Vec<Segment>, Vec<PoolBuf>) {
        (self.segments, self.bufs)
    }

    /// Rebuild from parts kept in step (the driver's own use).
    pub(crate) fn from_parts(segments: Vec<Segment>, bufs: Vec<PoolBuf>) -> SgList {
        debug_assert_eq!(segments.len(), bufs.len());
        SgList { segments, bufs }
    }
}
