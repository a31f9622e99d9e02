//! Pooled, registered, header-offset buffers.
//!
//! A [`BufferPool`] is one anonymous memory arena (memmap2) carved into equal slots. Each
//! slot holds, in this order and contiguously:
//!
//! ```text
//!  slot start                                data start (aligned to `align`)
//!  |  padding  | header (header_len bytes)  | data (capacity bytes)        | trailer room |
//!              \______________ frame() = header + data() ______/
//! ```
//!
//! The data area of every slot is aligned to the pool's `align` (default 4096), so the
//! same buffers serve O_DIRECT. The header sits immediately before the data, so header
//! and data form one contiguous *frame* that can be forwarded with a single write: the
//! kernel reads into `data()`, the caller
//! fills `header_mut()`, and `frame()` goes out in one piece without a copy.
//!
//! Ownership is the reference count: a [`PoolBuf`] is unique; dropping it returns its
//! slot to the pool at once, from any thread: to that thread's *magazine* (a small
//! per-thread cache of free slots, for pools of 16 slots or more) or to the pool's
//! lock-free shared free list. Slots in magazines count as free in
//! [`PoolStats`](BufferPool::stats), are taken by other threads when the shared list runs
//! dry, go back to the shared list when their thread exits, and keep no dropped pool
//! alive (see `magazine.rs` for the bounds and the policy). [`PoolBuf::share`]
//! turns it into a [`SharedBuf`], a cheap clonable read-only view whose slot returns when
//! the last clone drops. Neither allocates.

mod magazine;
mod pool;
mod pooled;

pub use pool::{BufferPool, GetBuf, PoolBuilder, PoolGeometry, PoolStats};
pub use pooled::{IoBuf, PoolBuf, SharedBuf};

pub(crate) use pool::PoolInner;
