//! Per-operation submit + reap overhead of the ring on `nop`, by batch size.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iocomplete::{Op, Ring};

fn nop_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_nop");
    for batch in [1u64, 8, 32, 128] {
        g.throughput(Throughput::Elements(batch));
        let mut ring = Ring::builder().entries(256).build().unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                for _ in 0..batch {
                    ring.submit(Op::nop()).detach();
                }
                ring.run_until_idle().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, nop_batches);
criterion_main!(benches);
