//! Buffer get/put against an aligned heap allocation + free of the same size: on one
//! thread, across two threads (get on one, drop on the other), and with two threads
//! getting and putting on the same pool at once.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;
use iocomplete::{BufferPool, PoolBuf};

fn pool(slots: usize, size: usize) -> BufferPool {
    BufferPool::builder()
        .slots(slots)
        .slot_len(size)
        .header_len(16)
        .build()
        .unwrap()
}

fn get_put(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_get_put");
    g.throughput(Throughput::Elements(1));
    for size in [4096usize, 65536, 1 << 20] {
        let pool = pool(64, size);
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

/// Something the cross-thread benches hand from the getting thread to the dropping one.
trait Item: Send + 'static {}
impl Item for PoolBuf {}
struct Raw(*mut u8, Layout);
// SAFETY: the pointer is a heap block owned by whoever holds the `Raw`.
unsafe impl Send for Raw {}
impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `alloc_item`, freed once, here.
        unsafe { dealloc(self.0, self.1) }
    }
}
impl Item for Raw {}

fn alloc_item(layout: Layout) -> Raw {
    // SAFETY: non-zero size layout.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: `p` points to at least one writable byte.
    unsafe { p.write(1) };
    Raw(p, layout)
}

/// `n` items made on this thread (waiting for one when none is free) and dropped on
/// another; returns the elapsed time. The hand-over (a 32-entry `ArrayQueue`) is the
/// same for the pool and its peer.
fn get_here_drop_there<T: Item>(n: u64, mut make: impl FnMut() -> T) -> Duration {
    let q = Arc::new(ArrayQueue::<T>::new(32));
    let dropper = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut left = n;
            let backoff = Backoff::new();
            while left > 0 {
                match q.pop() {
                    Some(v) => {
                        drop(v);
                        left -= 1;
                        backoff.reset();
                    }
                    None => backoff.snooze(),
                }
            }
        })
    };
    let start = Instant::now();
    for _ in 0..n {
        let mut v = make();
        let backoff = Backoff::new();
        loop {
            match q.push(v) {
                Ok(()) => break,
                Err(back) => {
                    v = back;
                    backoff.snooze();
                }
            }
        }
    }
    dropper.join().unwrap();
    start.elapsed()
}

/// Two threads, each `n` times get + write + put (or alloc + write + free); returns the
/// elapsed time until both are done.
fn two_threads(n: u64, op: impl Fn() + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let start_line = Arc::new(Barrier::new(3));
    let ts: Vec<_> = (0..2)
        .map(|_| {
            let (op, b) = (op.clone(), start_line.clone());
            std::thread::spawn(move || {
                b.wait();
                for _ in 0..n {
                    op();
                }
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    for t in ts {
        t.join().unwrap();
    }
    start.elapsed()
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_cross_thread");
    g.throughput(Throughput::Elements(1));
    let size = 4096usize;
    let layout = Layout::from_size_align(size, 4096).unwrap();
    {
        let pool = pool(64, size);
        g.bench_function("get_here_drop_there/pool", |b| {
            b.iter_custom(|n| {
                get_here_drop_there(n, || {
                    let mut buf = pool.get();
                    buf.header_mut()[0] = 1;
                    buf
                })
            })
        });
    }
    g.bench_function("get_here_drop_there/aligned_alloc", |b| {
        b.iter_custom(|n| get_here_drop_there(n, || alloc_item(layout)))
    });
    {
        let pool = pool(64, size);
        g.bench_function("two_threads_get_put/pool", |b| {
            b.iter_custom(|n| {
                let p = pool.clone();
                two_threads(n, move || {
                    let mut buf = p.get();
                    buf.header_mut()[0] = 1;
                    black_box(&buf);
                })
            })
        });
    }
    g.bench_function("two_threads_get_put/aligned_alloc", |b| {
        b.iter_custom(|n| two_threads(n, move || drop(black_box(alloc_item(layout)))))
    });
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

criterion_group!(benches, get_put, cross_thread, share_clone);
criterion_main!(benches);
