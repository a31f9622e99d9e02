//! Buffer get/put against an aligned heap allocation + free of the same size.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iocomplete::BufferPool;

fn get_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_get_put");
    g.throughput(Throughput::Elements(1));
    for size in [4096usize, 65536, 1 << 20] {
        let pool = BufferPool::builder()
            .slots(64)
            .slot_len(size)
            .header_len(16)
            .build()
            .unwrap();
        g.bench_with_input(BenchmarkId::new("pool", size), &size, |b, _| {
            b.iter(|| {
                let mut buf = pool.try_get().unwrap();
                // Touch the buffer as a user would (write its header).
                buf.header_mut()[0] = 1;
                black_box(&buf);
            })
        });
        let layout = Layout::from_size_align(size, 4096).unwrap();
        g.bench_with_input(BenchmarkId::new("aligned_alloc", size), &size, |b, _| {
            b.iter(|| {
                // SAFETY: non-zero size layout; the pointer is freed with the same layout.
                unsafe {
                    let p = alloc(layout);
                    assert!(!p.is_null());
                    p.write(1);
                    black_box(p);
                    dealloc(p, layout);
                }
            })
        });
    }
    g.finish();
}

fn share_clone(c: &mut Criterion) {
    let pool = BufferPool::builder()
        .slots(8)
        .slot_len(4096)
        .build()
        .unwrap();
    c.bench_function("shared_buf_share_clone_drop", |b| {
        b.iter(|| {
            let s = pool.try_get().unwrap().share();
            let s2 = s.clone();
            black_box(&s2);
        })
    });
}

criterion_group!(benches, get_put, share_clone);
criterion_main!(benches);
