//! FIFO-style receive against real pipes, named FIFOs, socketpairs and raw-mode ptys fed
//! by writer threads that trickle data in random-sized bursts with pauses. Every test
//! verifies the exact bytes and checks the teardown invariants (every operation completed
//! once, every pool slot back).

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::drivers::{logged_fifo as logged, run_until_idle};
use common::fd::{fifo_in, payload, pipe, raw_pty, set_nonblocking, socketpair, trickle};
use common::{check_teardown, ring_with};
use iocomplete::{BufferPool, Driver, ErrorKind, FdKind, FifoReceiver, FifoStatus, Op, Ring};

// ---- sources -----------------------------------------------------------------------------

/// The receiving end (non-blocking) and the writing end (blocking) of a source, plus
/// whatever must stay alive with them.
struct Source {
    rx: OwnedFd,
    tx: File,
    name: &'static str,
    _keep: Option<Box<dyn std::any::Any + Send>>,
}

/// A source: `rx` made non-blocking, `tx` as a file.
fn source(
    (rx, tx): (OwnedFd, OwnedFd),
    name: &'static str,
    keep: Option<Box<dyn std::any::Any + Send>>,
) -> Source {
    set_nonblocking(rx.as_raw_fd());
    Source {
        rx,
        tx: tx.into(),
        name,
        _keep: keep,
    }
}

fn pipe_source() -> Source {
    source(pipe(), "pipe", None)
}

fn socket_source() -> Source {
    source(socketpair(), "socketpair", None)
}

fn fifo_source() -> Source {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo_in(dir.path());
    // The reader first (non-blocking: does not wait for a writer), then the writer (whose
    // blocking open returns at once, a reader being there).
    let rx = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let tx = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    source((rx.into(), tx.into()), "named FIFO", Some(Box::new(dir)))
}

/// A pty: the receiver reads the slave side, in raw mode (`cfmakeraw`: every byte value
/// passes unchanged, no echo); the writer writes the master side.
fn pty_source() -> Source {
    let (master, slave) = raw_pty();
    source((slave, master), "pty (raw)", None)
}

fn pool(slots: usize, len: usize) -> BufferPool {
    common::pool_hdr(slots, len, 8)
}

/// Drive until the receiver has armed its readiness notification.
fn drive_until_waiting(ring: &mut Ring, rx: &mut FifoReceiver) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(rx.process(ring).unwrap().is_none(), "completed early");
        if rx.is_waiting_for_readiness() {
            return;
        }
        assert!(Instant::now() < until, "receiver never waited");
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

// ---- trickled sources ----------------------------------------------------------------------

/// Receive `data` in transactions of `chunk` bytes while a writer trickles it.
fn trickled(src: Source, seed: u64, total: usize, chunk: usize, max_burst: u64) {
    let name = src.name;
    let data = payload(seed, total);
    let pool = pool(4, chunk);
    let (mut ring, t) = ring_with(&pool, src.rx);
    let (mut rx, log) = logged(&ring, t);
    let writer = trickle(src.tx, data.clone(), seed, max_burst, 1500);
    let mut got = Vec::new();
    let mut lens = Vec::new();
    while got.len() < total {
        let len = chunk.min(total - got.len());
        let mut buf = pool.try_get().unwrap();
        buf.header_mut().fill(0x5A);
        rx.receive(&mut ring, buf, len).unwrap();
        let r = rx.run(&mut ring).unwrap();
        assert_eq!(r.status(), FifoStatus::Full, "{name}");
        assert_eq!((r.bytes(), r.buf.len()), (len, len));
        assert!(r.buf.header().iter().all(|&b| b == 0x5A), "header touched");
        got.extend_from_slice(r.buf.data());
        lens.push(len as u32);
    }
    let (_tx, bursts) = writer.join().unwrap();
    assert!(
        got == data,
        "{name}: received bytes differ from those written"
    );
    let waits = rx.readiness_waits();
    let ops = ring.stats().submitted;
    eprintln!(
        "{name}: {total} bytes in {bursts} bursts, {} receives, {waits} readiness waits, \
         {ops} ring ops, nowait reads: {}",
        lens.len(),
        rx.uses_nowait_reads()
    );
    assert!(
        waits > 0,
        "{name}: the source ran dry but no readiness wait"
    );
    // No busy loop: a wait needs data to end it, and every read either brings data or
    // ends in a wait (a tty's probe may race a burst, hence the slack).
    assert!(
        waits <= 2 * bursts + 4,
        "{name}: {waits} waits for {bursts} bursts"
    );
    assert!(
        ops <= 4 * (bursts + waits) + 8,
        "{name}: {ops} ring operations for {bursts} bursts"
    );
    // Hooks: Begin before End, once per transaction, with the lengths.
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2 * lens.len());
    for (pair, &len) in log.chunks(2).zip(&lens) {
        assert_eq!(pair[0].0, 'B');
        assert_eq!(pair[1].0, 'E');
        assert_eq!(pair[0].1, pair[1].1);
        assert_eq!((pair[0].2, pair[1].2), (len, len));
    }
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn pipe_trickle_exact_content_with_readiness_waits() {
    trickled(pipe_source(), 1, 40_000, 16 * 1024, 1500);
}

#[test]
fn named_fifo_trickle_exact_content_with_readiness_waits() {
    trickled(fifo_source(), 2, 40_000, 16 * 1024, 1500);
}

/// A named FIFO refuses `RWF_NOWAIT`, so the receiver probes it with `poll(2)` before each
/// read: an empty FIFO costs no read at all — only the readiness poll — and no kernel timer
/// (it used to cost a read with a zero linked timeout each time). Counted in ring
/// operations: the refused first read, then poll, read, poll, read for two bursts.
#[test]
fn an_empty_named_fifo_is_probed_without_a_read() {
    let src = fifo_source();
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, src.rx);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    let mut tx = src.tx;
    rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    assert!(
        !rx.uses_nowait_reads(),
        "a FIFO opened by path took RWF_NOWAIT"
    );
    // The RWF_NOWAIT read the FIFO refused, then the readiness poll: no probing read.
    assert_eq!(ring.stats().submitted, 2, "{:?}", ring.stats());
    tx.write_all(&[7; 40]).unwrap();
    // The poll fires, a read takes the 40 bytes, the probe finds the FIFO empty: a poll.
    ring.run_once(Some(Duration::from_secs(5))).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    assert_eq!(ring.stats().submitted, 4, "{:?}", ring.stats());
    assert_eq!(rx.readiness_waits(), 2);
    tx.write_all(&[9; 60]).unwrap();
    let r = rx.run(&mut ring).unwrap();
    assert_eq!(r.status(), FifoStatus::Full);
    assert_eq!(r.buf.data()[..40], [7; 40]);
    assert_eq!(r.buf.data()[40..], [9; 60]);
    assert_eq!(ring.stats().submitted, 5, "{:?}", ring.stats());
    assert_eq!(rx.readiness_waits(), 2);
    drop(r);
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

/// A named FIFO that no writer has opened yet: a read would say end of file, but the
/// probe (`poll(2)`) says "nothing yet", so the receiver waits for a writer — and ends
/// with what it wrote, then end of file once it has closed.
#[test]
fn a_named_fifo_without_a_writer_yet_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo_in(dir.path());
    let rx_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, rx_fd);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    for _ in 0..3 {
        ring.run_once(Some(Duration::from_millis(20))).unwrap();
        assert!(
            rx.process(&mut ring).unwrap().is_none(),
            "ended without a writer"
        );
    }
    let mut tx = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    tx.write_all(b"0123456789").unwrap();
    drop(tx);
    let r = rx.run(&mut ring).unwrap();
    assert!(
        matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp),
        "{:?}",
        r.status()
    );
    assert_eq!(r.buf.data(), b"0123456789");
    drop(r);
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn socketpair_trickle_exact_content_with_readiness_waits() {
    trickled(socket_source(), 3, 40_000, 16 * 1024, 1500);
}

#[test]
fn raw_pty_trickle_exact_content_with_readiness_waits() {
    // The tty's input buffer is 4 KiB: small bursts, and a writer that blocks when full.
    trickled(pty_source(), 4, 12_000, 4096, 700);
}

#[test]
fn no_readiness_wait_when_all_data_is_already_there() {
    for src in [pipe_source(), socket_source(), fifo_source()] {
        let name = src.name;
        let data = payload(5, 48 * 1024);
        let mut tx = src.tx;
        tx.write_all(&data).unwrap();
        let pool = pool(2, 16 * 1024);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            rx.receive(&mut ring, pool.try_get().unwrap(), 16 * 1024)
                .unwrap();
            let r = rx.run(&mut ring).unwrap();
            assert_eq!(r.status(), FifoStatus::Full);
            assert_eq!(r.readiness_waits(), 0);
            got.extend_from_slice(r.buf.data());
        }
        assert!(got == data, "{name}: bytes differ");
        assert_eq!(rx.readiness_waits(), 0, "{name}");
        // Anonymous pipes and sockets take RWF_NOWAIT; a FIFO opened by path does not on
        // Linux 6.18 (no FMODE_NOWAIT) and is probed with poll(2) before each read instead.
        if name != "named FIFO" {
            assert!(rx.uses_nowait_reads(), "{name}");
        }
        drop(rx);
        check_teardown(&ring, &[&pool]);
    }
}

// ---- end of stream -----------------------------------------------------------------------

#[test]
fn eof_before_len_completes_with_the_bytes_received() {
    for src in [pipe_source(), socket_source(), fifo_source()] {
        let name = src.name;
        let data = payload(6, 3000);
        let pool = pool(2, 8192);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let (mut rx, log) = logged(&ring, t);
        let writer = trickle(src.tx, data.clone(), 6, 700, 1000);
        rx.receive(&mut ring, pool.try_get().unwrap(), 8000)
            .unwrap();
        let (tx, _) = writer.join().unwrap();
        drop(tx); // the writer goes away: end of stream after 3000 bytes
        let r = rx.run(&mut ring).unwrap();
        assert!(
            matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp),
            "{name}: {:?}",
            r.status()
        );
        assert_eq!(r.bytes(), 3000, "{name}");
        assert!(r.buf.data() == &data[..], "{name}: bytes differ");
        assert_eq!(
            log.lock().unwrap().last().map(|e| (e.0, e.2)),
            Some(('E', 3000))
        );
        assert_eq!(
            r.into_result().unwrap_err().kind(),
            ErrorKind::UnexpectedEof { got: 3000 }
        );
        drop(rx);
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn hang_up_while_waiting_is_a_distinct_status() {
    let src = pipe_source();
    let mut ring = Ring::new().unwrap();
    let pool = pool(2, 4096);
    let t = ring.register(src.rx).unwrap();
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    let mut tx = src.tx;
    tx.write_all(b"partial").unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    drop(tx); // POLLHUP, nothing readable
    let r = rx.run(&mut ring).unwrap();
    assert_eq!(r.status(), FifoStatus::HangUp);
    assert_eq!(r.buf.data(), b"partial");
    assert_eq!(r.readiness_waits(), 1);
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
}

// ---- cancel and deadline -----------------------------------------------------------------

#[test]
fn cancel_while_waiting_for_readiness_completes_once_with_bytes_so_far() {
    for src in [pipe_source(), socket_source(), pty_source()] {
        let name = src.name;
        let data = payload(7, 1000);
        let pool = pool(2, 4096);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let (mut rx, log) = logged(&ring, t);
        let mut tx = src.tx;
        assert!(!rx.cancel(&mut ring), "cancel without a transaction");
        tx.write_all(&data[..100]).unwrap();
        let txn = rx
            .receive(&mut ring, pool.try_get().unwrap(), 1000)
            .unwrap();
        drive_until_waiting(&mut ring, &mut rx);
        // (A pty may hand the 100 bytes over in pieces: fewer may be in when it waits.)
        assert!(rx.cancel(&mut ring));
        let r = rx.run(&mut ring).unwrap();
        assert_eq!(r.status(), FifoStatus::Cancelled, "{name}");
        assert_eq!(r.outcome.txn, txn);
        let first = r.bytes();
        assert!(first <= 100, "{name}");
        assert!(r.buf.data() == &data[..first], "{name}: bytes differ");
        assert!(r.readiness_waits() >= 1);
        assert!(r.into_result().unwrap_err().is_cancelled());
        assert_eq!(
            *log.lock().unwrap().last().unwrap(),
            ('E', txn, first as u32)
        );
        // Exactly once: nothing more for that transaction.
        assert!(rx.process(&mut ring).unwrap().is_none());
        assert!(!rx.cancel(&mut ring));
        // Nothing is lost: the rest arrives in the next transaction.
        tx.write_all(&data[100..]).unwrap();
        rx.receive(&mut ring, pool.try_get().unwrap(), 1000 - first)
            .unwrap();
        let r = rx.run(&mut ring).unwrap();
        assert_eq!(r.status(), FifoStatus::Full);
        assert!(r.buf.data() == &data[first..], "{name}: bytes differ");
        drop((r, rx));
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn deadline_completes_once_with_bytes_so_far() {
    for src in [pipe_source(), pty_source()] {
        let name = src.name;
        let data = payload(8, 500);
        let pool = pool(2, 4096);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        let mut tx = src.tx;
        tx.write_all(&data[..10]).unwrap();
        let started = Instant::now();
        rx.receive_with_deadline(
            &mut ring,
            pool.try_get().unwrap(),
            500,
            Duration::from_millis(60),
        )
        .unwrap();
        let r = rx.run(&mut ring).unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), FifoStatus::TimedOut, "{name}");
        assert!(took >= Duration::from_millis(60), "{name}: {took:?}");
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
        assert_eq!(r.buf.data(), &data[..10], "{name}");
        assert!(r.readiness_waits() >= 1);
        assert!(r.into_result().unwrap_err().is_timed_out());
        // The next transaction (no deadline) gets the rest.
        tx.write_all(&data[10..]).unwrap();
        rx.receive(&mut ring, pool.try_get().unwrap(), 490).unwrap();
        let r = rx.run(&mut ring).unwrap();
        assert!(r.buf.data() == &data[10..], "{name}: bytes differ");
        drop((r, rx));
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn deadline_while_data_keeps_coming_still_ends_the_transaction() {
    let src = pipe_source();
    let data = payload(9, 20_000);
    let mut ring = Ring::new().unwrap();
    let pool = pool(2, 32 * 1024);
    let t = ring.register(src.rx).unwrap();
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    // 20 KB at a few hundred bytes per millisecond or so: longer than the deadline.
    let writer = trickle(src.tx, data.clone(), 9, 300, 3000);
    rx.receive_with_deadline(
        &mut ring,
        pool.try_get().unwrap(),
        20_000,
        Duration::from_millis(30),
    )
    .unwrap();
    let r = rx.run(&mut ring).unwrap();
    let (tx, _) = writer.join().unwrap();
    assert_eq!(r.status(), FifoStatus::TimedOut);
    let first = r.bytes();
    assert!(first < 20_000);
    assert!(r.buf.data() == &data[..first]);
    drop(r);
    drop(tx);
    // What the writer sent after the deadline is still in the pipe: drain it.
    rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
    let r = rx.run(&mut ring).unwrap();
    assert_eq!(r.status(), FifoStatus::Eof);
    assert!(
        r.buf.data() == &data[first..],
        "bytes after the deadline differ"
    );
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
}

// ---- drain ---------------------------------------------------------------------------------

#[test]
fn drain_saves_what_the_writer_sent_beyond_the_request() {
    for src in [pipe_source(), socket_source(), fifo_source()] {
        let name = src.name;
        let data = payload(10, 10_000);
        let pool = pool(4, 4096);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let (mut rx, log) = logged(&ring, t);
        let mut tx = src.tx;
        tx.write_all(&data).unwrap();
        rx.receive(&mut ring, pool.try_get().unwrap(), 4000)
            .unwrap();
        let first = rx.run(&mut ring).unwrap();
        assert_eq!(first.status(), FifoStatus::Full);
        // Shutting down: save what the source still holds, buffer after buffer.
        let mut saved = Vec::new();
        let mut statuses = Vec::new();
        loop {
            rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
            let r = rx.run(&mut ring).unwrap();
            assert_eq!(r.readiness_waits(), 0, "a drain never waits");
            saved.extend_from_slice(r.buf.data());
            statuses.push(r.status());
            if r.status() != FifoStatus::Full {
                break;
            }
        }
        assert_eq!(
            statuses,
            [FifoStatus::Full, FifoStatus::Drained],
            "{name}: 6000 bytes = one full 4 KiB buffer and a partial one"
        );
        assert!(first.buf.data() == &data[..4000], "{name}");
        assert!(saved == data[4000..], "{name}: drained bytes differ");
        // Begin/End ran for the drains too, with the capacity and the bytes.
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 6);
        assert_eq!((log[2].0, log[2].2, log[3].2), ('B', 4096, 4096));
        assert_eq!(
            (log[4].0, log[4].2, log[5].2),
            ('B', 4096, 10_000 - 4000 - 4096)
        );
        // A drain of an empty source ends at once, empty.
        drop(log);
        rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
        let r = rx.run(&mut ring).unwrap();
        assert_eq!((r.status(), r.bytes()), (FifoStatus::Drained, 0));
        drop((first, r, rx));
        check_teardown(&ring, &[&pool]);
    }
}

// ---- refusals ------------------------------------------------------------------------------

#[test]
fn regular_files_and_bad_requests_are_refused_before_the_kernel() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, 4096);
    ring.register_pool(&pool);
    let before = ring.stats();

    let file = ring.register(tempfile::tempfile().unwrap()).unwrap();
    let e = FifoReceiver::new(&ring, file).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::WrongTargetKind {
                have: FdKind::File,
                ..
            }
        ),
        "{e}"
    );
    // A blocking descriptor never runs dry; a write end cannot be read.
    let (rx, _w1) = pipe();
    let blocking = ring.register(rx).unwrap();
    let e = FifoReceiver::new(&ring, blocking).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::InvalidInput { reason } if reason.contains("O_NONBLOCK")),
        "{e}"
    );
    let (_r2, w2) = pipe();
    set_nonblocking(w2.as_raw_fd());
    let write_end = ring.register(w2).unwrap();
    assert_eq!(
        FifoReceiver::new(&ring, write_end).unwrap_err().kind(),
        ErrorKind::NotReadable
    );

    let src = pipe_source();
    let t = ring.register(src.rx).unwrap();
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    let refused = rx
        .receive(&mut ring, pool.try_get().unwrap(), 0)
        .unwrap_err();
    assert_eq!(
        refused.error.kind(),
        ErrorKind::ZeroLength { what: "receive" }
    );
    let buf = refused.buf; // handed back
    let refused = rx.receive(&mut ring, buf, 5000).unwrap_err();
    assert_eq!(
        refused.error.kind(),
        ErrorKind::BufferTooSmall {
            need: 5000,
            have: 4096
        }
    );
    let idle = ErrorKind::NotInProgress {
        what: "driver request",
    };
    assert!(
        matches!(rx.run(&mut ring), Err(e) if e.kind() == idle),
        "wait without a transaction"
    );
    assert_eq!(ring.stats().submitted, before.submitted);
    assert_eq!(
        ring.stats().enters,
        before.enters,
        "a refusal reached the kernel"
    );

    // One transaction at a time; a second is refused with its buffer back.
    rx.receive(&mut ring, refused.buf, 10).unwrap();
    let second = rx
        .receive(&mut ring, pool.try_get().unwrap(), 10)
        .unwrap_err();
    assert!(matches!(second.error.kind(), ErrorKind::InProgress { .. }));
    let drained = rx.drain(&mut ring, second.buf).unwrap_err();
    drop(drained);
    let mut tx = src.tx;
    tx.write_all(b"0123456789").unwrap();
    let r = rx.run(&mut ring).unwrap();
    assert_eq!(r.buf.data(), b"0123456789");

    // The ring's own additions: nowait is for reads; an appended read must fit.
    let submitted = ring.stats().submitted;
    let enters = ring.stats().enters;
    let mut b = pool.try_get().unwrap();
    b.extend_from_slice(b"x").unwrap();
    let c = ring.submit(Op::write(t, 0, b).nowait()).wait().unwrap();
    // `t` is the pipe's read end: the write is refused before its nowait is looked at.
    assert_eq!(c.error().unwrap().kind(), ErrorKind::NotWritable);
    drop(c);
    let mut b = pool.try_get().unwrap();
    b.set_len(4000).unwrap();
    let c = ring.submit(Op::read_append(t, 0, b, 200)).wait().unwrap();
    assert_eq!(
        c.error().unwrap().kind(),
        ErrorKind::BufferTooSmall {
            need: 4200,
            have: 4096
        }
    );
    assert_eq!(
        c.into_buf().unwrap().len(),
        4000,
        "buffer handed back unchanged"
    );
    assert_eq!(ring.stats().submitted - submitted, 2);
    assert_eq!(
        ring.stats().enters,
        enters,
        "an invalid op reached the kernel"
    );
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
}

#[test]
fn read_append_lands_after_the_bytes_held() {
    let src = pipe_source();
    let pool = pool(1, 4096);
    let (mut ring, t) = ring_with(&pool, src.rx);
    let mut tx = src.tx;
    tx.write_all(b"world").unwrap();
    let mut b = pool.try_get().unwrap();
    b.extend_from_slice(b"hello ").unwrap();
    let c = ring
        .submit(Op::read_append(t, 0, b, 100).nowait())
        .wait()
        .unwrap();
    assert_eq!(c.result(), Ok(5));
    let b = c.into_buf().unwrap();
    assert_eq!(b.data(), b"hello world");
    // Empty now: nowait answers EAGAIN and leaves the buffer as it was.
    let c = ring
        .submit(Op::read_append(t, 0, b, 100).nowait())
        .wait()
        .unwrap();
    assert_eq!(c.error().unwrap().kind(), ErrorKind::Os(libc::EAGAIN));
    assert_eq!(c.into_buf().unwrap().data(), b"hello world");
    check_teardown(&ring, &[&pool]);
}

// ---- several receivers on one ring ---------------------------------------------------------

#[test]
fn several_receivers_share_one_ring_through_poll() {
    let srcs = [pipe_source(), socket_source(), fifo_source()];
    let mut ring = Ring::new().unwrap();
    let pool = pool(3, 16 * 1024);
    ring.register_pool(&pool);
    let mut rxs = Vec::new();
    let mut writers = Vec::new();
    let mut want = Vec::new();
    for (i, s) in srcs.into_iter().enumerate() {
        let data = payload(20 + i as u64, 12_000 + 1000 * i);
        let t = ring.register(s.rx).unwrap();
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        rx.receive(&mut ring, pool.try_get().unwrap(), data.len())
            .unwrap();
        rxs.push(rx);
        writers.push(trickle(s.tx, data.clone(), 20 + i as u64, 800, 1000));
        want.push(data);
    }
    let mut got: Vec<Option<Vec<u8>>> = vec![None; 3];
    let until = Instant::now() + Duration::from_secs(10);
    while got.iter().any(Option::is_none) {
        assert!(Instant::now() < until, "receivers did not finish");
        ring.run_once(Some(Duration::from_millis(50))).unwrap();
        for (rx, slot) in rxs.iter_mut().zip(&mut got) {
            if let Some(r) = rx.process(&mut ring).unwrap() {
                assert_eq!(r.status(), FifoStatus::Full);
                *slot = Some(r.buf.data().to_vec());
            }
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    for (g, w) in got.iter().zip(&want) {
        assert!(g.as_deref() == Some(&w[..]), "bytes differ");
    }
    assert!(rxs.iter().all(|r| r.readiness_waits() > 0));
    drop(rxs);
    check_teardown(&ring, &[&pool]);
}

// ---- regression tests: huge deadlines, dropped receivers, foreign rings -------------------

/// Finding 5: a huge deadline means "effectively never" — no overflow panic; the
/// transaction completes normally when its data arrives, after a readiness wait. (None
/// of them reaches a kernel timer: no timer is armed.)
#[test]
fn huge_deadlines_mean_never_and_complete_normally() {
    let timeouts = [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(1 << 40),
    ];
    for timeout in timeouts {
        let src = pipe_source();
        let data = payload(30, 3000);
        let pool = pool(2, 4096);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        let mut tx = src.tx;
        tx.write_all(&data[..1000]).unwrap();
        rx.receive_with_deadline(&mut ring, pool.try_get().unwrap(), 3000, timeout)
            .unwrap();
        drive_until_waiting(&mut ring, &mut rx);
        tx.write_all(&data[1000..]).unwrap();
        let r = rx.run(&mut ring).unwrap();
        assert_eq!(r.status(), FifoStatus::Full, "{timeout:?}");
        assert!(r.buf.data() == &data[..], "{timeout:?}: bytes differ");
        assert!(r.readiness_waits() >= 1);
        drop((r, rx));
        check_teardown(&ring, &[&pool]);
    }
}

/// Dropping a receiver while it waits for readiness on a silent source leaves nothing in
/// flight: the ring becomes idle (`run_until_idle` returns) and every slot is back.
#[test]
fn dropping_a_waiting_receiver_leaves_the_ring_idle() {
    for src in [pipe_source(), socket_source(), fifo_source()] {
        let name = src.name;
        let pool = pool(2, 4096);
        let (mut ring, t) = ring_with(&pool, src.rx);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        let mut tx = src.tx;
        tx.write_all(b"partial").unwrap();
        rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
        drive_until_waiting(&mut ring, &mut rx);
        drop(rx);
        let what = format!("{name}: the dropped receiver's wait");
        run_until_idle(&mut ring, Duration::from_secs(5), &what);
        ring.run_until_idle().unwrap();
        drop(tx);
        check_teardown(&ring, &[&pool]);
    }
}

/// A receiver used with a ring it was not made for is refused, and never touches that
/// ring's operations (its cancel would otherwise hit whatever op has the same id there).
#[test]
fn a_receiver_refuses_a_foreign_ring_and_cancels_nothing_there() {
    let src = pipe_source();
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let pool = pool(2, 4096);
    let t = ring.register(src.rx).unwrap();
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    assert!(FifoReceiver::new(&other, t).is_err());
    // The other ring has an operation of its own in flight; a nop first, so that it gets
    // the op id (slot and generation) the receiver's readiness poll gets on its ring.
    let theirs = pipe_source();
    let ot = other.register(theirs.rx).unwrap();
    other.submit(Op::nop()).wait().unwrap();
    let ticket = other.submit(Op::poll(ot, libc::POLLIN as u32)).ticket();
    other.poll().unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 5).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    assert!(!rx.cancel(&mut other), "cancelled through a foreign ring");
    let foreign = ErrorKind::WrongRing {
        what: "FIFO receiver",
    };
    assert!(matches!(rx.process(&mut other), Err(e) if e.kind() == foreign));
    assert!(matches!(rx.run(&mut other), Err(e) if e.kind() == foreign));
    let refused = rx.drain(&mut other, pool.try_get().unwrap()).unwrap_err();
    drop(refused);
    other.poll().unwrap();
    assert!(
        !other.is_done(&ticket),
        "the foreign ring's poll was cancelled"
    );
    // The receiver still works on its own ring.
    let mut tx = src.tx;
    tx.write_all(b"hello").unwrap();
    let r = rx.run(&mut ring).unwrap();
    assert_eq!(r.buf.data(), b"hello");
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
    let mut theirs_tx = theirs.tx;
    theirs_tx.write_all(b"x").unwrap();
    let c = other.wait(ticket).unwrap();
    assert!(c.result().is_ok());
    check_teardown(&other, &[]);
}
