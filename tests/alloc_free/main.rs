//! Steady state performs zero heap allocations: ring reads, the continuous reader, FIFO
//! receive, split copies and the sans-I/O machines. This binary alone installs the counting
//! global allocator of `tests/common/alloc.rs`; counts are per thread, so the test
//! harness's other threads never show up in a measurement.

#[path = "../common/mod.rs"]
mod common;

mod fifo;
mod machines;
mod pool;
mod reader;
mod ring;
mod split;

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;
