//! Splitting a request too large for its target into chunk-sized child requests that
//! complete as one.
//!
//! - [`TransferPlan`] (in `plan`): the pure planner — max chunk, boundary, device alignment,
//!   segments per chunk — yielding [`Chunk`]s without allocating.
//! - [`SplitMachine`] (in `machine`): the sans-I/O driver state machine, [`Mode::Serial`]
//!   (one child re-armed) or [`Mode::Parallel`], with its deadline timer; [`SplitEvent`]s
//!   in, [`SplitAction`]s out.
//! - [`block_device_limits`]: default limits of a block device, from sysfs.
//! - [`SplitDriver`] (in `driver`): runs the machine on a [`Ring`](crate::Ring) for a
//!   [`Job`] — a large read, write, or zero-copy copy.

mod driver;
mod machine;
#[cfg(any(test, feature = "sim"))]
pub mod oracle;
mod plan;
mod sysfs;

pub(crate) use driver::addressable;
pub use driver::{Job, SplitConfig, SplitDriver, SplitStats};
pub use machine::{
    ChildId, Direction, Mode, SplitAction, SplitEvent, SplitMachine, SplitOutcome, MAX_IN_FLIGHT,
};
pub use plan::{Chunk, Chunks, PlanBuilder, TransferPlan};
pub use sysfs::{block_device_limits, default_max_chunk, BlockLimits};
