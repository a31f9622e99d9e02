//! CompletionQueue against `std::sync::mpsc::sync_channel` and `crossbeam-channel`'s
//! bounded channel (same capacity, the producer waiting for room when full): single
//! thread, and across two threads (producer → consumer), items per second.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iocomplete::CompletionQueue;

const CAP: usize = 1024;

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_single_thread");
    g.throughput(Throughput::Elements(1));
    let q = CompletionQueue::new(CAP);
    g.bench_function("completion_queue", |b| {
        b.iter(|| {
            q.push(black_box(1u64)).unwrap();
            black_box(q.pop());
        })
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(CAP);
    g.bench_function("mpsc_sync_channel", |b| {
        b.iter(|| {
            tx.send(black_box(1u64)).unwrap();
            black_box(rx.recv().unwrap());
        })
    });
    let (tx, rx) = crossbeam_channel::bounded(CAP);
    g.bench_function("crossbeam_bounded", |b| {
        b.iter(|| {
            tx.send(black_box(1u64)).unwrap();
            black_box(rx.recv().unwrap());
        })
    });
    g.finish();
}

/// Move `n` items from a producer thread to this thread; returns the elapsed time.
fn cq_cross(n: u64, batch: usize) -> Duration {
    let q = Arc::new(CompletionQueue::new(CAP));
    let p = {
        let q = q.clone();
        std::thread::spawn(move || {
            // Like `SyncSender::send`: wait for room when full (spin, then sleep).
            for i in 0..n {
                if let Err(v) = q.push(i) {
                    q.push_wait(v);
                }
            }
        })
    };
    let start = Instant::now();
    let mut got = 0u64;
    let mut buf = Vec::with_capacity(batch);
    while got < n {
        buf.clear();
        let k = q.pop_batch_timeout(&mut buf, batch, Duration::from_secs(5));
        got += k as u64;
        black_box(&buf);
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

/// Like `Receiver::recv`: one item per call, waiting as long as it takes (no deadline).
fn cq_cross_wait(n: u64) -> Duration {
    let q = Arc::new(CompletionQueue::new(CAP));
    let p = {
        let q = q.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                if let Err(v) = q.push(i) {
                    q.push_wait(v);
                }
            }
        })
    };
    let start = Instant::now();
    for _ in 0..n {
        black_box(q.pop_wait());
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

fn mpsc_cross(n: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel(CAP);
    let p = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(i).unwrap();
        }
    });
    let start = Instant::now();
    for _ in 0..n {
        black_box(rx.recv().unwrap());
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

fn crossbeam_cross(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded(CAP);
    let p = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(i).unwrap();
        }
    });
    let start = Instant::now();
    for _ in 0..n {
        black_box(rx.recv().unwrap());
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_cross_thread");
    const N: u64 = 100_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    for batch in [1usize, 32, 256] {
        g.bench_with_input(
            BenchmarkId::new("completion_queue_batch", batch),
            &batch,
            |b, &batch| b.iter_custom(|iters| (0..iters).map(|_| cq_cross(N, batch)).sum()),
        );
    }
    g.bench_function("completion_queue_pop_wait", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cq_cross_wait(N)).sum())
    });
    g.bench_function("mpsc_sync_channel", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| mpsc_cross(N)).sum())
    });
    g.bench_function("crossbeam_bounded", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| crossbeam_cross(N)).sum())
    });
    g.finish();
}

criterion_group!(benches, single_thread, cross_thread);
criterion_main!(benches);
