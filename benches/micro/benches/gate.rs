//! CompletionGate costs: one request's whole life (N paths each setting a status and
//! dropping a reference), and a contended request raced by two threads.
//!
//! `cargo bench --bench gate`

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iocomplete::gate::{CompletionGate, Status};

/// A request with `refs` paths, run on one thread: each path begins completion and drops
/// its reference; the last completes. Throughput counts gate operations.
fn request_lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("gate/request");
    for refs in [1u32, 2, 3, 8] {
        group.throughput(Throughput::Elements(u64::from(refs) * 2));
        group.bench_with_input(BenchmarkId::from_parameter(refs), &refs, |b, &refs| {
            b.iter(|| {
                let gate = CompletionGate::with_refs(refs).unwrap();
                let mut done = None;
                for i in 0..refs {
                    let s = if i % 2 == 0 {
                        Status::Success
                    } else {
                        Status::Cancelled
                    };
                    gate.begin_completion(black_box(s));
                    if let Some(fin) = gate.release().unwrap() {
                        done = Some(fin);
                    }
                }
                black_box(done)
            })
        });
    }
    group.finish();
}

/// The single-step path: `complete(status, force)` per reference.
fn complete_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("gate/complete");
    for refs in [1u32, 3, 16] {
        group.throughput(Throughput::Elements(u64::from(refs)));
        group.bench_with_input(BenchmarkId::from_parameter(refs), &refs, |b, &refs| {
            b.iter(|| {
                let gate = CompletionGate::with_refs(refs).unwrap();
                let mut done = None;
                for _ in 0..refs {
                    done = gate.complete(black_box(Status::Success), false).unwrap();
                }
                black_box(done)
            })
        });
    }
    group.finish();
}

/// Two threads race `complete` on a fresh gate per round (transfer path vs cancel path),
/// a batch of rounds per measurement. Shows the cost of the contended compare-exchange.
fn contended(c: &mut Criterion) {
    const ROUNDS: usize = 1000;
    let mut group = c.benchmark_group("gate/contended");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements((ROUNDS * threads) as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let gates: Arc<Vec<CompletionGate>> = Arc::new(
                            (0..ROUNDS)
                                .map(|_| CompletionGate::with_refs(threads as u32).unwrap())
                                .collect(),
                        );
                        let barrier = Arc::new(Barrier::new(threads));
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for t in 0..threads {
                                let (gates, barrier) = (gates.clone(), barrier.clone());
                                s.spawn(move || {
                                    barrier.wait();
                                    let status = if t == 0 {
                                        Status::Success
                                    } else {
                                        Status::Cancelled
                                    };
                                    for g in gates.iter() {
                                        black_box(g.complete(status, false).unwrap());
                                    }
                                });
                            }
                        });
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, request_lifecycle, complete_step, contended);
criterion_main!(benches);
