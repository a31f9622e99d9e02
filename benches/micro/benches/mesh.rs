//! Cross-ring hand-off: the round trip of a message between two rings, each driven by a
//! thread of its own (`RingSet`), announced by an `IORING_OP_MSG_RING` doorbell
//! (`Ring::post`) or by the target's eventfd (`RingHandle::post`), against the same
//! ping-pong between two threads over `std::sync::mpsc` and `crossbeam-channel` (same run);
//! and one message to a ring that has gone to sleep, by either doorbell.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iocomplete::{Ring, RingHandle, RingSet};

/// One leg: from the ring in hand to `to`; `left` legs remain after this one.
fn leg(
    ring: &mut Ring,
    doorbell: bool,
    to: RingHandle,
    back: RingHandle,
    left: u64,
    done: mpsc::Sender<()>,
) {
    if left == 0 {
        done.send(()).unwrap();
        return;
    }
    let target = to.clone();
    let next = move |r: iocomplete::Result<&mut Ring>| {
        leg(r.expect("ring running"), doorbell, back, to, left - 1, done)
    };
    if doorbell {
        ring.post(&target, next);
    } else {
        target.post(next);
    }
}

/// `iters` round trips between the two rings of `set`.
fn round_trips(set: &RingSet, doorbell: bool, iters: u64) -> Duration {
    let (a, b) = (set.handles()[0].clone(), set.handles()[1].clone());
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let a2 = a.clone();
    a.post(move |r| leg(r.expect("ring running"), doorbell, b, a2, 2 * iters, tx));
    rx.recv().unwrap();
    t0.elapsed()
}

/// `iters` round trips between this thread and an echo thread over two channels, each
/// given as its (send, receive) pair; dropping the first sender ends the echo.
fn echo_round_trips<S1, R1, S2, R2>(iters: u64, to: (S1, R1), back: (S2, R2)) -> Duration
where
    S1: FnMut(u64) -> bool,
    R1: FnMut() -> Option<u64> + Send + 'static,
    S2: FnMut(u64) -> bool + Send + 'static,
    R2: FnMut() -> Option<u64>,
{
    let ((mut send, mut echo_recv), (mut echo_send, mut recv)) = (to, back);
    let echo = std::thread::spawn(move || {
        while let Some(v) = echo_recv() {
            assert!(echo_send(v));
        }
    });
    let t0 = Instant::now();
    for i in 0..iters {
        assert!(send(i));
        recv().unwrap();
    }
    let t = t0.elapsed();
    drop(send);
    echo.join().unwrap();
    t
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_round_trip");
    g.throughput(Throughput::Elements(1));
    let set = RingSet::builder().rings(2).spawn().unwrap();
    g.bench_function("ring_post_msg_ring", |b| {
        b.iter_custom(|iters| round_trips(&set, true, iters))
    });
    g.bench_function("handle_post_eventfd", |b| {
        b.iter_custom(|iters| round_trips(&set, false, iters))
    });
    set.shutdown().unwrap();
    g.bench_function("std_mpsc", |b| {
        b.iter_custom(|iters| {
            let (to_tx, to_rx) = mpsc::channel::<u64>();
            let (back_tx, back_rx) = mpsc::channel::<u64>();
            echo_round_trips(
                iters,
                (move |v| to_tx.send(v).is_ok(), move || to_rx.recv().ok()),
                (
                    move |v| back_tx.send(v).is_ok(),
                    move || back_rx.recv().ok(),
                ),
            )
        })
    });
    g.bench_function("crossbeam_channel", |b| {
        b.iter_custom(|iters| {
            let (to_tx, to_rx) = crossbeam_channel::bounded::<u64>(1);
            let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(1);
            echo_round_trips(
                iters,
                (move |v| to_tx.send(v).is_ok(), move || to_rx.recv().ok()),
                (
                    move |v| back_tx.send(v).is_ok(),
                    move || back_rx.recv().ok(),
                ),
            )
        })
    });
    g.finish();
}

/// One message from ring 0 to ring 1 after ring 1 has gone to sleep (300 µs of quiet, past
/// its driver loop's 50 µs spin): the time from the post (on ring 0's thread) to the
/// message running on ring 1 — the doorbell and the wake-up. Only that time is counted.
fn to_a_sleeping_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_sleeping_target");
    g.sample_size(20);
    let set = RingSet::builder().rings(2).spawn().unwrap();
    for (name, doorbell) in [("ring_post_msg_ring", true), ("handle_post_eventfd", false)] {
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let (a, b) = (set.handles()[0].clone(), set.handles()[1].clone());
                let (tx, rx) = mpsc::channel::<Duration>();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(Duration::from_micros(300));
                    let (b, tx) = (b.clone(), tx.clone());
                    a.post(move |r| {
                        let r = r.expect("ring running");
                        let t0 = Instant::now();
                        let f =
                            move |_: iocomplete::Result<&mut Ring>| tx.send(t0.elapsed()).unwrap();
                        if doorbell {
                            r.post(&b, f)
                        } else {
                            b.post(f)
                        }
                    });
                    total += rx.recv().unwrap();
                }
                total
            })
        });
    }
    g.finish();
    set.shutdown().unwrap();
}

criterion_group!(benches, ping_pong, to_a_sleeping_ring);
criterion_main!(benches);
