//! Splitting a request too large for its target into chunk-sized child requests that
//! complete as one.
//!
//! - [`TransferPlan`] (in `plan`): the pure planner — max chunk, boundary, device alignment,
//!   segments per chunk — yielding [`Chunk`]s without allocating.
//! - [`SplitMachine`] (in `machine`): the sans-I/O driver state machine, [`Mode::Serial`]
//!   (one child re-armed) or [`Mode::Parallel`], with its deadline timer; [`SplitEvent`]s
//!   in, [`SplitAction`]s out.
//! - A device's limits ([`block_device_limits`](crate::ring::block_device_limits)) preset a
//!   plan ([`BlockLimits::plan_builder`](crate::ring::BlockLimits::plan_builder)).
//! - [`SplitDriver`] (in `driver`): runs the machine on a [`Ring`](crate::Ring) for a
//!   [`Job`] — a large read, write, or zero-copy copy.

mod driver;
mod machine;
#[cfg(any(test, feature = "sim"))]
pub mod oracle;
mod plan;

pub use driver::{Job, SplitConfig, SplitDriver, SplitStats};
pub use machine::{
    ChildId, Mode, SplitAction, SplitEvent, SplitMachine, SplitOutcome, MAX_IN_FLIGHT,
};
pub use plan::{Chunk, Chunks, PlanBuilder, TransferPlan};
