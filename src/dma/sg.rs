//! Scatter/gather list description and how it is cut into transfers.
//!
//! The core works on segment *indices and lengths* only: the driver owns the buffers and
//! builds one iovec per [`Piece`] of a [`Transfer`].

use std::iter::FusedIterator;

/// One entry of a scatter/gather list: `len` bytes of memory (the driver's buffer number
/// `i` for the entry at index `i`) that move to or from the device at `device_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Device offset of the segment's first byte.
    pub device_offset: u64,
    /// Memory length in bytes (0 is allowed: the segment is skipped).
    pub len: u64,
}

impl Segment {
    /// A segment of `len` bytes at `device_offset`.
    pub const fn new(device_offset: u64, len: u64) -> Segment {
        Segment { device_offset, len }
    }

    /// Device offset one past the segment (saturating; a transaction rejects lists whose
    /// segments overflow).
    pub const fn device_end(&self) -> u64 {
        self.device_offset.saturating_add(self.len)
    }
}

/// A transfer's id: its sequence number within the transaction (wrapping after 2³²).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(u32);

impl TransferId {
    /// The id with sequence number `n` (any value: ids the transaction never issued are
    /// rejected).
    pub const fn new(n: u32) -> TransferId {
        TransferId(n)
    }

    /// The sequence number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// One transfer: a run of segments whose device offsets are contiguous, so that one
/// `readv`/`writev` (`preadv2` at `device_offset`) carries it. Its pieces are
/// [`Transfer::pieces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// The transfer's id, for its completion event.
    pub id: TransferId,
    /// Device offset of its first byte.
    pub device_offset: u64,
    /// Bytes to move (never 0).
    pub len: u64,
    /// Index of the segment its first byte is in.
    pub first_segment: usize,
    /// Offset of its first byte within that segment.
    pub first_skip: u64,
    /// Number of pieces (iovecs), at most the transaction's max segments.
    pub segment_count: usize,
}

impl Transfer {
    /// The pieces of memory this transfer moves, in order: one iovec each. `segments` must
    /// be the transaction's list (other lists give meaningless, but never panicking,
    /// answers).
    pub fn pieces<'a>(&self, segments: &'a [Segment]) -> Pieces<'a> {
        Pieces {
            segments,
            index: self.first_segment,
            skip: self.first_skip,
            remaining: self.len,
        }
    }
}

/// One iovec of a transfer: `len` bytes of segment `segment`, from byte `offset` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Piece {
    /// Segment index.
    pub segment: usize,
    /// Offset within the segment's memory.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// Iterator over a transfer's [`Piece`]s; see [`Transfer::pieces`].
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    segments: &'a [Segment],
    index: usize,
    skip: u64,
    remaining: u64,
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        while self.remaining > 0 {
            let seg = self.segments.get(self.index)?;
            let avail = seg.len.saturating_sub(self.skip);
            if avail == 0 {
                self.index += 1;
                self.skip = 0;
                continue;
            }
            let len = avail.min(self.remaining);
            let piece = Piece {
                segment: self.index,
                offset: self.skip,
                len,
            };
            self.remaining -= len;
            self.index += 1;
            self.skip = 0;
            return Some(piece);
        }
        None
    }
}

impl FusedIterator for Pieces<'_> {}

/// A position in the list: segment index and byte offset within it.
pub(crate) type Cursor = (usize, u64);

/// The shape of the next transfer from `at`, as `(start, device_offset, len, pieces,
/// next)`: `start` is `at` moved past empty or used-up segments, `next` the position after
/// the transfer. `None` when nothing is left.
pub(crate) fn next_transfer(
    segs: &[Segment],
    at: Cursor,
    max_transfer: u64,
    max_segments: u32,
) -> Option<(Cursor, u64, u64, usize, Cursor)> {
    let (mut i, mut skip) = at;
    while segs.get(i)?.len <= skip {
        i += 1;
        skip = 0;
    }
    let start = (i, skip);
    let device_offset = segs[i].device_offset + skip;
    let (mut len, mut count) = (0u64, 0usize);
    loop {
        let seg = segs[i];
        let avail = seg.len - skip;
        let take = avail.min(max_transfer - len);
        len += take;
        count += 1;
        if take < avail {
            return Some((start, device_offset, len, count, (i, skip + take)));
        }
        i += 1;
        skip = 0;
        while segs.get(i).is_some_and(|s| s.len == 0) {
            i += 1;
        }
        let contiguous = segs
            .get(i)
            .is_some_and(|s| s.device_offset == seg.device_offset + seg.len);
        if !contiguous || count as u64 >= u64::from(max_segments) || len == max_transfer {
            return Some((start, device_offset, len, count, (i, 0)));
        }
    }
}

/// The position `n` bytes past `at` (`n` at most the bytes left), and how many pieces were
/// used up completely on the way.
pub(crate) fn advance(segs: &[Segment], at: Cursor, mut n: u64) -> (Cursor, usize) {
    let (mut i, mut skip) = at;
    let mut used = 0;
    while let Some(seg) = segs.get(i) {
        let avail = seg.len.saturating_sub(skip);
        if avail == 0 {
            i += 1;
            skip = 0;
            continue;
        }
        if n < avail {
            return ((i, skip + n), used);
        }
        n -= avail;
        used += 1;
        i += 1;
        skip = 0;
        if n == 0 {
            break;
        }
    }
    ((i, skip), used)
}
