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
/// 100,000 items from a producer thread (waiting for room when full, like
/// `SyncSender::send`) to this thread, which takes them with `consume` (returns how many
/// it took).
fn cq_cross(n: u64, mut consume: impl FnMut(&CompletionQueue<u64>) -> usize) -> Duration {
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
    let mut got = 0u64;
    while got < n {
        got += consume(&q) as u64;
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

/// Consumer: `pop_batch_timeout` of up to `batch` items.
fn batches(batch: usize) -> impl FnMut(&CompletionQueue<u64>) -> usize {
    let mut buf = Vec::with_capacity(batch);
    move |q| {
        buf.clear();
        let k = q.pop_batch_timeout(&mut buf, batch, Duration::from_secs(5));
        black_box(&buf);
        k
    }
}

/// Consumer like `Receiver::recv`: one item per call, waiting as long as it takes.
fn pop_wait(q: &CompletionQueue<u64>) -> usize {
    black_box(q.pop_wait());
    1
}

/// `n` items from a producer thread through a channel (`send` and `recv` of the pair
/// that `channel` makes): the consumer's time.
fn channel_cross<T, R>(n: u64, (tx, rx): (T, R)) -> Duration
where
    T: FnMut(u64) + Send + 'static,
    R: FnMut() -> u64,
{
    let (mut send, mut recv) = (tx, rx);
    let p = std::thread::spawn(move || (0..n).for_each(&mut send));
    let start = Instant::now();
    for _ in 0..n {
        black_box(recv());
    }
    let el = start.elapsed();
    p.join().unwrap();
    el
}

fn mpsc_cross(n: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel(CAP);
    channel_cross(
        n,
        (move |i| tx.send(i).unwrap(), move || rx.recv().unwrap()),
    )
}

fn crossbeam_cross(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded(CAP);
    channel_cross(
        n,
        (move |i| tx.send(i).unwrap(), move || rx.recv().unwrap()),
    )
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
            |b, &batch| {
                b.iter_custom(|iters| (0..iters).map(|_| cq_cross(N, batches(batch))).sum())
            },
        );
    }
    g.bench_function("completion_queue_pop_wait", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cq_cross(N, pop_wait)).sum())
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
