//! Many rings (issue 15): `RingSet`, messages posted to a ring (`RingHandle::post`,
//! `Ring::post` with its `MSG_RING` doorbell), operations handed to another ring
//! (`Ring::submit_on`), N rings x M threads submitting, cancelling and handing off, and
//! every ring shutting down first. Every test checks that each operation and each message
//! completed exactly once and that every pool slot came back; file reads are checked
//! block by block (offset and seed in each block).

mod common;

use common::rings::{assert_once, counters, on_ring, thread_name, verify_file};

use common::bounds::watchdog;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::fd::pipe;
use common::verify;
use iocomplete::{
    BackendKind, BufferPool, CompletionQueue, ErrorKind, Op, OpId, Result, Ring, RingBuilder,
    RingHandle, RingSet, Target,
};

const BS: usize = 4096;
const SEED: u64 = 0x15_15;

/// Ring `h`'s doorbell count once it has reaped every doorbell it sent.
fn doorbells_when_idle(h: &RingHandle) -> u64 {
    let t0 = Instant::now();
    loop {
        let (n, busy) = on_ring(h, |r| (r.stats().doorbells, r.in_flight()));
        if busy == 0 {
            return n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "doorbells never reaped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn posted_messages_run_on_the_target_ring_in_order_and_ring_its_doorbell() {
    let _w = watchdog("post order", 60);
    const N: u32 = 2_000;
    let set = RingSet::builder().rings(2).spawn().unwrap();
    let (a, b) = (set.handles()[0].clone(), set.handles()[1].clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let (seen, b2) = (seen.clone(), b.clone());
        a.post(move |ring| {
            let ring = ring.unwrap();
            for i in 0..N {
                let (seen, done_tx) = (seen.clone(), done_tx.clone());
                // From ring 0's thread: the doorbell rides ring 0's next submission.
                ring.post(&b2, move |r| {
                    assert!(r.is_ok(), "ring 1 is running");
                    seen.lock().unwrap().push((i, thread_name()));
                    if i == N - 1 {
                        done_tx.send(()).unwrap();
                    }
                });
            }
        });
    }
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("every message ran");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N as usize, "each message once");
    for (k, (i, name)) in seen.iter().enumerate() {
        assert_eq!(*i as usize, k, "messages from one thread run in order");
        assert_eq!(
            name, "iocomplete-ring-1",
            "messages run on the target's thread"
        );
    }
    // The doorbells: MSG_RING from ring 0 when both rings have it, none otherwise.
    let msg_ring = on_ring(&a, |r| {
        r.capabilities().msg_ring && r.backend() == BackendKind::Uring
    });
    let sent = doorbells_when_idle(&a);
    let b_uring = on_ring(&b, |r| r.backend() == BackendKind::Uring);
    // A doorbell per message at most, and only where both rings have MSG_RING: a ring
    // whose driver loop is spinning needs none (it looks at its inbox before it sleeps);
    // 2,000 at once to a sleeping ring overflow its CQ (512 entries), and those refused
    // are replaced by the eventfd (every message ran, above).
    assert!(sent <= u64::from(N));
    if !(msg_ring && b_uring) {
        assert_eq!(sent, 0, "no MSG_RING without io_uring on both sides");
    }
    set.shutdown().unwrap();
}

#[test]
fn a_doorbell_alone_wakes_a_ring_blocked_in_the_kernel() {
    let _w = watchdog("doorbell wake", 60);
    // Ring B blocks in `run_once(None)` on a pipe read that never completes: only a CQE can
    // end that wait — the doorbell's, or the eventfd poll's when there is no MSG_RING.
    let mut b = Ring::new().unwrap();
    let hb = b.handle().unwrap();
    let (r, _w_end) = pipe();
    let t = b.register(r).unwrap();
    let pool = common::pool(2, BS);
    let q = Arc::new(CompletionQueue::new(4));
    let held = b
        .submit(Op::read(t, 0, pool.try_get().unwrap()))
        .to_queue(&q);
    b.poll().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let driver = {
        let runs = runs.clone();
        std::thread::spawn(move || {
            while runs.load(Ordering::SeqCst) < 3 {
                b.run_once(None).unwrap();
            }
            b.cancel(held);
            while b.in_flight() > 0 {
                b.run_once(None).unwrap();
            }
            b
        })
    };
    let mut a = Ring::new().unwrap();
    for round in 1..=3 {
        // 100 at once (B's CQ holds 512), in order, the last one counting the round.
        let order = Arc::new(AtomicUsize::new(0));
        for i in 0..100 {
            let (runs2, order) = (runs.clone(), order.clone());
            a.post(&hb, move |r| {
                assert!(r.is_ok());
                assert_eq!(order.fetch_add(1, Ordering::SeqCst), i, "in order");
                if i == 99 {
                    runs2.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // The doorbell leaves with ring A's next submission.
        a.poll().unwrap();
        let t0 = Instant::now();
        while runs.load(Ordering::SeqCst) < round {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {round}: B never woke"
            );
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
    }
    let b = driver.join().unwrap();
    let c = q
        .pop_timeout(Duration::from_secs(5))
        .expect("the held read completed");
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
    drop(c);
    a.run_until_idle().unwrap();
    if a.capabilities().msg_ring
        && a.backend() == BackendKind::Uring
        && b.backend() == BackendKind::Uring
    {
        // B never spins (its loop is `run_once`): every message rang its doorbell.
        assert_eq!(a.stats().doorbells, 300);
    }
    common::check_teardown(&a, &[]);
    common::check_teardown(&b, &[&pool]);
}

#[test]
fn submit_on_reads_another_rings_file_and_brings_the_buffers_home() {
    let _w = watchdog("submit_on", 60);
    const BLOCKS: usize = 256;
    let set = RingSet::builder().rings(2).spawn().unwrap();
    let (a, b) = (set.handles()[0].clone(), set.handles()[1].clone());
    let pool = common::pool(32, BS);
    // The file is registered with ring 1 only; so is the pool (as fixed buffers there).
    let file = b.register(verify_file(BLOCKS, SEED)).unwrap();
    let p = pool.clone();
    on_ring(&b, move |r| {
        r.register_pool(&p);
    });
    let counts = counters(BLOCKS);
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let (b, pool, counts, bad) = (b.clone(), pool.clone(), counts.clone(), bad.clone());
        a.post(move |ring| {
            let ring = ring.unwrap();
            // Keep at most 32 reads (the pool's size) out: each completion starts the next.
            /// What each read needs to start the next one when it comes home.
            #[derive(Clone)]
            struct Reads {
                b: RingHandle,
                pool: BufferPool,
                file: Target,
                counts: Arc<Vec<AtomicU32>>,
                bad: Arc<Mutex<Vec<String>>>,
                done: mpsc::Sender<()>,
            }
            fn start(ring: &mut Ring, r: Reads, i: usize) {
                if i >= BLOCKS {
                    return;
                }
                let buf = r.pool.try_get().expect("a free slot");
                let op = Op::read(r.file, (i * BS) as u64, buf).tag(i as u64);
                let b = r.b.clone();
                ring.submit_on(&b, op, move |home, c| {
                    let home = home.expect("ring 0 is running");
                    r.counts[c.tag() as usize].fetch_add(1, Ordering::SeqCst);
                    if thread_name() != "iocomplete-ring-0" {
                        let msg = format!("completion on {}", thread_name());
                        r.bad.lock().unwrap().push(msg);
                    }
                    let i = c.tag() as usize;
                    match c.into_result() {
                        Ok(buf) => {
                            if let Err(e) = verify::check_block(buf.data(), (i * BS) as u64, SEED) {
                                r.bad.lock().unwrap().push(e);
                            }
                        }
                        Err(e) => r.bad.lock().unwrap().push(format!("block {i}: {e}")),
                    }
                    if i == BLOCKS - 1 {
                        let _ = r.done.send(());
                    }
                    start(home, r, i + 32);
                });
            }
            let reads = Reads {
                b,
                pool,
                file,
                counts,
                bad,
                done: done_tx,
            };
            for i in 0..32 {
                start(ring, reads.clone(), i);
            }
        });
    }
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the last block came home");
    // Blocks finish in any order: wait for all of them.
    let t0 = Instant::now();
    while counts.iter().any(|c| c.load(Ordering::SeqCst) == 0)
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    set.shutdown().unwrap();
    assert_once(&counts, "block read");
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    let st = pool.stats();
    assert_eq!(st.free, st.total, "every slot back: {st:?}");
}

/// What one N x M run did, counted by the clients and the routes.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    cancelled: AtomicU64,
    closed: AtomicU64,
}

#[test]
fn n_rings_by_m_threads_submit_cancel_and_hand_off_exactly_once() {
    let _w = watchdog("N x M", 120);
    const RINGS: usize = 4;
    const THREADS: usize = 4;
    const ITERS: usize = 300;
    const BLOCKS: usize = 64;
    let set = RingSet::builder().rings(RINGS).spawn().unwrap();
    let hs: Arc<Vec<RingHandle>> = Arc::new(set.handles().to_vec());
    let pool = common::pool(256, BS);
    // Each ring: the verify file and an idle pipe (reads there only end by cancel).
    let mut files = Vec::new();
    let mut pipes = Vec::new();
    let mut writers = Vec::new();
    for h in hs.iter() {
        files.push(h.register(verify_file(BLOCKS, SEED)).unwrap());
        let (r, w) = pipe();
        pipes.push(h.register(r).unwrap());
        writers.push(w);
        let p = pool.clone();
        on_ring(h, move |r| {
            r.register_pool(&p);
        });
    }
    let total = THREADS * ITERS;
    let counts = counters(total);
    // The block each queued read asked for, by tag.
    let wanted = Arc::new((0..total).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let tally = Arc::new(Tally::default());
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let q = Arc::new(CompletionQueue::new(total));
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (hs, pool, files, pipes) = (hs.clone(), pool.clone(), files.clone(), pipes.clone());
            let (counts, tally, bad, q) = (counts.clone(), tally.clone(), bad.clone(), q.clone());
            let wanted = wanted.clone();
            std::thread::spawn(move || {
                let mut rng = common::rng(t as u64 + 1);
                for k in 0..ITERS {
                    let tag = (t * ITERS + k) as u64;
                    let i = rng.usize(..RINGS);
                    let j = rng.usize(..RINGS);
                    let block = rng.usize(..BLOCKS);
                    wanted[tag as usize].store(block, Ordering::SeqCst);
                    let buf = loop {
                        match pool.try_get() {
                            Ok(b) => break b,
                            Err(_) => std::thread::yield_now(),
                        }
                    };
                    match rng.u8(..3) {
                        // A read on ring i, completion to a queue.
                        0 => hs[i]
                            .submit_to(Op::read(files[i], (block * BS) as u64, buf).tag(tag), &q),
                        // A message to ring i that hands a read to ring j; the completion
                        // comes back to ring i.
                        1 => {
                            let (hj, fj, counts, tally, bad) = (
                                hs[j].clone(),
                                files[j],
                                counts.clone(),
                                tally.clone(),
                                bad.clone(),
                            );
                            hs[i].post(move |ring| {
                                let ring = ring.expect("no ring shut down in this test");
                                let op = Op::read(fj, (block * BS) as u64, buf).tag(tag);
                                ring.submit_on(&hj, op, move |home, c| {
                                    assert!(home.is_ok());
                                    counts[c.tag() as usize].fetch_add(1, Ordering::SeqCst);
                                    match c.into_result() {
                                        Ok(b) => {
                                            tally.ok.fetch_add(1, Ordering::SeqCst);
                                            if let Err(e) = verify::check_block(
                                                b.data(),
                                                (block * BS) as u64,
                                                SEED,
                                            ) {
                                                bad.lock().unwrap().push(e);
                                            }
                                        }
                                        Err(e) => {
                                            bad.lock().unwrap().push(format!("hand-off: {e}"))
                                        }
                                    }
                                });
                            });
                        }
                        // A read of ring i's idle pipe, started by a message, cancelled from
                        // this thread with the id the message sends back.
                        _ => {
                            let (tx, rx) = mpsc::channel::<OpId>();
                            let (q2, pi) = (q.clone(), pipes[i]);
                            hs[i].post(move |ring| {
                                let ring = ring.expect("no ring shut down in this test");
                                let id = ring.submit(Op::read(pi, 0, buf).tag(tag)).to_queue(&q2);
                                tx.send(id).unwrap();
                            });
                            let id = rx
                                .recv_timeout(Duration::from_secs(20))
                                .expect("the message ran");
                            hs[i].cancel(id);
                        }
                    }
                }
            })
        })
        .collect();
    // Collect the queue's completions (their buffers go back as they are checked) until
    // every tag is accounted for.
    let collector = {
        let (counts, tally, bad, q) = (counts.clone(), tally.clone(), bad.clone(), q.clone());
        let wanted = wanted.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while counts.iter().any(|c| c.load(Ordering::SeqCst) == 0) {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "completions missing"
                );
                let Some(c) = q.pop_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                counts[c.tag() as usize].fetch_add(1, Ordering::SeqCst);
                match c.error().map(|e| e.kind()) {
                    None => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                        let at = (wanted[c.tag() as usize].load(Ordering::SeqCst) * BS) as u64;
                        let buf = c.into_buf().expect("a read's buffer");
                        if let Err(e) = verify::check_block(buf.data(), at, SEED) {
                            bad.lock().unwrap().push(e);
                        }
                    }
                    Some(ErrorKind::Cancelled) => {
                        tally.cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(k) => bad.lock().unwrap().push(format!("queue: {k:?}")),
                }
            }
        })
    };
    for c in clients {
        c.join().unwrap();
    }
    collector.join().unwrap();
    set.shutdown().unwrap();
    // Nothing more may arrive after shutdown.
    assert!(
        q.pop().is_none(),
        "a completion after every tag was counted"
    );
    assert_once(&counts, "operation");
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    assert!(
        tally.cancelled.load(Ordering::SeqCst) > 0,
        "the cancel path ran"
    );
    assert_eq!(
        tally.ok.load(Ordering::SeqCst) + tally.cancelled.load(Ordering::SeqCst),
        total as u64
    );
    let st = pool.stats();
    assert_eq!(st.free, st.total, "every slot back: {st:?}");
    drop(writers);
}

/// Rings 0..3 exchange messages and hand-offs continuously while ring `first` is shut down
/// (`shutdown_now`, then dropped on its thread), then the rest: every message runs or is
/// refused once, every hand-off's completion comes home or is refused once, every slot
/// comes back.
fn shut_down_first(first: usize, now: bool) {
    const RINGS: usize = 3;
    let set = RingSet::builder().rings(RINGS).spawn().unwrap();
    let hs: Arc<Vec<RingHandle>> = Arc::new(set.handles().to_vec());
    let pool = common::pool(512, BS);
    let mut files = Vec::new();
    for h in hs.iter() {
        files.push(h.register(verify_file(16, SEED)).unwrap());
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let msgs = counters(1 << 20);
    let homes = counters(1 << 20);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let (hs, pool, files, sent, msgs, homes, tally, stop) = (
                hs.clone(),
                pool.clone(),
                files.clone(),
                sent.clone(),
                msgs.clone(),
                homes.clone(),
                tally.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = common::rng(100 + t);
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    if n >= msgs.len() {
                        break;
                    }
                    let (i, j) = (rng.usize(..RINGS), rng.usize(..RINGS));
                    let Ok(buf) = pool.try_get() else {
                        // Every slot out: give this number back as a plain message.
                        let msgs = msgs.clone();
                        let homes = homes.clone();
                        hs[i].post(move |_| {
                            msgs[n].fetch_add(1, Ordering::SeqCst);
                            homes[n].fetch_add(1, Ordering::SeqCst);
                        });
                        std::thread::yield_now();
                        continue;
                    };
                    let (hj, fj) = (hs[j].clone(), files[j]);
                    let (msgs, homes, tally) = (msgs.clone(), homes.clone(), tally.clone());
                    hs[i].post(move |ring| {
                        msgs[n].fetch_add(1, Ordering::SeqCst);
                        let Ok(ring) = ring else {
                            // Refused: the buffer goes back with `buf`'s drop; no hand-off.
                            drop(buf);
                            tally.closed.fetch_add(1, Ordering::SeqCst);
                            homes[n].fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        ring.submit_on(&hj, Op::read(fj, 0, buf).tag(n as u64), move |home, c| {
                            homes[c.tag() as usize].fetch_add(1, Ordering::SeqCst);
                            if home.is_err() {
                                tally.closed.fetch_add(1, Ordering::SeqCst);
                            }
                            match c.error().map(|e| e.kind()) {
                                None => {
                                    let b = c.into_buf().unwrap();
                                    verify::check_block(b.data(), 0, SEED).unwrap();
                                    tally.ok.fetch_add(1, Ordering::SeqCst);
                                }
                                Some(ErrorKind::Cancelled) => {
                                    tally.cancelled.fetch_add(1, Ordering::SeqCst);
                                }
                                Some(k) => panic!("hand-off failed with {k:?}"),
                            }
                        });
                    });
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    if now {
        hs[first].shutdown_now();
    } else {
        hs[first].shutdown();
    }
    std::thread::sleep(Duration::from_millis(30));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    set.shutdown().unwrap();
    let n = sent.load(Ordering::SeqCst).min(msgs.len());
    assert!(n > 100, "too few messages to say anything: {n}");
    assert_once(&msgs[..n], "message");
    assert_once(&homes[..n], "hand-off completion");
    assert!(msgs[n..].iter().all(|c| c.load(Ordering::SeqCst) == 0));
    if now {
        // Messages posted after `shutdown_now` are refused at once.
        assert!(
            n < msgs.len(),
            "the clients ran out of numbers before the shutdown"
        );
        assert!(
            tally.closed.load(Ordering::SeqCst) > 0,
            "ring {first} refused nothing"
        );
    }
    let st = pool.stats();
    assert_eq!(st.free, st.total, "every slot back: {st:?}");
    assert_eq!(st.in_flight, 0);
}

#[test]
fn any_ring_may_shut_down_first_with_messages_and_hand_offs_in_flight() {
    let _w = watchdog("shutdown order", 120);
    for first in 0..3 {
        shut_down_first(first, true);
        shut_down_first(first, false);
    }
}

#[test]
fn a_message_reposting_itself_does_not_hold_the_ring() {
    let _w = watchdog("self post", 60);
    let mut ring = Ring::new().unwrap();
    let h = ring.handle().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    fn again(h: RingHandle, ran: Arc<AtomicUsize>) {
        let h2 = h.clone();
        h.post(move |r| {
            if let Ok(r) = r {
                if ran.fetch_add(1, Ordering::SeqCst) < 1_000_000 {
                    // From the ring itself (its own handle): runs at its next turn.
                    let (h3, ran2) = (h2.clone(), ran.clone());
                    r.post(&h2, move |_| again(h3, ran2));
                }
            }
        });
    }
    again(h.clone(), ran.clone());
    // One turn runs what was there when it looked, not the chain it keeps growing.
    ring.run_once(Some(Duration::from_millis(10))).unwrap();
    let after_one = ran.load(Ordering::SeqCst);
    assert!(
        (1..1_000).contains(&after_one),
        "one turn ran {after_one} messages"
    );
    // Meanwhile an operation still completes.
    let c = ring.submit(Op::nop().tag(9)).wait().unwrap();
    assert_eq!(c.tag(), 9);
    drop(ring);
    // The dropped ring refused the chain's last message: nothing runs after the drop.
    let at_drop = ran.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ran.load(Ordering::SeqCst), at_drop);
    assert!(h.is_closed());
}

#[test]
fn posting_to_a_gone_ring_is_refused_at_once_on_the_posting_thread() {
    let ring = Ring::new().unwrap();
    let (h, driver) = ring.spawn().unwrap();
    h.shutdown();
    driver.join().unwrap().unwrap();
    let (tx, rx) = mpsc::channel();
    h.post(move |r| {
        tx.send((r.err().map(|e| e.kind()), thread_name())).unwrap();
    });
    let (kind, name) = rx.try_recv().expect("refused synchronously");
    assert_eq!(kind, Some(ErrorKind::RingClosed));
    assert_eq!(name, thread_name());
    // From a ring: the same, and a hand-off comes home `Cancelled`, exactly once.
    let mut a = Ring::new().unwrap();
    let pool = common::pool(1, BS);
    let file = a.register(verify_file(1, SEED)).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    a.submit_on(
        &h,
        Op::read(file, 0, pool.try_get().unwrap()),
        move |home, c| {
            g.lock()
                .unwrap()
                .push((home.is_ok(), c.error().map(|e| e.kind())));
        },
    );
    a.run_once(Some(Duration::from_millis(50))).unwrap();
    for _ in 0..10 {
        a.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(*got.lock().unwrap(), [(true, Some(ErrorKind::Cancelled))]);
    common::check_teardown(&a, &[&pool]);
}

#[test]
fn ring_set_counts_are_checked() {
    for n in [0, 1025] {
        let e = RingSet::builder().rings(n).build().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::OutOfRange { .. }), "{n}: {e}");
        let e = RingSet::builder().rings(n).spawn().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::OutOfRange { .. }), "{n}: {e}");
    }
    let one = RingSet::builder().rings(1).spawn().unwrap();
    assert_eq!(one.len(), 1);
    assert!(!one.is_empty());
    one.shutdown_now().unwrap();
}

/// The CPUs this process may run on (from /proc, independently of the crate).
fn allowed_list(status: &str) -> Vec<usize> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line");
    let mut cpus = Vec::new();
    for part in line.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn pinned_rings_run_on_one_cpu_each_round_robin() {
    let _w = watchdog("pin", 60);
    let allowed = allowed_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let n = allowed.len() + 1; // one more than CPUs: the last wraps around
    let set = RingSet::builder().rings(n).pin(true).spawn().unwrap();
    for (i, h) in set.handles().iter().enumerate() {
        let status = on_ring(h, |_| {
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        });
        assert_eq!(
            allowed_list(&status),
            [allowed[i % allowed.len()]],
            "ring {i}"
        );
    }
    set.shutdown().unwrap();
}

/// Kernel SQPOLL threads of this process.
fn sqpoll_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("iou-sqp"))
        .count()
}

#[test]
fn rings_of_a_set_share_one_sqpoll_thread() {
    let _w = watchdog("sqpoll", 60);
    let probe = Ring::new().unwrap();
    common::or_skip!(common::needs_uring(&probe, "SQPOLL"));
    drop(probe);
    let settings = RingBuilder::default()
        .sqpoll(50)
        .backend(BackendKind::Uring);
    let before = sqpoll_threads();
    // Three rings built apart start three threads (the count can tell them apart) ...
    let apart: Vec<Ring> = (0..3).map(|_| settings.clone().build().unwrap()).collect();
    let t0 = Instant::now();
    while sqpoll_threads() < before + 3 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sqpoll_threads() - before, 3, "three separate SQPOLL rings");
    drop(apart);
    let t0 = Instant::now();
    while sqpoll_threads() > before && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... a set's three rings one.
    let mut set = RingSet::builder().rings(3).ring(settings).build().unwrap();
    // A new SQPOLL thread takes its name when it first runs: wait for it.
    let t0 = Instant::now();
    while sqpoll_threads() == before && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        sqpoll_threads() - before,
        1,
        "a set shares its SQPOLL thread"
    );
    // And each ring works.
    for (i, ring) in set.iter_mut().enumerate() {
        assert!(ring.capabilities().sqpoll);
        let c = ring.submit(Op::nop().tag(i as u64)).wait().unwrap();
        assert_eq!(c.tag(), i as u64);
        common::check_teardown(ring, &[]);
    }
}

#[allow(dead_code)]
fn _types(_: Result<()>) {}

#[test]
fn dropping_a_set_cancels_what_would_never_end() {
    let _w = watchdog("set drop", 60);
    let set = RingSet::builder().rings(2).spawn().unwrap();
    let pool = common::pool(2, BS);
    let (r, _w_end) = pipe();
    let t = set.handles()[1].register(r).unwrap();
    let q = Arc::new(CompletionQueue::new(2));
    set.handles()[1].submit_to(Op::read(t, 0, pool.try_get().unwrap()), &q);
    // The read reached the ring (a later message ran after it).
    on_ring(&set.handles()[1], |_| ());
    drop(set);
    let c = q
        .pop()
        .expect("the read completed before the drop returned");
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
    drop(c);
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

#[test]
fn a_message_waiting_in_the_kernel_is_still_woken_by_requests() {
    let _w = watchdog("nested wait", 60);
    // The driver loop of a spawned ring spins between messages, and requests skip their
    // wake-up meanwhile: a message that then blocks the ring in the kernel (a nested
    // `run_once(None)` while an idle pipe read is in flight) must still be woken by the
    // next request, or it waits for ever.
    let (ring, pool) = (Ring::new().unwrap(), common::pool(2, BS));
    let (h, driver) = ring.spawn().unwrap();
    let (r, _w_end) = pipe();
    let t = h.register(r).unwrap();
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for round in 0..5 {
        flag.store(false, Ordering::SeqCst);
        let (f, p, tx) = (flag.clone(), pool.clone(), tx.clone());
        h.post(move |ring| {
            let ring = ring.unwrap();
            let id = ring.submit(Op::read(t, 0, p.try_get().unwrap())).detach();
            tx.send(()).unwrap();
            while !f.load(Ordering::SeqCst) {
                ring.run_once(None).unwrap();
            }
            ring.cancel(id);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the message started");
        std::thread::sleep(Duration::from_millis(20)); // it is blocked in the kernel now
        let f = flag.clone();
        h.post(move |_| f.store(true, Ordering::SeqCst));
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: the nested wait was never woken"));
    }
    h.shutdown();
    driver.join().unwrap().unwrap();
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

/// Completions seen: (tag, error kind).
type Got = Arc<Mutex<Vec<(u64, Option<ErrorKind>)>>>;

#[test]
fn a_hand_off_is_cancelled_before_it_starts_in_flight_or_never_after_it_completed() {
    let _w = watchdog("hand-off cancel", 60);
    let pool = common::pool(4, BS);
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = |got: &Got| {
        let got = got.clone();
        move |home: Result<&mut Ring>, c: iocomplete::Completion| {
            assert!(home.is_ok());
            got.lock()
                .unwrap()
                .push((c.tag(), c.error().map(|e| e.kind())));
        }
    };
    // Ring B is driven by this thread, so the moment each step happens is chosen here.
    let mut a = Ring::new().unwrap();
    let mut b = Ring::new().unwrap();
    let hb = b.handle().unwrap();
    let (r, _w_end) = pipe();
    let idle = b.register(r).unwrap();

    // 1. Cancelled before B looks at its inbox: it never starts.
    let h1 = a.submit_on(
        &hb,
        Op::read(idle, 0, pool.try_get().unwrap()).tag(1),
        record(&got),
    );
    a.poll().unwrap();
    h1.cancel();
    b.poll().unwrap();
    assert_eq!(b.stats().submitted, 0, "a cancelled hand-off never started");

    // 2. Cancelled in flight (an idle pipe read: only the cancel ends it).
    let h2 = a.submit_on(
        &hb,
        Op::read(idle, 0, pool.try_get().unwrap()).tag(2),
        record(&got),
    );
    a.poll().unwrap();
    b.poll().unwrap();
    assert_eq!(b.in_flight(), 1, "the read started on B");
    h2.cancel();
    h2.cancel(); // harmless
    let t0 = Instant::now();
    while b.in_flight() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the cancel never reached B"
        );
        b.run_once(Some(Duration::from_millis(5))).unwrap();
    }

    // 3. Cancelled after it completed: nothing happens.
    let h3 = a.submit_on(&hb, Op::nop().tag(3), record(&got));
    a.poll().unwrap();
    b.poll().unwrap();
    b.run_until_idle().unwrap();
    let t0 = Instant::now();
    while got.lock().unwrap().len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "completions missing: {:?}",
            got.lock().unwrap()
        );
        a.run_once(Some(Duration::from_millis(5))).unwrap();
        b.poll().unwrap();
    }
    h3.cancel();
    b.run_once(Some(Duration::from_millis(5))).unwrap();
    a.run_once(Some(Duration::from_millis(5))).unwrap();
    let mut got = got.lock().unwrap().clone();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        [
            (1, Some(ErrorKind::Cancelled)),
            (2, Some(ErrorKind::Cancelled)),
            (3, None)
        ],
        "each hand-off came home once, cancelled or not"
    );
    common::check_teardown(&b, &[]);
    common::check_teardown(&a, &[&pool]);
}
