//! The pool's per-thread magazines (issue 11): no slot stranded in a magazine — not by a
//! thread that exits, not by an idle thread, not by a dropped pool — exact free counts,
//! several pools per thread, many threads per pool, and real I/O (reads, provided-buffer
//! rings) with buffers returned on other threads.
//!
//! Magazines exist for pools of at least 16 slots (`slots / 16` per thread, at most 32).

mod common;

use common::or_skip;

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check_teardown, verify};
use iocomplete::{BufferPool, Completion, CompletionQueue, ErrorKind, Op, PoolBuf, Ring};

const BS: usize = 4096;

use common::maps::{all_back, mapped, serial, small_pool as pool};

/// Take every slot without waiting; asserts they are all distinct and that one more is
/// refused.
fn take_all(pool: &BufferPool) -> Vec<PoolBuf> {
    let n = pool.stats().total;
    let bufs: Vec<_> = (0..n)
        .map(|i| {
            pool.try_get()
                .unwrap_or_else(|e| panic!("slot {i} of {n} not found: {e}"))
        })
        .collect();
    let slots: HashSet<u32> = bufs.iter().map(|b| b.slot()).collect();
    assert_eq!(slots.len(), n, "a slot handed out twice");
    assert_eq!(pool.try_get().unwrap_err().kind(), ErrorKind::PoolExhausted);
    bufs
}

/// Write a pattern naming (thread, iteration) into the buffer, for `check`.
fn stamp(b: &mut PoolBuf, who: u64, i: u64) {
    b.clear();
    for k in 0..16u64 {
        b.extend_from_slice(&(who << 40 | i << 8 | k).to_le_bytes())
            .unwrap();
    }
    b.header_mut().copy_from_slice(&who.to_le_bytes());
}

fn check(b: &PoolBuf, who: u64, i: u64) {
    assert_eq!(b.header(), who.to_le_bytes());
    for (k, w) in b.data().chunks(8).enumerate() {
        assert_eq!(
            w,
            (who << 40 | i << 8 | k as u64).to_le_bytes(),
            "buffer shared between owners"
        );
    }
}

/// Threads that get and put (their magazines full of slots when they finish) and exit:
/// their thread-local destructors hand every slot back.
#[test]
fn exiting_threads_hand_their_magazines_back() {
    let _serial = serial();
    let pool = pool(64);
    let ts: Vec<_> = (0..4u64)
        .map(|who| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let mut a = pool.get_timeout(Duration::from_secs(10)).unwrap();
                    let mut b = pool.get_timeout(Duration::from_secs(10)).unwrap();
                    stamp(&mut a, who, i);
                    stamp(&mut b, who + 100, i);
                    check(&a, who, i);
                    check(&b, who + 100, i);
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    all_back(&pool, "at the end");
    drop(take_all(&pool));
    all_back(&pool, "at the end");
}

/// Start a thread that takes and returns `n` buffers (so they are parked in its
/// magazine), then idles until told to finish.
fn park_in_idle_thread(
    pool: &BufferPool,
    n: usize,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (parked_tx, parked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let t = std::thread::spawn(move || {
        let bufs: Vec<_> = (0..n).map(|_| p.try_get().unwrap()).collect();
        drop(bufs);
        drop(p);
        parked_tx.send(()).unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
    });
    parked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (go_tx, t)
}

/// Slots parked in an idle thread's magazine count as free and are taken — by `try_get`
/// and by a waiting `get` — when the shared list runs dry.
#[test]
fn slots_parked_in_an_idle_threads_magazine_are_not_stranded() {
    let _serial = serial();
    let pool = pool(32); // 2 per magazine
    let (go, t) = park_in_idle_thread(&pool, 2);
    let st = pool.stats();
    assert_eq!(st.free, st.total, "parked slots count as free: {st:?}");
    let all = take_all(&pool);
    drop(all);
    // Park them again, then wait for them: the waiter must find them in the other thread's
    // magazine (nobody will put anything back).
    go.send(()).unwrap();
    t.join().unwrap();
    let (go, t) = park_in_idle_thread(&pool, 2);
    let mut held = Vec::new();
    while let Ok(b) = pool.try_get() {
        held.push(b);
        if held.len() == 30 {
            break;
        }
    }
    assert_eq!(held.len(), 30);
    held.push(pool.get_timeout(Duration::from_secs(10)).unwrap());
    held.push(pool.get_timeout(Duration::from_secs(10)).unwrap());
    assert_eq!(
        pool.get_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::PoolExhausted
    );
    drop(held);
    go.send(()).unwrap();
    t.join().unwrap();
    all_back(&pool, "at the end");
}

/// A `get` blocked on an empty pool is woken by returns on another thread, whether they
/// land on the shared list or in that thread's magazine.
#[test]
fn blocked_get_wakes_on_returns_from_another_thread() {
    let _serial = serial();
    let pool = pool(32);
    for round in 0..20 {
        let mut all = take_all(&pool);
        let give: Vec<_> = all.drain(..4).collect();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(if round % 2 == 0 { 5 } else { 0 }));
            for b in give {
                drop(b);
            }
            // Stay alive (magazine not handed back by exit) until the waiter is done.
            std::thread::sleep(Duration::from_millis(50));
        });
        for _ in 0..4 {
            all.push(pool.get_timeout(Duration::from_secs(10)).unwrap());
        }
        t.join().unwrap();
        drop(all);
        all_back(&pool, &format!("round {round}"));
    }
}

/// The last handle dropped while an idle thread's magazine holds slots: the arena is
/// unmapped at once (not kept by the magazine), and the thread's exit afterwards touches
/// nothing of the dead pool.
#[test]
fn pool_dropped_while_a_magazine_holds_its_slots_is_freed() {
    let _serial = serial();
    let pool = pool(64);
    let addr = pool.try_get().unwrap().data_ptr() as usize;
    let (go, t) = park_in_idle_thread(&pool, 4);
    assert!(mapped(addr));
    drop(pool);
    assert!(!mapped(addr), "arena kept alive by a magazine");
    go.send(()).unwrap();
    t.join().unwrap();
}

/// The last handle dropped while another thread holds a buffer: the arena lives until
/// that buffer is dropped — into that thread's magazine — and is unmapped then, while the
/// thread is still alive.
#[test]
fn pool_dropped_while_a_buffer_is_out_is_freed_when_it_returns() {
    let _serial = serial();
    let pool = pool(64);
    let (to_t, from_main) = mpsc::channel::<PoolBuf>();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let t = std::thread::spawn(move || {
        // Give this thread a magazine with slots in it first.
        let warm: Vec<_> = (0..3).map(|_| p.try_get().unwrap()).collect();
        drop(warm);
        drop(p);
        let mut b = from_main.recv_timeout(Duration::from_secs(10)).unwrap();
        b.extend_from_slice(b"still mine").unwrap();
        // Wait until the pool's last handle is gone, then return the buffer.
        go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(b.data(), b"still mine");
        drop(b);
        dropped_tx.send(()).unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
    });
    let b = pool.try_get().unwrap();
    let addr = b.data_ptr() as usize;
    to_t.send(b).unwrap();
    drop(pool);
    assert!(mapped(addr), "arena freed under a live buffer");
    go_tx.send(()).unwrap();
    dropped_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        !mapped(addr),
        "arena kept alive after its last buffer returned"
    );
    go_tx.send(()).unwrap();
    t.join().unwrap();
}

/// More pools than a thread's magazine cache has entries, from several threads at once:
/// content stays with its owner and every pool ends with every slot free.
#[test]
fn several_pools_per_thread_from_many_threads() {
    let _serial = serial();
    let pools: Arc<Vec<BufferPool>> = Arc::new((0..6).map(|_| pool(32)).collect());
    let ts: Vec<_> = (0..4u64)
        .map(|who| {
            let pools = pools.clone();
            std::thread::spawn(move || {
                for i in 0..3000u64 {
                    let p = &pools[(i as usize + who as usize) % pools.len()];
                    let mut a = p.get_timeout(Duration::from_secs(10)).unwrap();
                    stamp(&mut a, who, i);
                    let mut b = p.get_timeout(Duration::from_secs(10)).unwrap();
                    stamp(&mut b, who + 100, i);
                    check(&a, who, i);
                    drop(a);
                    check(&b, who + 100, i);
                }
            })
        })
        .collect();
    // This thread uses them all too while the others run.
    for i in 0..3000u64 {
        let p = &pools[i as usize % pools.len()];
        let mut b = p.get_timeout(Duration::from_secs(10)).unwrap();
        stamp(&mut b, 99, i);
        check(&b, 99, i);
    }
    for t in ts {
        t.join().unwrap();
    }
    for p in pools.iter() {
        all_back(p, "at the end");
        drop(take_all(p));
    }
}

/// Real reads: the ring's thread reads a file into buffers of a magazine pool; a worker
/// thread checks the content and drops them (its magazine and the shared list take them
/// back); the reader waits for free buffers. Every block checked, every slot back.
#[test]
fn reads_with_buffers_returned_on_another_thread() {
    let _serial = serial();
    let (_dir, path) = common::disk_path("f");
    let blocks = 512u64;
    verify::make_file(&path, blocks * BS as u64, BS, 11);
    let mut ring = Ring::new().unwrap();
    let pool = pool(32);
    ring.register_pool(&pool);
    let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();
    let (tx, rx) = mpsc::sync_channel::<(u64, PoolBuf)>(8);
    let worker = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Ok((b, buf)) = rx.recv_timeout(Duration::from_secs(10)) {
            assert_eq!(buf.len(), BS);
            verify::check_block(buf.data(), b * BS as u64, 11).unwrap();
            n += 1;
        }
        n
    });
    let mut tickets = std::collections::VecDeque::new();
    for b in 0..blocks {
        let buf = pool.get_timeout(Duration::from_secs(10)).unwrap();
        tickets.push_back((
            b,
            ring.submit(Op::read_len(t, b * BS as u64, buf, BS))
                .ticket(),
        ));
        if tickets.len() == 8 {
            let (b, tk) = tickets.pop_front().unwrap();
            tx.send((b, ring.wait(tk).unwrap().into_result().unwrap()))
                .unwrap();
        }
    }
    for (b, tk) in tickets {
        tx.send((b, ring.wait(tk).unwrap().into_result().unwrap()))
            .unwrap();
    }
    drop(tx);
    assert_eq!(worker.join().unwrap(), blocks);
    check_teardown(&ring, &[&pool]);
}

/// A provided-buffer ring drawing on a magazine pool whose slots are all offered: the
/// reader drops the received buffers on another thread, which parks one in its magazine
/// and stays alive; the ring still tops itself up to every slot (it steals the parked
/// one), and the per-ring share is respected.
#[test]
fn provided_buffer_ring_refills_from_slots_parked_elsewhere() {
    let _serial = serial();
    let mut ring = or_skip!(common::multishot_ring());
    let pool = pool(16); // 1 slot per magazine
    let br = ring.register_buf_ring(&pool, 16).unwrap();
    assert_eq!(ring.buf_ring_offered(br), 16);
    assert_eq!(pool.stats().free, 0);
    let (rx, tx) = {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    };
    let r = ring.register(rx).unwrap();
    let w = std::fs::File::from(tx);
    let q = Arc::new(CompletionQueue::<Completion>::new(64));
    ring.submit(Op::read_multishot(r, br)).to_queue(&q);
    ring.poll().unwrap();
    let (to_worker, from_reader) = mpsc::channel::<PoolBuf>();
    let (done_tx, done_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(b) = from_reader.recv_timeout(Duration::from_secs(10)) {
            got.extend_from_slice(b.data());
        }
        done_tx.send(got).unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
    });
    let msgs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'k' + i; 200 + i as usize]).collect();
    let mut received = 0;
    for m in &msgs {
        std::io::Write::write_all(&mut &w, m).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let before = received;
        while received == before && Instant::now() < deadline {
            ring.run_once(Some(Duration::from_millis(20))).unwrap();
            while let Some(c) = q.pop() {
                assert!(c.has_more(), "multishot read ended early: {:?}", c.result());
                to_worker
                    .send(c.into_buf().expect("a buffer per completion"))
                    .unwrap();
                received += 1;
            }
        }
    }
    assert_eq!(received, msgs.len());
    drop(to_worker);
    let got = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got, msgs.concat());
    // The worker is alive and idle with (at most) one slot in its magazine; the others
    // went to the shared list. Driving the ring offers all 16 again.
    ring.poll().unwrap();
    assert_eq!(ring.buf_ring_offered(br), 16, "{:?}", pool.stats());
    drop(w);
    ring.run_until_idle().unwrap();
    while let Some(c) = q.pop() {
        assert!(!c.has_more());
    }
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    check_teardown(&ring, &[]);
    drop(ring);
    all_back(&pool, "at the end");
}
