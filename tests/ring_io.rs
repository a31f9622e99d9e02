//! The ring against real files, O_DIRECT files, a loop block device, pipes and sockets.
//! Every test verifies content and checks the teardown invariants.

mod common;

use common::or_skip;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fd::{pipe, raw_pty, socketpair};
use common::{check_teardown, ring_with, verify, LoopDev};
use iocomplete::{
    BufferPool, BufferRegistration, Completion, CompletionQueue, ErrorKind, FdKind, Op, Ring,
    Target,
};

const BS: usize = 4096;

use common::pool_hdr as pool;

/// Write `blocks` verify blocks through the ring (several in flight), fsync, read them
/// back through the ring (several in flight, header-offset buffers) and check each one.
fn round_trip(ring: &mut Ring, pool: &BufferPool, t: Target, blocks: u64, seed: u64) {
    let mut tickets = Vec::new();
    let mut wtickets = Vec::new();
    for b in 0..blocks {
        let mut buf = pool.get_timeout(Duration::from_secs(5)).unwrap();
        buf.set_len(BS).unwrap();
        verify::fill_block(buf.data_mut(), b * BS as u64, seed);
        wtickets.push(ring.submit(Op::write(t, b * BS as u64, buf)).ticket());
        if wtickets.len() == 8 {
            for tk in wtickets.drain(..) {
                assert_eq!(ring.wait(tk).unwrap().result(), Ok(BS));
            }
        }
    }
    for tk in wtickets.drain(..) {
        assert_eq!(ring.wait(tk).unwrap().result(), Ok(BS));
    }
    assert!(ring.submit(Op::fsync(t, false)).wait().unwrap().is_ok());
    for first in (0..blocks).step_by(8) {
        for b in first..(first + 8).min(blocks) {
            let mut buf = pool.try_get().unwrap();
            buf.header_mut().fill(0xAB);
            tickets.push((
                b,
                ring.submit(Op::read_len(t, b * BS as u64, buf, BS))
                    .ticket(),
            ));
        }
        for (b, tk) in tickets.drain(..).rev() {
            let buf = ring.wait(tk).unwrap().into_result().unwrap();
            assert_eq!(buf.len(), BS);
            assert!(
                buf.header().iter().all(|&x| x == 0xAB),
                "header touched by the kernel"
            );
            verify::check_block(buf.data(), b * BS as u64, seed).unwrap();
        }
    }
}

#[test]
fn buffered_file_round_trip() {
    let dir = common::disk_dir();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("f"))
        .unwrap();
    let mut ring = Ring::new().unwrap();
    let pool = pool(16, BS, 32);
    match ring.backend() {
        iocomplete::BackendKind::Uring => {
            assert_eq!(ring.register_pool(&pool), BufferRegistration::Fixed)
        }
        // The thread-pool backend has no registered buffers: it says so, typed.
        _ => assert!(matches!(
            ring.register_pool(&pool),
            BufferRegistration::Unregistered(e) if matches!(e.kind(), iocomplete::ErrorKind::Unsupported { .. })
        )),
    }
    let t = ring.register(f).unwrap();
    round_trip(&mut ring, &pool, t, 64, 1);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn unregistered_pool_gives_same_results() {
    let dir = common::disk_dir();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("f"))
        .unwrap();
    let mut ring = Ring::builder().buffers(0).files(0).build().unwrap();
    let pool = pool(8, BS, 0);
    assert!(matches!(
        ring.register_pool(&pool),
        BufferRegistration::Unregistered(_)
    ));
    let t = ring.register(f).unwrap();
    round_trip(&mut ring, &pool, t, 16, 2);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn direct_file_round_trip() {
    let dir = common::disk_dir();
    let f = common::open(&dir.path().join("d"), true, true);
    let pool = pool(16, BS, 16);
    let (mut ring, t) = ring_with(&pool, f);
    let info = ring.info(t).unwrap();
    assert!(info.direct && info.offset_align >= 512, "{info:?}");
    round_trip(&mut ring, &pool, t, 64, 3);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn loop_block_device_round_trip() {
    let dev = or_skip!(LoopDev::new(1 << 20, None));
    let f = dev.open(true);
    let pool = pool(16, BS, 64);
    let (mut ring, t) = ring_with(&pool, f);
    let info = ring.info(t).unwrap();
    assert_eq!(info.kind, iocomplete::FdKind::BlockDevice);
    assert_eq!(info.size, 1 << 20);
    round_trip(&mut ring, &pool, t, 256, 4);
    check_teardown(&ring, &[&pool]);
}

/// Stream round trip: the writer side sends verify blocks, the reader side reassembles
/// them (streams may return short reads) and checks every block.
fn stream_round_trip(rx: OwnedFd, tx: OwnedFd) {
    let pool = pool(8, BS, 8);
    let (mut ring, r) = ring_with(&pool, rx);
    let w = ring.register(tx).unwrap();
    let total = 32 * BS;
    let mut got = Vec::with_capacity(total);
    let mut sent = 0;
    while got.len() < total {
        if sent < total {
            let mut buf = pool.try_get().unwrap();
            buf.set_len(BS).unwrap();
            verify::fill_block(buf.data_mut(), sent as u64, 5);
            let c = ring.submit(Op::write(w, 0, buf)).wait().unwrap();
            sent += c.result().unwrap();
            assert_eq!(c.bytes(), BS);
        }
        let c = ring
            .submit(Op::read(r, 0, pool.try_get().unwrap()))
            .wait()
            .unwrap();
        got.extend_from_slice(c.into_result().unwrap().data());
    }
    verify::check_range(&got, BS, 5, 0).unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn pipe_round_trip() {
    let (rx, tx) = pipe();
    stream_round_trip(rx, tx);
}

#[test]
fn socketpair_round_trip() {
    let (a, b) = socketpair();
    stream_round_trip(a, b);
}

#[test]
fn cancel_pending_pipe_read_completes_once_as_cancelled() {
    let (rx, _tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(2, BS, 0);
    let r = ring.register(rx).unwrap();
    let tk = ring
        .submit(Op::read(r, 0, pool.try_get().unwrap()))
        .ticket();
    ring.run_once(Some(Duration::from_millis(20))).unwrap();
    assert_eq!(ring.in_flight(), 1);
    assert!(ring.cancel(tk.id()));
    let c = ring.wait(tk).unwrap();
    let c_id = c.id();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
    assert!(
        c.into_buf().is_some(),
        "buffer handed back with the cancelled read"
    );
    assert!(!ring.cancel(c_id), "cancel of a finished operation");
    check_teardown(&ring, &[&pool]);
}

#[test]
fn deadline_on_pending_pipe_read_times_out() {
    let (rx, _tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(2, BS, 0);
    let r = ring.register(rx).unwrap();
    let op = Op::read(r, 0, pool.try_get().unwrap()).deadline(Duration::from_millis(30));
    let c = ring.submit(op).wait().unwrap();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::TimedOut));
    drop(c);
    // The ring also reaps the timeout's own CQE; nothing is left behind.
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn read_that_wins_against_cancel_completes_once_with_bytes() {
    let (rx, tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, BS, 0);
    let r = ring.register(rx).unwrap();
    let w = ring.register(tx).unwrap();
    for i in 0..200u32 {
        let mut b = pool.try_get().unwrap();
        b.extend_from_slice(&i.to_le_bytes()).unwrap();
        assert!(ring.submit(Op::write(w, 0, b)).wait().unwrap().is_ok());
        // Data is already in the pipe: the read completes at submission, before the
        // cancel that follows it in the same batch can find it.
        let tk = ring
            .submit(Op::read(r, 0, pool.try_get().unwrap()))
            .ticket();
        ring.cancel(tk.id());
        let c = ring.wait(tk).unwrap();
        let buf = c.into_result().expect("read should win");
        assert_eq!(buf.data(), &i.to_le_bytes());
    }
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

/// A read of a pipe raced against its cancel while a writer thread trickles single bytes
/// (a counter) at random moments: whether the byte or the cancel wins is decided by the
/// scheduler, not by the test. Each read completes exactly once, either with bytes or as
/// `Cancelled`; both outcomes occur; and no byte is lost to a cancelled read or read twice
/// (the bytes read, in order, are exactly the bytes written).
#[test]
fn cancel_races_many_times_exactly_once() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let (rx, tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, 64, 0);
    let r = ring.register(rx).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (stop2, written2) = (stop.clone(), written.clone());
    let writer = std::thread::spawn(move || {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let byte = [n as u8];
            // SAFETY: valid buffer and descriptor.
            let w = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&tx),
                    byte.as_ptr().cast(),
                    1,
                )
            };
            assert_eq!(w, 1);
            n += 1;
            written2.store(n, Ordering::Release);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Pauses from nothing to ~60 us, the scale of one submit-cancel-wait round.
            for _ in 0..x % 2000 {
                std::hint::spin_loop();
            }
            if x % 16 == 0 {
                std::thread::yield_now();
            }
        }
        drop(tx);
    });
    let (mut ok, mut cancelled) = (0u32, 0u32);
    let mut got: Vec<u8> = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut i = 0u32;
    // At least 10 000 rounds; more (bounded) until both outcomes were seen.
    while i < 10_000 || ((ok == 0 || cancelled == 0) && i < 200_000) {
        i += 1;
        let tk = ring
            .submit(Op::read(r, 0, pool.try_get().unwrap()))
            .ticket();
        // Let the read reach the kernel (or not) before the cancel.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 2 == 0 {
            ring.poll().unwrap();
            for _ in 0..(x >> 8) % 500 {
                std::hint::spin_loop();
            }
        }
        ring.cancel(tk.id());
        let c = ring.wait(tk).unwrap();
        match c.result() {
            Ok(n) => {
                assert!(n >= 1, "a pipe read returned 0 bytes with the writer open");
                got.extend_from_slice(c.into_result().unwrap().data());
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_cancelled(), "{e:?}");
                assert!(matches!(c.bufs(), iocomplete::Bufs::Pool(b) if b.is_empty()));
                cancelled += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The rest of the stream, up to the end the writer left by closing its end.
    loop {
        let c = ring
            .submit(Op::read(r, 0, pool.try_get().unwrap()))
            .wait()
            .unwrap();
        match c.result() {
            Ok(0) => break,
            Ok(_) => got.extend_from_slice(c.into_result().unwrap().data()),
            Err(e) => panic!("{e:?}"),
        }
    }
    let n = written.load(Ordering::Acquire);
    eprintln!("cancel race: {ok} reads won, {cancelled} cancelled, {n} bytes written");
    assert!(
        ok > 0 && cancelled > 0,
        "the race never went both ways: {ok} reads won, {cancelled} cancelled in {i} rounds"
    );
    assert_eq!(got.len() as u64, n, "bytes lost or read twice");
    for (k, b) in got.iter().enumerate() {
        assert_eq!(*b, k as u8, "byte {k} out of order, lost or duplicated");
    }
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn ten_thousand_ops_through_an_eight_entry_cq() {
    let (_dir, path) = common::disk_path("v");
    verify::make_file(&path, 64 * 512, 512, 9);
    let mut ring = Ring::builder().entries(8).cq_entries(8).build().unwrap();
    assert_eq!(ring.capabilities().cq_entries, 8);
    let pool = pool(64, 512, 0);
    ring.register_pool(&pool);
    let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();
    let q = Arc::new(CompletionQueue::<Completion>::new(20_000));
    let seen = Arc::new(AtomicUsize::new(0));
    let mut submitted = 0u64;
    let mut reads = 0;
    for i in 0..10_000u64 {
        if i % 4 == 0 {
            let buf = match pool.try_get() {
                Ok(b) => b,
                Err(_) => {
                    // Every slot is parked in a completion: reap (flushing the CQ
                    // overflow) and consume the queue.
                    ring.poll().unwrap();
                    while let Some(c) = q.pop() {
                        let off = c.tag() * 512 % (64 * 512);
                        verify::check_block(c.bufs_data(), off, 9).unwrap();
                        reads += 1;
                    }
                    pool.try_get().unwrap()
                }
            };
            let off = (i * 512) % (64 * 512);
            ring.submit(Op::read_len(t, off, buf, 512).tag(i))
                .to_queue(&q);
        } else {
            let s = seen.clone();
            ring.submit(Op::nop().tag(i)).then(move |c| {
                assert!(c.is_ok());
                s.fetch_add(1, Ordering::Relaxed);
            });
        }
        submitted += 1;
        // Never drive the ring here except through SQ-full submits: thousands of
        // completions pile up beyond the 8-entry CQ.
    }
    ring.run_until_idle().unwrap();
    while let Some(c) = q.pop() {
        let off = c.tag() * 512 % (64 * 512);
        verify::check_block(c.bufs_data(), off, 9).unwrap();
        reads += 1;
    }
    let st = ring.stats();
    assert_eq!(st.submitted, submitted);
    assert_eq!(reads, 2500);
    assert_eq!(seen.load(Ordering::Relaxed), 7500);
    assert!(
        st.overflow_flushes > 0 || ring.backend() != iocomplete::BackendKind::Uring,
        "expected the CQ to overflow: {st:?}"
    );
    eprintln!("8-entry CQ: {st:?}");
    check_teardown(&ring, &[&pool]);
}

trait BufsData {
    fn bufs_data(&self) -> &[u8];
}
impl BufsData for Completion {
    fn bufs_data(&self) -> &[u8] {
        match self.bufs() {
            iocomplete::Bufs::Pool(b) => b.data(),
            _ => &[],
        }
    }
}

#[test]
fn dropped_pending_op_parks_its_slot_until_the_cqe() {
    let (rx, tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(1, BS, 0);
    let r = ring.register(rx).unwrap();
    let tk = ring
        .submit(Op::read(r, 0, pool.try_get().unwrap()))
        .ticket();
    ring.run_once(Some(Duration::from_millis(10))).unwrap();
    drop(tk);
    for _ in 0..5 {
        ring.run_once(Some(Duration::from_millis(5))).unwrap();
        assert!(
            pool.try_get().is_err(),
            "slot reused while the kernel owns it"
        );
    }
    assert_eq!(pool.stats().in_flight, 1);
    // The kernel's write lands now, in the parked slot.
    let sentinel = b"SENTINEL-WRITTEN-BY-KERNEL";
    // SAFETY: valid buffer and descriptor.
    let n = unsafe {
        libc::write(
            std::os::fd::AsRawFd::as_raw_fd(&tx),
            sentinel.as_ptr().cast(),
            sentinel.len(),
        )
    };
    assert_eq!(n as usize, sentinel.len());
    ring.run_until_idle().unwrap();
    let mut b = pool.try_get().expect("slot returned after its CQE");
    assert_eq!(&b.capacity_mut()[..sentinel.len()], sentinel);
    drop(b);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn invalid_requests_complete_with_typed_errors_without_a_syscall() {
    let (_dir, path) = common::disk_path("d");
    verify::make_file(&path, 16 * BS as u64, BS, 1);
    let f = common::open(&path, false, true);
    let (rx, _tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, BS, 0);
    let odd = BufferPool::builder()
        .slots(1)
        .slot_len(BS)
        .align(8)
        .header_len(8)
        .build()
        .unwrap();
    let t = ring.register(f).unwrap();
    let p = ring.register(rx).unwrap();
    let before = ring.stats();
    let kind = |ring: &mut Ring, op: Op| ring.submit(op).wait().unwrap().error().unwrap().kind();
    assert!(matches!(
        kind(&mut ring, Op::read(t, 100, pool.try_get().unwrap())),
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            ..
        }
    ));
    assert!(matches!(
        kind(&mut ring, Op::read_len(t, 0, pool.try_get().unwrap(), 1000)),
        ErrorKind::Misaligned {
            what: "length",
            value: 1000,
            ..
        }
    ));
    // A buffer aligned to 8 bytes only: its data starts 8 bytes into a 16-byte stride.
    let mut tries = 0;
    loop {
        let b = odd.try_get().unwrap();
        if b.data_ptr() as usize % 512 != 0 {
            assert!(matches!(
                kind(&mut ring, Op::read(t, 0, b)),
                ErrorKind::Misaligned { what: "buffer", .. }
            ));
            break;
        }
        tries += 1;
        assert!(tries < 2, "could not make a misaligned buffer");
    }
    assert_eq!(
        kind(&mut ring, Op::read_len(t, 0, pool.try_get().unwrap(), 0)),
        ErrorKind::ZeroLength { what: "transfer" }
    );
    assert!(matches!(
        kind(
            &mut ring,
            Op::read_len(t, 0, pool.try_get().unwrap(), 2 * BS)
        ),
        ErrorKind::BufferTooSmall {
            need: 8192,
            have: 4096
        }
    ));
    let mut b = pool.try_get().unwrap();
    b.extend_from_slice(&[0; 512]).unwrap();
    assert_eq!(kind(&mut ring, Op::write(t, 0, b)), ErrorKind::NotWritable);
    assert!(matches!(
        kind(&mut ring, Op::fsync(p, false)),
        ErrorKind::WrongTargetKind {
            have: FdKind::Pipe,
            ..
        }
    ));
    assert_eq!(
        kind(&mut ring, Op::write(p, 0, pool.try_get().unwrap())),
        ErrorKind::NotWritable
    );
    ring.close(p).unwrap();
    assert_eq!(
        kind(&mut ring, Op::read(p, 0, pool.try_get().unwrap())),
        ErrorKind::StaleTarget
    );
    let other = Ring::new().unwrap();
    drop(other);
    let after = ring.stats();
    assert_eq!(
        after.enters, before.enters,
        "an invalid request reached the kernel"
    );
    assert_eq!(after.rejected - before.rejected, 9);
    check_teardown(&ring, &[&pool, &odd]);
}

#[test]
fn futures_routines_queues_and_handles() {
    let (_dir, path) = common::disk_path("v");
    verify::make_file(&path, 32 * BS as u64, BS, 11);
    let pool = pool(8, BS, 0);
    let (ring, t) = ring_with(&pool, std::fs::File::open(&path).unwrap());
    let (h, driver) = ring.spawn().unwrap();
    // Futures on another thread, woken by the ring thread.
    let c = common::block_on(h.submit_future(Op::read(t, 3 * BS as u64, pool.get())));
    verify::check_block(c.into_result().unwrap().data(), 3 * BS as u64, 11).unwrap();
    // Many threads submit through clones of the handle, completions to one queue.
    let q = Arc::new(CompletionQueue::new(64));
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let (h, q, pool) = (h.clone(), q.clone(), pool.clone());
            std::thread::spawn(move || {
                for i in 0..8u64 {
                    let b = (k * 8 + i) % 32;
                    h.submit_to(Op::read(t, b * BS as u64, pool.get()).tag(b), &q);
                }
            })
        })
        .collect();
    let mut n = 0;
    while n < 32 {
        let c = q.pop_timeout(Duration::from_secs(10)).expect("completion");
        let off = c.tag() * BS as u64;
        verify::check_block(c.into_result().unwrap().data(), off, 11).unwrap();
        n += 1;
    }
    for th in threads {
        th.join().unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    h.submit_then(Op::nop().tag(5), move |c| tx.send(c.tag()).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 5);
    h.detach(Op::read(t, 0, pool.get()));
    h.shutdown();
    driver.join().unwrap().unwrap();
    assert!(h.is_closed());
    // After the ring is gone, a handle's submission completes at once as Cancelled.
    let c = common::block_on(h.submit_future(Op::read(t, 0, pool.get())));
    assert!(c.error().unwrap().is_cancelled());
    drop(c);
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

#[test]
fn dropping_a_ring_with_reads_in_flight_completes_them_and_returns_slots() {
    let (rx, _tx) = pipe();
    let pool = pool(4, BS, 0);
    let q = Arc::new(CompletionQueue::new(8));
    {
        let mut ring = Ring::new().unwrap();
        let r = ring.register(rx).unwrap();
        for i in 0..4 {
            ring.submit(Op::read(r, 0, pool.try_get().unwrap()).tag(i))
                .to_queue(&q);
        }
        ring.poll().unwrap();
        assert_eq!(ring.in_flight(), 4);
    }
    let mut n = 0;
    while let Some(c) = q.pop() {
        assert!(c.error().unwrap().is_cancelled());
        n += 1;
    }
    assert_eq!(n, 4);
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

#[test]
fn multishot_read_with_provided_buffers_survives_running_dry() {
    let (rx, tx) = pipe();
    let mut ring = or_skip!(common::multishot_ring());
    let pool = pool(4, BS, 8);
    let br = ring.register_buf_ring(&pool, 4).unwrap();
    assert_eq!(ring.buf_ring_offered(br), 4);
    let r = ring.register(rx).unwrap();
    let w = std::fs::File::from(tx);
    let q = Arc::new(CompletionQueue::<Completion>::new(64));
    ring.submit(Op::read_multishot(r, br).tag(7)).to_queue(&q);
    ring.poll().unwrap();
    // Six separate writes; the reader holds on to every buffer, so after four the buffer
    // ring is empty and the multishot read ends with ENOBUFS.
    let msgs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 100 + i as usize]).collect();
    let mut held = Vec::new();
    let mut got = Vec::new();
    let mut ended = None;
    let mut written = 0;
    for m in &msgs {
        std::io::Write::write_all(&mut &w, m).unwrap();
        written += 1;
        ring.run_once(Some(Duration::from_millis(50))).unwrap();
        while let Some(c) = q.pop() {
            if !c.has_more() {
                ended = c.error();
                if let Some(b) = c.into_buf() {
                    got.extend_from_slice(b.data());
                }
                continue;
            }
            let b = c.into_buf().expect("a buffer per completion");
            assert!(b.header().len() == 8);
            got.extend_from_slice(b.data());
            held.push(b);
        }
        if ended.is_some() {
            break;
        }
    }
    assert_eq!(ended.map(|e| e.kind()), Some(ErrorKind::Os(libc::ENOBUFS)));
    // Return the buffers; the ring tops the buffer ring up, and a re-armed read goes on.
    drop(held);
    ring.poll().unwrap();
    assert_eq!(ring.buf_ring_offered(br), 4);
    let tk_q = q.clone();
    ring.submit(Op::read_multishot(r, br)).to_queue(&tk_q);
    for m in &msgs[written..] {
        std::io::Write::write_all(&mut &w, m).unwrap();
    }
    let want: Vec<u8> = msgs.concat();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        ring.run_once(Some(Duration::from_millis(20))).unwrap();
        while let Some(c) = q.pop() {
            if let Some(b) = c.into_buf() {
                got.extend_from_slice(b.data());
            }
        }
    }
    assert_eq!(got, want);
    drop(w); // EOF ends the multishot read
    ring.run_until_idle().unwrap();
    while let Some(c) = q.pop() {
        assert!(!c.has_more());
        assert_eq!(c.result(), Ok(0));
    }
    assert!(matches!(
        ring.submit(Op::read_multishot(r, br))
            .wait()
            .unwrap()
            .error()
            .unwrap()
            .kind(),
        ErrorKind::InvalidInput { .. }
    ));
    check_teardown(&ring, &[]);
    drop(ring);
    let st = pool.stats();
    assert_eq!(st.free, st.total);
}

#[test]
fn send_sync_contract() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Ring>();
    send_sync::<iocomplete::RingHandle>();
    send_sync::<BufferPool>();
    send::<iocomplete::PoolBuf>();
    send_sync::<iocomplete::SharedBuf>();
    send_sync::<CompletionQueue<Completion>>();
    send::<Completion>();
    send::<iocomplete::Ticket>();
}

/// The same reads on rings set up every way the builder offers.
#[test]
fn ring_setups_single_issuer_defer_taskrun_sqpoll() {
    let (_dir, path) = common::disk_path("v");
    verify::make_file(&path, 32 * BS as u64, BS, 21);
    let setups: Vec<(&str, iocomplete::RingBuilder)> = vec![
        ("default", Ring::builder()),
        ("single_issuer", Ring::builder().single_issuer(true)),
        ("defer_taskrun", Ring::builder().defer_taskrun(true)),
        ("sqpoll", Ring::builder().sqpoll(50)),
    ];
    for (name, b) in setups {
        let mut ring = match b.build() {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported { .. }) => {
                common::skip(&format!("{name}: {e}"));
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let pool = pool(8, BS, 0);
        ring.register_pool(&pool);
        let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();
        for round in 0..4u64 {
            let tickets: Vec<_> = (0..8u64)
                .map(|k| {
                    let b = (round * 8 + k) % 32;
                    (
                        b,
                        ring.submit(Op::read(t, b * BS as u64, pool.try_get().unwrap()))
                            .ticket(),
                    )
                })
                .collect();
            for (b, tk) in tickets {
                let buf = ring.wait(tk).unwrap().into_result().unwrap();
                verify::check_block(buf.data(), b * BS as u64, 21)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        check_teardown(&ring, &[&pool]);
    }
}

/// A ring moved to another thread after being built (single issuer: the ring is enabled
/// by the first thread that drives it).
#[test]
fn single_issuer_ring_moves_to_its_driving_thread() {
    let ring = Ring::builder().single_issuer(true).build().unwrap();
    let t = std::thread::spawn(move || {
        let mut ring = ring;
        let c = ring.submit(Op::nop().tag(3)).wait().unwrap();
        assert_eq!(c.tag(), 3);
        check_teardown(&ring, &[]);
    });
    t.join().unwrap();
}

#[test]
fn pty_round_trip_and_readiness_poll() {
    let (master, slave) = raw_pty();
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, BS, 4);
    let m = ring.register(master).unwrap();
    let s = ring.register(slave).unwrap();
    assert_eq!(ring.info(s).unwrap().kind, iocomplete::FdKind::Tty);
    // Readiness: nothing to read yet, so a poll stays pending until the master writes.
    let mut poll = Some(ring.submit(Op::poll(s, libc::POLLIN as u32)).ticket());
    ring.run_once(Some(Duration::from_millis(20))).unwrap();
    assert!(!ring.is_done(poll.as_ref().unwrap()));
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for i in 0..16u64 {
        let mut b = pool.try_get().unwrap();
        b.set_len(512).unwrap();
        verify::fill_block(b.data_mut(), i * 512, 13);
        sent.extend_from_slice(b.data());
        assert_eq!(
            ring.submit(Op::write(m, 0, b)).wait().unwrap().result(),
            Ok(512)
        );
        if let Some(p) = poll.take() {
            let c = ring.wait(p).unwrap();
            assert_ne!(
                c.bytes() & libc::POLLIN as usize,
                0,
                "poll mask {:#x}",
                c.bytes()
            );
        }
        while got.len() < sent.len() {
            let c = ring
                .submit(Op::read(s, 0, pool.try_get().unwrap()))
                .wait()
                .unwrap();
            got.extend_from_slice(c.into_result().unwrap().data());
        }
    }
    verify::check_range(&got, 512, 13, 0).unwrap();
    check_teardown(&ring, &[&pool]);
}

/// An idle ring driven by `Ring::spawn` sleeps in the kernel (waiting on its wake-up
/// poll) instead of spinning: its thread uses a small fraction of the wall time.
#[test]
fn idle_spawned_ring_does_not_spin() {
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(r, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let ring = Ring::new().unwrap();
    let (h, driver) = std::thread::spawn(move || {
        let mut ring = ring;
        let h = ring.handle().unwrap();
        let t = std::thread::spawn(move || {
            let start = thread_cpu();
            ring.drive_until_shutdown().unwrap();
            thread_cpu() - start
        });
        (h, t)
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Still responsive: a submission wakes it.
    let (tx, rx) = std::sync::mpsc::channel();
    h.submit_then(Op::nop().tag(1), move |c| tx.send(c.tag()).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
    h.shutdown();
    let cpu = driver.join().unwrap();
    assert!(
        cpu < Duration::from_millis(100),
        "idle ring thread used {cpu:?} of CPU in 0.5 s"
    );
}

/// A multishot read ended by CQ overflow: its last completion carries a buffer, which
/// must come back exactly once (no double state transition, pool counters exact).
#[test]
fn multishot_read_ended_by_cq_overflow_returns_its_last_buffer_once() {
    let (rx, tx) = pipe();
    let mut ring = Ring::builder().entries(4).cq_entries(4).build().unwrap();
    or_skip!(common::needs_multishot(&ring));
    let pool = pool(32, BS, 0);
    let br = ring.register_buf_ring(&pool, 16).unwrap();
    let r = ring.register(rx).unwrap();
    let w = std::fs::File::from(tx);
    let q = Arc::new(CompletionQueue::<Completion>::new(256));
    ring.submit(Op::read_multishot(r, br)).to_queue(&q);
    ring.poll().unwrap();
    // Each write's wake-up runs the read before the next write: more completions than
    // the 4-entry CQ holds, so the kernel ends the multishot read with a buffer in hand.
    let want: Vec<u8> = (0..20).collect();
    for b in &want {
        std::io::Write::write_all(&mut &w, std::slice::from_ref(b)).unwrap();
    }
    drop(w); // whatever the overflow left armed ends at EOF
    ring.run_until_idle().unwrap();
    let (mut got, mut finals) = (Vec::new(), 0);
    while let Some(c) = q.pop() {
        finals += usize::from(!c.has_more());
        if let Some(b) = c.into_buf() {
            got.extend_from_slice(b.data());
        }
    }
    assert_eq!(finals, 1, "the multishot read ended exactly once");
    assert_eq!(got, want[..got.len()], "data out of order or corrupted");
    check_teardown(&ring, &[]);
    drop(ring);
    let st = pool.stats();
    assert_eq!((st.free, st.in_flight), (st.total, 0), "{st:?}");
}
