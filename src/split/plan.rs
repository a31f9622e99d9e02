//! The transfer planner ([`TransferPlan`]).

use std::iter::FusedIterator;

use crate::error::{Error, ErrorKind, Result};
use crate::ring::BlockLimits;

/// One piece of a request, as planned by [`TransferPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Device (file) offset of the chunk's first byte.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// Position of the chunk's first byte within the request's buffer space (0 for the
    /// request's first byte).
    pub pos: u64,
}

impl Chunk {
    /// Device offset one past the chunk's last byte (saturating: a plan never makes a
    /// chunk that overflows, but the fields are public).
    pub const fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Builder for [`TransferPlan`]: set limits in any order, then [`build`](Self::build).
///
/// Setters take values as given; `build()` normalises them (the max chunk is rounded down
/// to a multiple of the alignment) and rejects impossible combinations with a typed
/// [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanBuilder {
    max_chunk: u64,
    boundary: u64,
    align: u32,
    segment_len: u64,
    max_segments: u32,
}

impl PlanBuilder {
    /// Largest chunk in bytes. Default: no limit. Rounded down to a multiple of the
    /// alignment at `build()`; 0, or less than the alignment, is an error.
    pub const fn max_chunk(mut self, bytes: u64) -> PlanBuilder {
        self.max_chunk = bytes;
        self
    }

    /// No chunk crosses a device offset that is a multiple of `bytes`. 0 (the default)
    /// means no boundary. Must be a multiple of the alignment.
    pub const fn boundary(mut self, bytes: u64) -> PlanBuilder {
        self.boundary = bytes;
        self
    }

    /// Device alignment for direct I/O (the logical block size): request offsets and
    /// lengths must be multiples of it, and so every chunk is. Must be a power of two.
    /// 0 or 1 (the default) means no alignment.
    pub const fn align(mut self, bytes: u32) -> PlanBuilder {
        self.align = bytes;
        self
    }

    /// The request's buffer space is made of segments of `segment_len` bytes each (the
    /// first starting at position 0); a chunk may touch at most `max_segments` of them.
    /// `segment_len` must be a multiple of the alignment; both must be non-zero.
    /// Default: no segment limit.
    pub const fn segments(mut self, segment_len: u64, max_segments: u32) -> PlanBuilder {
        self.segment_len = segment_len;
        self.max_segments = max_segments;
        self
    }

    /// Normalise and validate.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotPowerOfTwo`] if the alignment is not a power of two;
    /// [`ErrorKind::OutOfRange`] if the max chunk is smaller than the alignment;
    /// [`ErrorKind::InvalidInput`] if a segment limit is half set (a zero segment length
    /// or a zero segment count); [`ErrorKind::Misaligned`] if the boundary or the segment
    /// length is not a multiple of the alignment.
    pub fn build(self) -> Result<TransferPlan> {
        let align = self.align.max(1);
        if !align.is_power_of_two() {
            return Err(Error::new(ErrorKind::NotPowerOfTwo {
                what: "alignment",
                value: align.into(),
            }));
        }
        let a = u64::from(align);
        let max_chunk = self.max_chunk - self.max_chunk % a;
        if max_chunk == 0 {
            return Err(Error::out_of_range("max chunk", align, u64::MAX));
        }
        if self.boundary % a != 0 {
            return Err(Error::new(ErrorKind::Misaligned {
                what: "boundary",
                value: self.boundary,
                align,
            }));
        }
        let no_segments = self.segment_len == 0 && self.max_segments == 0;
        if !no_segments {
            if self.segment_len == 0 || self.max_segments == 0 {
                return Err(Error::invalid(
                    "plan: segment length and max segments must both be non-zero",
                ));
            }
            if self.segment_len % a != 0 {
                return Err(Error::new(ErrorKind::Misaligned {
                    what: "segment length",
                    value: self.segment_len,
                    align,
                }));
            }
        }
        Ok(TransferPlan {
            max_chunk,
            boundary: self.boundary,
            align,
            segment_len: self.segment_len,
            max_segments: self.max_segments,
        })
    }
}

impl BlockLimits {
    /// A plan builder preset with these limits (max chunk and alignment); add a boundary or
    /// a segment limit if the request's buffers need one, then `build()`.
    pub const fn plan_builder(&self) -> PlanBuilder {
        TransferPlan::builder()
            .max_chunk(self.max_chunk)
            .align(self.logical_block_size)
    }
}

/// The transfer planner: how a large request is cut into chunks a target can take.
///
/// [`TransferPlan`] is pure arithmetic: no I/O, no allocation. Build it once per target
/// (from the device's limits, see [`block_device_limits`](crate::ring::block_device_limits)), then ask it for the
/// chunks of any request with [`TransferPlan::chunks`].
///
/// A chunk obeys every limit at once:
///
/// - **max chunk**: at most [`TransferPlan::max_chunk`] bytes;
/// - **boundary**: it never crosses a device offset that is a multiple of
///   [`TransferPlan::boundary`] (a stripe, an erase block, a 4 GiB DMA window);
/// - **alignment**: with an alignment set (O_DIRECT), the request's offset and length must
///   be multiples of it, and every chunk's offset and length then are too;
/// - **segments**: when the request's buffer space is made of segments of
///   [`TransferPlan::segment_len`] bytes each (pool slots, pages), a chunk touches at most
///   [`TransferPlan::max_segments`] of them (one `readv`/`writev` with that many iovecs).
///
/// Chunks are greedy: each is as long as the limits allow, so the plan has the fewest
/// chunks any left-to-right cut can have.
///
/// ```
/// use iocomplete::split::TransferPlan;
/// let plan = TransferPlan::builder()
///     .max_chunk(1000) // normalised down to 512, a multiple of the alignment
///     .align(512)
///     .boundary(4096)
///     .build()?;
/// assert_eq!(plan.max_chunk(), 512);
/// let lens: Vec<u64> = plan.chunks(3584, 1536)?.map(|c| c.len).collect();
/// assert_eq!(lens, [512, 512, 512]);
/// # Ok::<(), iocomplete::Error>(())
/// ```
///
/// # Invariants
///
///
/// Invariants (established by `build()`): `max_chunk` is a non-zero multiple of `align`;
/// `align` is a power of two; `boundary` is 0 or a multiple of `align`; `segment_len` and
/// `max_segments` are both 0 or both non-zero, and `segment_len` is a multiple of `align`.
/// Together they guarantee every chunk of an aligned request is aligned and non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferPlan {
    max_chunk: u64,
    boundary: u64,
    align: u32,
    segment_len: u64,
    max_segments: u32,
}

impl TransferPlan {
    /// A builder with no limits set.
    pub const fn builder() -> PlanBuilder {
        PlanBuilder {
            max_chunk: u64::MAX,
            boundary: 0,
            align: 1,
            segment_len: 0,
            max_segments: 0,
        }
    }

    /// Largest chunk in bytes (a multiple of [`align`](Self::align)).
    pub const fn max_chunk(&self) -> u64 {
        self.max_chunk
    }

    /// The boundary no chunk crosses, if any.
    pub const fn boundary(&self) -> Option<u64> {
        match self.boundary {
            0 => None,
            n => Some(n),
        }
    }

    /// Device alignment (1 when none).
    pub const fn align(&self) -> u32 {
        self.align
    }

    /// Length of one buffer segment, if a segment limit is set.
    pub const fn segment_len(&self) -> Option<u64> {
        match self.segment_len {
            0 => None,
            n => Some(n),
        }
    }

    /// Most segments one chunk may touch, if a segment limit is set.
    pub const fn max_segments(&self) -> Option<u32> {
        match self.max_segments {
            0 => None,
            n => Some(n),
        }
    }

    /// Check that a request of `len` bytes at device offset `offset` can be planned: both
    /// aligned, and `offset + len` does not overflow.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Misaligned`] naming `"offset"` or `"length"`;
    /// [`ErrorKind::OffsetOutOfRange`] if `offset + len` overflows.
    pub fn check(&self, offset: u64, len: u64) -> Result<()> {
        let a = u64::from(self.align);
        if offset % a != 0 {
            return Err(Error::new(ErrorKind::Misaligned {
                what: "offset",
                value: offset,
                align: self.align,
            }));
        }
        if len % a != 0 {
            return Err(Error::new(ErrorKind::Misaligned {
                what: "length",
                value: len,
                align: self.align,
            }));
        }
        if offset.checked_add(len).is_none() {
            return Err(Error::new(ErrorKind::OffsetOutOfRange { offset, len }));
        }
        Ok(())
    }

    /// The chunks of a request of `len` bytes at device offset `offset`, in order, as an
    /// iterator that does not allocate. A zero-length request has no chunks.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub fn chunks(&self, offset: u64, len: u64) -> Result<Chunks> {
        self.check(offset, len)?;
        Ok(Chunks {
            plan: *self,
            offset,
            pos: 0,
            remaining: len,
        })
    }

    /// Length of the chunk that starts at device offset `offset` and buffer position `pos`
    /// when `remaining` bytes of the request are left: the greedy step behind
    /// [`chunks`](Self::chunks), usable from any point (a driver resuming a request).
    ///
    /// Total: for any inputs it returns a value in `1..=remaining` when `remaining > 0`
    /// (0 when `remaining == 0`); for aligned inputs the value is aligned.
    pub fn chunk_len(&self, offset: u64, pos: u64, remaining: u64) -> u64 {
        let mut len = remaining.min(self.max_chunk);
        if self.boundary != 0 {
            len = len.min(self.boundary - offset % self.boundary);
        }
        if let Some(first) = pos.checked_div(self.segment_len) {
            let limit = first
                .saturating_add(u64::from(self.max_segments))
                .saturating_mul(self.segment_len);
            len = len.min(limit.saturating_sub(pos).max(1));
        }
        len
    }

    /// The buffer segments a piece of `len` bytes at buffer position `pos` touches: the
    /// index of the first, and how many (0 for an empty piece). Without a segment limit the
    /// buffer space is one segment, index 0.
    pub const fn segment_span(&self, pos: u64, len: u64) -> (u64, u64) {
        if self.segment_len == 0 || len == 0 {
            return (0, if len == 0 { 0 } else { 1 });
        }
        let first = pos / self.segment_len;
        let last = pos.saturating_add(len - 1) / self.segment_len;
        (first, last - first + 1)
    }
}

/// Iterator over the chunks of one request; see [`TransferPlan::chunks`].
#[derive(Debug, Clone)]
pub struct Chunks {
    plan: TransferPlan,
    offset: u64,
    pos: u64,
    remaining: u64,
}

impl Chunks {
    /// Bytes not yet handed out.
    pub const fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.remaining == 0 {
            return None;
        }
        let len = self.plan.chunk_len(self.offset, self.pos, self.remaining);
        let chunk = Chunk {
            offset: self.offset,
            len,
            pos: self.pos,
        };
        self.offset += len;
        self.pos += len;
        self.remaining -= len;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.remaining == 0 {
            return (0, Some(0));
        }
        let at_least = self.remaining.div_ceil(self.plan.max_chunk);
        let at_most = usize::try_from(self.remaining).ok();
        (usize::try_from(at_least).unwrap_or(usize::MAX), at_most)
    }
}

impl FusedIterator for Chunks {}

#[cfg(all(test, not(loom)))]
mod tests;
