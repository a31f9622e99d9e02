//! Planner and split-machine costs, by request size.
//!
//! `cargo bench --bench plan`

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iocomplete::split::{Mode, SplitAction, SplitEvent, SplitMachine, TransferPlan};
use iocomplete::Direction;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SIZES: [u64; 4] = [64 * KIB, MIB, 16 * MIB, 256 * MIB];

/// A plan like a real O_DIRECT target's: 128 KiB chunks, 512-byte alignment, a 1 MiB
/// boundary, 4 KiB buffer segments with at most 16 per chunk.
fn device_plan() -> TransferPlan {
    TransferPlan::builder()
        .max_chunk(128 * KIB)
        .align(512)
        .boundary(MIB)
        .segments(4 * KIB, 16)
        .build()
        .unwrap()
}

/// Cutting a request into chunks (the iterator alone).
fn chunks(c: &mut Criterion) {
    let plan = device_plan();
    let mut group = c.benchmark_group("plan/chunks");
    for len in SIZES {
        group.throughput(Throughput::Bytes(len));
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            b.iter(|| {
                let mut n = 0u64;
                for chunk in plan.chunks(black_box(512), len).unwrap() {
                    n = n.wrapping_add(chunk.len ^ chunk.pos);
                }
                black_box(n)
            })
        });
    }
    group.finish();
}

/// A whole split request through the machine, every child completing in full, reusing the
/// machine across requests (`restart`): the per-chunk cost of the sans-I/O driver.
fn machine(c: &mut Criterion) {
    let plan = device_plan();
    for (name, mode) in [
        ("serial", Mode::Serial),
        ("parallel8", Mode::Parallel { max_in_flight: 8 }),
    ] {
        let mut group = c.benchmark_group(format!("split/{name}"));
        for len in SIZES {
            group.throughput(Throughput::Bytes(len));
            group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
                let mut m = SplitMachine::new(plan, mode, Direction::Read, 0, 0, None).unwrap();
                while m.poll_action().is_some() {}
                b.iter(|| {
                    m.restart(0, len).unwrap();
                    let mut done = None;
                    while done.is_none() {
                        match m.poll_action() {
                            Some(SplitAction::Submit { child, len, .. }) => m
                                .handle(SplitEvent::ChildCompleted {
                                    child,
                                    result: Ok(len),
                                })
                                .unwrap(),
                            Some(SplitAction::Complete(c)) => done = Some(c),
                            _ => unreachable!(),
                        }
                    }
                    black_box(done)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, chunks, machine);
criterion_main!(benches);
