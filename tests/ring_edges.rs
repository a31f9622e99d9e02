//! Regression tests for the ring's edges: arithmetic that must fail closed, positional
//! I/O that must never become streaming I/O, completions that must survive a drop, waits
//! that must not spin, durations too large to add to an instant, a full SQ under SQPOLL,
//! and wrong-kind targets. Each test failed before its fix.

mod common;

use common::or_skip;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fd::pipe;
use common::{check_teardown, ring_with};
use iocomplete::ring::BufPart;
use iocomplete::{BufferPool, CompletionQueue, ErrorKind, FdKind, Op, Ring};

const BS: usize = 4096;

fn pool(slots: usize) -> BufferPool {
    common::pool(slots, BS)
}

/// Run `f` on its own thread; fail (instead of hanging the suite) if it takes longer than
/// `limit`.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: panicked (its message is above)")
        }
        Err(_) => panic!("{what}: still running after {limit:?} (hang or spin)"),
    }
}

fn file_with(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn content(f: &std::fs::File) -> Vec<u8> {
    let mut f = f.try_clone().unwrap();
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Finding 1: a `BufPart` whose `start + len` overflows passed the bounds check; the
/// wrapped address pointed into the slot before it and the kernel wrote there.
#[test]
fn readv_part_whose_end_overflows_is_refused_and_writes_nowhere() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(2);
    ring.register_pool(&pool);
    let file = ring.register(file_with(&[0xAB; BS])).unwrap();
    let mut victim = pool.try_get().unwrap();
    let mut target = pool.try_get().unwrap();
    // Make `target` the slot after `victim` in the arena.
    if target.data_ptr() < victim.data_ptr() {
        std::mem::swap(&mut victim, &mut target);
    }
    victim.capacity_mut().fill(0);
    let back = target.data_ptr() as usize - victim.data_ptr() as usize;
    // start = -back (mod 2^64): the wrapped address is the victim's data.
    let part = BufPart {
        start: back.wrapping_neg(),
        len: back + BS,
    };
    assert!(
        part.start.checked_add(part.len).is_none(),
        "test needs an overflowing part"
    );
    let c = ring
        .submit(Op::readv_parts(file, 0, vec![target], vec![part]))
        .wait()
        .unwrap();
    assert!(
        common::invalid_input(&c),
        "overflowing part accepted: {c:?}"
    );
    victim.set_len(BS).unwrap();
    assert!(
        victim.data().iter().all(|&b| b == 0),
        "the kernel wrote into another live buffer"
    );
    drop(c);
    // The same for a write part (read side of the slot) and a part at usize::MAX.
    let mut w = pool.try_get().unwrap();
    w.extend_from_slice(&[1; 16]).unwrap();
    let c = ring
        .submit(Op::writev_parts(
            file,
            0,
            vec![w.into()],
            vec![BufPart {
                start: usize::MAX,
                len: 2,
            }],
        ))
        .wait()
        .unwrap();
    assert!(common::invalid_input(&c));
    drop((c, victim));
    check_teardown(&ring, &[&pool]);
}

/// Finding 2: offset `u64::MAX` is `-1` to io_uring ("the current file position"): a read
/// read at the position and a write overwrote the file's start, both returning Ok.
#[test]
fn offsets_beyond_i64_max_are_refused_before_the_kernel() {
    let original: Vec<u8> = (0..BS).map(|i| (i % 251) as u8).collect();
    let f = file_with(&original);
    let pool = pool(4);
    let (mut ring, t) = ring_with(&pool, f.try_clone().unwrap());
    let bad = [u64::MAX, u64::MAX - 1, i64::MAX as u64 + 1, 1 << 63];
    for off in bad {
        let mut buf = pool.try_get().unwrap();
        buf.extend_from_slice(b"CLOBBER!").unwrap();
        let before = ring.stats().enters;
        let ops = [
            Op::read(t, off, pool.try_get().unwrap()),
            Op::write(t, off, buf),
            Op::readv(
                t,
                off,
                vec![{
                    let mut b = pool.try_get().unwrap();
                    b.set_len(16).unwrap();
                    b
                }],
            ),
        ];
        for op in ops {
            let c = ring.submit(op).wait().unwrap();
            assert!(
                matches!(
                    c.error().map(|e| e.kind()),
                    Some(ErrorKind::OffsetOutOfRange { .. })
                ),
                "offset {off:#x}: {c:?}"
            );
        }
        assert_eq!(
            ring.stats().enters,
            before,
            "offset {off:#x} reached the kernel"
        );
    }
    // An end past i64::MAX is refused too: offset i64::MAX - 1 with 16 bytes.
    let mut buf = pool.try_get().unwrap();
    buf.extend_from_slice(&[9; 16]).unwrap();
    let c = ring
        .submit(Op::write(t, i64::MAX as u64 - 1, buf))
        .wait()
        .unwrap();
    assert!(
        matches!(
            c.error().map(|e| e.kind()),
            Some(ErrorKind::OffsetOutOfRange { .. })
        ),
        "{c:?}"
    );
    drop(c);
    assert_eq!(content(&f), original, "the file changed");
    // A stream ignores the offset: u64::MAX is fine there.
    let (rx, tx) = pipe();
    let prx = ring.register(rx).unwrap();
    let mut w = std::fs::File::from(tx);
    w.write_all(b"abc").unwrap();
    let c = ring
        .submit(Op::read(prx, u64::MAX, pool.try_get().unwrap()))
        .wait()
        .unwrap();
    assert_eq!(c.into_result().unwrap().data(), b"abc");
    check_teardown(&ring, &[&pool]);
}

/// Finding 3: a ring dropped while the completion queue it delivers to is full lost the
/// completions waiting for room.
#[test]
fn ring_dropped_with_a_full_queue_delivers_every_completion() {
    let pool = pool(8);
    let q = Arc::new(CompletionQueue::new(2));
    let file = file_with(&[7; 8 * BS]);
    {
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let t = ring.register(file).unwrap();
        for i in 0..8u64 {
            ring.submit(Op::read(t, i * BS as u64, pool.try_get().unwrap()).tag(i))
                .to_queue(&q);
        }
        for i in 8..40u64 {
            ring.submit(Op::nop().tag(i)).to_queue(&q);
        }
        ring.poll().unwrap();
        // Dropped with most completions unable to fit in the queue.
    }
    let mut tags = Vec::new();
    while let Some(c) = q.pop() {
        if c.tag() < 8 {
            tags.push(c.tag());
            let b = c.into_result().unwrap();
            assert_eq!(b.len(), BS);
            assert!(b.data().iter().all(|&x| x == 7));
        } else {
            assert_eq!(c.result(), Ok(0));
            tags.push(c.tag());
        }
    }
    tags.sort();
    assert_eq!(
        tags,
        (0..40).collect::<Vec<u64>>(),
        "completions lost at drop"
    );
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

/// Finding 3 (handles): operations a handle sent that are still in the inbox when the
/// ring is dropped reach a full queue anyway, without the sender spinning.
#[test]
fn handle_submissions_after_the_ring_is_gone_reach_a_full_queue_without_spinning() {
    let q = Arc::new(CompletionQueue::new(1));
    let mut ring = Ring::new().unwrap();
    let h = ring.handle().unwrap();
    ring.submit(Op::nop().tag(0)).to_queue(&q);
    ring.run_until_idle().unwrap();
    assert_eq!(q.len(), 1, "the queue is full");
    h.submit_to(Op::nop().tag(1), &q); // in the inbox
    drop(ring);
    let h2 = h.clone();
    let q2 = q.clone();
    within(
        Duration::from_secs(10),
        "submit_to after the ring is gone",
        move || {
            for i in 2..10 {
                h2.submit_to(Op::nop().tag(i), &q2);
            }
        },
    );
    let mut tags = Vec::new();
    while let Some(c) = q.pop() {
        tags.push(c.tag());
    }
    tags.sort();
    assert_eq!(tags, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

/// Finding 4: `run_until_idle` spun forever when completions waited for room in a full
/// queue that nobody drained.
#[test]
fn run_until_idle_returns_with_a_full_undrained_queue() {
    let q = Arc::new(CompletionQueue::new(1));
    let q2 = q.clone();
    let ring = within(Duration::from_secs(10), "run_until_idle", move || {
        let mut ring = Ring::new().unwrap();
        for i in 0..5u64 {
            ring.submit(Op::nop().tag(i)).to_queue(&q2);
        }
        ring.run_until_idle().unwrap();
        ring
    });
    let mut tags = Vec::new();
    while let Some(c) = q.pop() {
        tags.push(c.tag());
    }
    assert_eq!(tags, [0, 1, 2, 3, 4], "every completion, in order");
    check_teardown(&ring, &[]);
}

/// Finding 5: `Instant::now() + Duration::MAX` panicked in every waiting call.
#[test]
fn huge_waits_in_the_pool_and_the_queue_mean_never_not_panic() {
    for huge in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(1 << 63),
    ] {
        let pool = pool(1);
        // A free slot: returned at once.
        let b = pool.get_timeout(huge).unwrap();
        // None free: returned when another thread gives one back.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(b);
        });
        let p2 = pool.clone();
        let b = within(Duration::from_secs(10), "get_timeout(huge)", move || {
            p2.get_timeout(huge)
        });
        t.join().unwrap();
        drop(b.unwrap());

        let q = Arc::new(CompletionQueue::new(1));
        assert_eq!(q.push_timeout(1u32, huge), Ok(()));
        assert_eq!(q.pop_timeout(huge), Some(1));
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q2.push(2).unwrap();
        });
        let q3 = q.clone();
        assert_eq!(
            within(Duration::from_secs(10), "pop_timeout(huge)", move || q3
                .pop_timeout(huge)),
            Some(2)
        );
        t.join().unwrap();
        let mut out = Vec::new();
        q.push(3).unwrap();
        assert_eq!(q.pop_batch_timeout(&mut out, 4, huge), 1);
        q.push(4).unwrap();
        let q4 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q4.pop()
        });
        let q5 = q.clone();
        assert_eq!(
            within(Duration::from_secs(10), "push_timeout(huge)", move || q5
                .push_timeout(5, huge)),
            Ok(())
        );
        assert_eq!(t.join().unwrap(), Some(4));
        assert_eq!(q.pop(), Some(5));
    }
}

/// Finding 5: a deadline of `Duration::MAX` (or >= 2^63 s) overflowed the kernel's signed
/// seconds and the operation timed out at once; `Op::timeout(MAX)` failed `EINVAL`.
#[test]
fn huge_deadlines_and_timeouts_mean_never() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(4);
    ring.register_pool(&pool);
    let (rx, tx) = pipe();
    let t = ring.register(rx).unwrap();
    let mut w = std::fs::File::from(tx);
    for huge in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(1 << 63),
        Duration::from_secs(i64::MAX as u64),
    ] {
        let tk = ring
            .submit(Op::read(t, 0, pool.try_get().unwrap()).deadline(huge))
            .ticket();
        ring.poll().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ring.poll().unwrap();
        assert!(!ring.is_done(&tk), "deadline {huge:?} fired at once");
        w.write_all(b"late").unwrap();
        let c = ring.wait(tk).unwrap();
        assert_eq!(
            c.into_result().unwrap().data(),
            b"late",
            "deadline {huge:?}"
        );

        let tk = ring.submit(Op::timeout(huge)).ticket();
        ring.poll().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ring.poll().unwrap();
        assert!(!ring.is_done(&tk), "timeout {huge:?} completed at once");
        assert!(ring.cancel(tk.id()));
        let c = ring.wait(tk).unwrap();
        assert_eq!(
            c.error().map(|e| e.kind()),
            Some(ErrorKind::Cancelled),
            "{huge:?}"
        );
    }
    check_teardown(&ring, &[&pool]);
}

/// Finding 5: `run_once(Some(Duration::MAX))` returned at once instead of waiting for the
/// completion in flight.
#[test]
fn run_once_with_a_huge_timeout_waits_for_a_completion() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(2);
    let (rx, tx) = pipe();
    let t = ring.register(rx).unwrap();
    let tk = ring
        .submit(Op::read(t, 0, pool.try_get().unwrap()))
        .ticket();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::File::from(tx).write_all(b"x").unwrap();
    });
    let mut n = 0;
    for _ in 0..2 {
        // A spurious wake-up may return 0 once; two calls must see the completion.
        n += ring.run_once(Some(Duration::MAX)).unwrap();
        if n > 0 {
            break;
        }
    }
    assert_eq!(n, 1, "run_once(MAX) returned without the completion");
    writer.join().unwrap();
    assert_eq!(ring.wait(tk).unwrap().into_result().unwrap().data(), b"x");
    check_teardown(&ring, &[&pool]);
}

/// Finding 6: with SQPOLL, a briefly full SQ failed operations with `EBUSY` instead of
/// waiting for the kernel thread to make room.
#[test]
fn sqpoll_ring_with_a_full_sq_completes_every_op() {
    for (entries, ops) in [(2u32, 200u64), (256, 5000)] {
        let mut ring = Ring::builder().entries(entries).sqpoll(50).build().unwrap();
        for i in 0..ops {
            ring.submit(Op::nop().tag(i)).to_ring();
        }
        ring.run_until_idle().unwrap();
        let mut n = 0;
        while let Some(c) = ring.pop_completion() {
            assert_eq!(
                c.result(),
                Ok(0),
                "op {} of {ops} (entries {entries})",
                c.tag()
            );
            n += 1;
        }
        assert_eq!(n, ops);
        check_teardown(&ring, &[]);
    }
}

/// Finding 13: transfers on a directory or an eventfd reached the kernel; they are
/// refused from the kind read at registration. Poll and fsync stay allowed where they
/// make sense (fsync of a directory makes its entries durable).
#[test]
fn wrong_kind_targets_are_refused_before_the_kernel() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(4);
    let dir = tempfile::tempdir().unwrap();
    let d = ring
        .register(std::fs::File::open(dir.path()).unwrap())
        .unwrap();
    assert_eq!(ring.info(d).unwrap().kind, iocomplete::FdKind::Directory);
    // SAFETY: eventfd takes no pointers; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let e = ring.register(unsafe { OwnedFd::from_raw_fd(efd) }).unwrap();
    let before = ring.stats().enters;
    for t in [d, e] {
        let mut w = pool.try_get().unwrap();
        w.extend_from_slice(&1u64.to_ne_bytes()).unwrap();
        for op in [
            Op::read(t, 0, pool.try_get().unwrap()),
            Op::write(t, 0, w),
            Op::readv(
                t,
                0,
                vec![{
                    let mut b = pool.try_get().unwrap();
                    b.set_len(8).unwrap();
                    b
                }],
            ),
        ] {
            let c = ring.submit(op).wait().unwrap();
            assert!(
                matches!(
                    c.error().map(|e| e.kind()),
                    Some(ErrorKind::WrongTargetKind {
                        have: FdKind::Directory | FdKind::Other,
                        ..
                    })
                ),
                "{c:?}"
            );
        }
    }
    assert_eq!(
        ring.stats().enters,
        before,
        "a wrong-kind transfer reached the kernel"
    );
    assert_eq!(
        ring.submit(Op::fsync(d, false)).wait().unwrap().result(),
        Ok(0)
    );
    let c = ring
        .submit(Op::poll(e, libc::POLLOUT as u32))
        .wait()
        .unwrap();
    assert!(c.is_ok(), "{c:?}");
    check_teardown(&ring, &[&pool]);
}

/// Finding 3 (the last route): a ring dropped while a device never answers gave up on its
/// reads after the grace period without telling anyone. Now each route gets one
/// `Abandoned` completion without buffers, and the slots stay leaked (the kernel may
/// still write them) instead of returning to the pool.
#[test]
fn ring_dropped_while_the_device_never_answers_abandons_each_op_once() {
    use common::fuse::{FileSpec, FuseMount};
    let spec = FileSpec::blocks(16, 51);
    let fs = or_skip!(FuseMount::holding(spec));
    let pool = pool(8);
    let q = Arc::new(CompletionQueue::new(2));
    let fut;
    {
        let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
        for b in 0..4u64 {
            ring.submit(Op::read(t, b * BS as u64, pool.try_get().unwrap()).tag(b))
                .to_queue(&q);
        }
        fut = ring
            .submit(Op::read(t, 4 * BS as u64, pool.try_get().unwrap()).tag(4))
            .future();
        ring.poll().unwrap();
        assert!(fs.ctl().wait_outstanding(5, Duration::from_secs(5)));
        let started = Instant::now();
        drop(ring);
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "gave up before the grace period"
        );
    }
    let mut tags = Vec::new();
    while let Some(c) = q.pop() {
        assert_eq!(
            c.error().map(|e| e.kind()),
            Some(ErrorKind::Abandoned),
            "{c:?}"
        );
        assert!(matches!(c.bufs(), iocomplete::Bufs::None));
        tags.push(c.tag());
    }
    tags.sort();
    assert_eq!(tags, [0, 1, 2, 3]);
    let c = within(Duration::from_secs(5), "the abandoned future", move || {
        common::block_on(fut)
    });
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Abandoned));
    assert_eq!(
        pool.stats().free,
        3,
        "a slot the kernel may write was reused"
    );
    fs.ctl().release();
}

/// The explicit way to write at the file position (what offset `-1` used to do by
/// accident): `Op::write_cursor` appends after what is there and advances the position,
/// so the next writer of a shared descriptor (a shell's `> out`) continues after it.
#[test]
fn write_cursor_writes_at_the_file_position_and_advances_it() {
    let mut f = file_with(b"head:");
    let mut ring = Ring::new().unwrap();
    let pool = pool(2);
    let t = ring.register(f.try_clone().unwrap()).unwrap();
    for part in [&b"one,"[..], b"two"] {
        let mut b = pool.try_get().unwrap();
        b.extend_from_slice(part).unwrap();
        let c = ring.submit(Op::write_cursor(t, b)).wait().unwrap();
        assert_eq!(c.result(), Ok(part.len()));
    }
    // The shared position moved: a plain write(2) on the same file continues after it.
    f.write_all(b"!").unwrap();
    assert_eq!(content(&f), b"head:one,two!");
    check_teardown(&ring, &[&pool]);
}

/// Found by the method (a handle after its owner): `OpId` carried no ring, and two rings
/// number their slots alike, so `ring_b.cancel(id_from_ring_a)` cancelled ring B's own
/// operation in the same slot and generation.
#[test]
fn an_op_id_from_another_ring_cancels_nothing() {
    let pool = pool(2);
    let mut a = Ring::new().unwrap();
    let mut b = Ring::new().unwrap();
    let (rxa, txa) = pipe();
    let (rxb, txb) = pipe();
    let ta = a.register(rxa).unwrap();
    let tb = b.register(rxb).unwrap();
    let tka = a.submit(Op::read(ta, 0, pool.try_get().unwrap())).ticket();
    let tkb = b.submit(Op::read(tb, 0, pool.try_get().unwrap())).ticket();
    a.poll().unwrap();
    b.poll().unwrap();
    assert!(!b.cancel(tka.id()), "ring B accepted ring A's id");
    b.poll().unwrap();
    std::fs::File::from(txb).write_all(b"b").unwrap();
    let c = b.wait(tkb).unwrap();
    assert_eq!(
        c.into_result().unwrap().data(),
        b"b",
        "ring B's read was cancelled"
    );
    assert!(a.cancel(tka.id()));
    assert_eq!(
        a.wait(tka).unwrap().error().map(|e| e.kind()),
        Some(ErrorKind::Cancelled)
    );
    drop(txa);
    check_teardown(&a, &[]);
    check_teardown(&b, &[&pool]);
}

/// Found by the method: `RingBuilder::ops(usize::MAX)` panicked ("capacity overflow")
/// instead of refusing the value.
#[test]
fn ring_builder_refuses_impossible_sizes_with_typed_errors() {
    for b in [
        Ring::builder().ops(usize::MAX),
        Ring::builder().ops((1 << 24) + 1),
        Ring::builder().entries(0),
        Ring::builder().entries(32769),
        Ring::builder().entries(u32::MAX),
    ] {
        let e = std::panic::catch_unwind(|| b.build()).expect("build panicked");
        assert!(matches!(
            e.map(|_| ()).unwrap_err().kind(),
            ErrorKind::OutOfRange {
                what: "op-table reservation" | "ring entries",
                ..
            }
        ));
    }
    let mut ring = Ring::builder()
        .ops(0)
        .entries(1)
        .cq_entries(u32::MAX)
        .files(0)
        .buffers(0)
        .build()
        .unwrap();
    assert_eq!(ring.submit(Op::nop()).wait().unwrap().result(), Ok(0));
}

/// Found by the method: an `O_PATH` descriptor reads as `O_RDONLY`, so reads on it were
/// sent to the kernel (EBADF); it is neither readable nor writable.
#[test]
fn o_path_targets_are_refused_before_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"data").unwrap();
    let f = common::open_o_path(&p);
    let mut ring = Ring::new().unwrap();
    let pool = pool(1);
    let t = ring.register(f).unwrap();
    let info = ring.info(t).unwrap();
    assert!(!info.readable && !info.writable, "{info:?}");
    let before = ring.stats().enters;
    let c = ring
        .submit(Op::read(t, 0, pool.try_get().unwrap()))
        .wait()
        .unwrap();
    assert!(
        matches!(c.error().map(|e| e.kind()), Some(ErrorKind::NotReadable)),
        "{c:?}"
    );
    assert_eq!(ring.stats().enters, before);
    drop(c);
    check_teardown(&ring, &[&pool]);
}

/// Found by the method: a positional write on a file opened `O_APPEND` landed at the end
/// of the file whatever its offset, and returned Ok. Refused before the kernel;
/// `write_cursor` is the way to append.
#[test]
fn positional_writes_on_an_append_only_file_are_refused() {
    let (_dir, p) = common::disk_path("log");
    std::fs::write(&p, b"0123456789").unwrap();
    let f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    let mut ring = Ring::new().unwrap();
    let pool = pool(4);
    let t = ring.register(f).unwrap();
    let before = ring.stats().enters;
    let mut a = pool.try_get().unwrap();
    a.extend_from_slice(b"AB").unwrap();
    let mut b = pool.try_get().unwrap();
    b.extend_from_slice(b"CD").unwrap();
    for op in [Op::write(t, 0, a), Op::writev(t, 0, vec![b.into()])] {
        let c = ring.submit(op).wait().unwrap();
        assert!(
            matches!(c.error().map(|e| e.kind()), Some(ErrorKind::AppendOnly)),
            "{c:?}"
        );
    }
    assert_eq!(ring.stats().enters, before);
    let mut e = pool.try_get().unwrap();
    e.extend_from_slice(b"EF").unwrap();
    assert_eq!(
        ring.submit(Op::write_cursor(t, e)).wait().unwrap().result(),
        Ok(2)
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"0123456789EF");
    check_teardown(&ring, &[&pool]);
}

/// Found by the API-sequence harness: a split or DMA deadline that no kernel timer can
/// reach (`from_secs(i64::MAX)`: the kernel clamps it to `KTIME_MAX`, it never fires) armed
/// a timer anyway. A driver dropped mid-flight left that timer in the ring for good: the
/// ring never became idle again and `run_until_idle` never returned. Such a deadline means
/// none, like the durations of 2^63 s and more.
#[test]
fn split_and_dma_deadlines_no_timer_can_reach_arm_no_timer() {
    use iocomplete::dma::SgList;
    use iocomplete::split::{Job, SplitConfig};
    use iocomplete::Direction;
    use iocomplete::{DmaDriver, Driver, SplitDriver};
    let never = [
        Duration::from_secs(i64::MAX as u64),
        // KTIME_MAX / 10^9: from here on the kernel clamps to KTIME_MAX.
        Duration::from_secs(9_223_372_036),
    ];
    for d in never {
        for dma in [false, true] {
            let pool = pool(8);
            let mut ring = Ring::new().unwrap();
            let t = ring.register(file_with(&[3; 8 * BS])).unwrap();
            if dma {
                let mut sg = SgList::new();
                sg.push_extent(&pool, 0, 4 * BS as u64).unwrap();
                let mut drv = DmaDriver::builder(t, sg, Direction::Read)
                    .deadline(d)
                    .build(&mut ring)
                    .map_err(|r| r.error())
                    .unwrap();
                assert!(drv.process(&mut ring).unwrap().is_none());
                drop(drv);
            } else {
                let job = Job::Read {
                    src: t,
                    offset: 0,
                    len: 8 * BS as u64,
                };
                let cfg = SplitConfig::new().deadline(d);
                let mut drv = SplitDriver::new(&mut ring, &pool, job, cfg).unwrap();
                assert!(drv.process(&mut ring).unwrap().is_none());
                drop(drv);
            }
            // The dropped driver's transfers complete; nothing may stay in the ring.
            let end = Instant::now() + Duration::from_secs(5);
            while ring.in_flight() > 0 && Instant::now() < end {
                ring.run_once(Some(Duration::from_millis(10))).unwrap();
            }
            assert_eq!(
                ring.in_flight(),
                0,
                "{} dropped with a deadline of {d:?}: an op stays in the ring for good",
                if dma { "dma" } else { "split" }
            );
            check_teardown(&ring, &[&pool]);
        }
    }
}

/// Found by the API-sequence harness: `reap` copied a batch of CQEs out of the CQ, then a
/// completion handler reaped again — starting a `RingHandle`'s submissions on its wake-up
/// CQE with a full SQPOLL SQ waits for room and reaps meanwhile — and that nested reap
/// routed *later* CQEs before the rest of the batch. A multishot read's buffers reached
/// their queue out of order (stream bytes reordered), and its MORE completions that came
/// after its final one in this order were dropped as stale (bytes lost). Every CQE is now
/// routed in the kernel's order, nested reaps included.
#[test]
fn completions_keep_the_kernel_order_when_a_handler_reaps_again() {
    within(Duration::from_secs(120), "nested reaps", || {
        let mut ring = Ring::builder().entries(2).sqpoll(10).build().unwrap();
        if common::needs_uring(&ring, "multishot reads, provided-buffer rings").is_none() {
            return;
        }
        let caps = *ring.capabilities();
        if !caps.read_multishot || !caps.buf_ring {
            common::skip("no multishot reads or provided-buffer rings");
            return;
        }
        let pool = pool(32);
        let br = ring.register_buf_ring(&pool, 16).unwrap();
        let (rx, tx) = pipe();
        let t = ring.register(rx).unwrap();
        let data: Arc<Vec<u8>> = Arc::new(
            (0..1024 * 1024u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        );
        let d2 = data.clone();
        let writer = std::thread::spawn(move || {
            let mut tx = std::fs::File::from(tx);
            let mut at = 0;
            let mut k = 0usize;
            while at < d2.len() {
                k += 1;
                let n = (1 + (k * 7919) % 9000).min(d2.len() - at);
                tx.write_all(&d2[at..at + n]).unwrap();
                at += n;
                if k % 2 == 0 {
                    std::thread::sleep(Duration::from_micros((k % 300) as u64));
                }
            }
        });
        // A handle submitting bursts of nops: their wake-ups start several operations
        // at once from inside the reaping, with an SQ of two entries.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hq = Arc::new(CompletionQueue::new(1 << 16));
        let h = ring.handle().unwrap();
        let (stop2, hq2) = (stop.clone(), hq.clone());
        let handle_thread = std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..5 {
                    h.submit_to(Op::nop(), &hq2);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        let q = Arc::new(CompletionQueue::new(1 << 16));
        ring.submit(Op::read_multishot(t, br)).to_queue(&q);
        let mut got = Vec::with_capacity(data.len());
        let mut eof = false;
        while !eof {
            ring.run_once(Some(Duration::from_millis(1))).unwrap();
            while hq.pop().is_some() {}
            while let Some(mut c) = q.pop() {
                match c.result() {
                    Ok(0) => eof = !c.has_more(),
                    Ok(n) => match c.take_bufs() {
                        iocomplete::Bufs::Pool(b) => {
                            assert_eq!(b.len(), n);
                            got.extend_from_slice(b.data());
                        }
                        other => panic!("multishot data without its buffer: {other:?}"),
                    },
                    // The buffer ring ran dry (re-armed below).
                    Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "{e:?}"),
                }
                if !c.has_more() && !eof {
                    ring.submit(Op::read_multishot(t, br)).to_queue(&q);
                }
            }
            assert_eq!(ring.stats().stale_cqes, 0, "CQEs dropped as stale");
            if let Some(i) = (0..got.len()).find(|&i| got[i] != data[i]) {
                panic!(
                    "stream bytes out of order from byte {i} of {} received",
                    got.len()
                );
            }
        }
        assert_eq!(got.len(), data.len(), "stream bytes lost");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        handle_thread.join().unwrap();
        writer.join().unwrap();
        ring.run_until_idle().unwrap();
        while hq.pop().is_some() {}
        ring.unregister_buf_ring(br).unwrap();
        check_teardown(&ring, &[&pool]);
    });
}

/// Found while extending the API-sequence harness: `fsync` and `poll` of an `O_PATH`
/// descriptor (open for neither reading nor writing) were sent to the kernel, which failed
/// them with `EBADF`. Refused before the kernel like the transfers on it.
#[test]
fn fsync_and_poll_of_an_o_path_target_are_refused_before_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"data").unwrap();
    let mut ring = Ring::new().unwrap();
    for path in [p.as_path(), dir.path()] {
        let f = common::open_o_path(path);
        let t = ring.register(f).unwrap();
        let before = ring.stats().enters;
        for op in [
            Op::fsync(t, false),
            Op::fsync(t, true),
            Op::poll(t, libc::POLLIN as u32),
        ] {
            let c = ring.submit(op).wait().unwrap();
            assert!(common::invalid_input(&c), "{}: {c:?}", path.display());
        }
        assert_eq!(ring.stats().enters, before, "{}", path.display());
    }
    // The same file and directory opened normally: fsync works.
    for path in [p.as_path(), dir.path()] {
        let t = ring.register(std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!(
            ring.submit(Op::fsync(t, false)).wait().unwrap().result(),
            Ok(0)
        );
    }
    check_teardown(&ring, &[]);
}

/// Found by an outside attack: `O_APPEND` set on the open file *after* registration
/// (through the caller's descriptor sharing it, `register_dup`) is invisible to the
/// registration-time check, and a positional write landed at the end of the file with
/// `Ok`. Positional writes now carry `RWF_NOAPPEND` (Linux 6.9), so they land at their
/// offset whatever the open file's flags became.
#[test]
fn positional_writes_land_at_their_offset_after_o_append_is_set_behind_the_ring() {
    use std::os::fd::AsRawFd;
    let mut ring = Ring::new().unwrap();
    or_skip!(common::needs(
        ring.capabilities().rwf_noappend,
        "kernel without RWF_NOAPPEND (Linux 6.9)"
    ));
    let f = file_with(&[0u8; 2 * BS]);
    let pool = pool(4);
    ring.register_pool(&pool);
    let t = ring.register_dup(&f).unwrap();
    // SAFETY: F_SETFL with valid flags on our own descriptor.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) };
    assert_eq!(r, 0);
    let mut a = pool.try_get().unwrap();
    a.extend_from_slice(&[0xAA; 100]).unwrap();
    assert_eq!(
        ring.submit(Op::write(t, 0, a)).wait().unwrap().result(),
        Ok(100)
    );
    let mut b = pool.try_get().unwrap();
    b.extend_from_slice(&[0xBB; 50]).unwrap();
    assert_eq!(
        ring.submit(Op::writev(t, BS as u64, vec![b.into()]))
            .wait()
            .unwrap()
            .result(),
        Ok(50)
    );
    let got = content(&f);
    assert_eq!(got.len(), 2 * BS, "a positional write was appended");
    assert!(
        got[..100].iter().all(|&x| x == 0xAA),
        "the write did not land at 0"
    );
    assert!(
        got[BS..BS + 50].iter().all(|&x| x == 0xBB),
        "the writev did not land at its offset"
    );
    check_teardown(&ring, &[&pool]);
}

/// Found by an outside attack: a single-issuer ring driven on one thread and then moved to
/// another answered every call with the kernel's bare `Os(EEXIST)`. The ring now refuses
/// the other thread with a typed error before the kernel; its first thread can go on.
#[test]
fn a_single_issuer_ring_refuses_a_second_thread_with_a_typed_error() {
    let mut ring = Ring::builder().single_issuer(true).build().unwrap();
    or_skip!(common::needs_uring(
        &ring,
        "the kernel's single-issuer rule"
    ));
    assert_eq!(ring.submit(Op::nop().tag(1)).wait().unwrap().tag(), 1);
    let ring = std::thread::spawn(move || {
        let mut ring = ring;
        let enters = ring.stats().enters;
        let e = ring.run_once(Some(Duration::from_millis(1))).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e:?}");
        assert_eq!(ring.stats().enters, enters, "reached the kernel");
        ring
    })
    .join()
    .unwrap();
    let mut ring = ring;
    assert_eq!(ring.submit(Op::nop().tag(2)).wait().unwrap().tag(), 2);
    check_teardown(&ring, &[]);
}
