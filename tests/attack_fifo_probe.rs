//! Outside attack on the FIFO receiver's `poll(2)` probe (sources that refuse `RWF_NOWAIT`:
//! named FIFOs opened by path, ptys, character devices) and on its waiting for a named
//! FIFO's first writer. Public API only; every test is bounded (a watchdog, and loops with
//! limits that clean up before they fail), verifies content and checks teardown. Runs on
//! both backends (`IOCOMPLETE_BACKEND=threads` for the thread pool).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::bounds::watchdog;
use common::drivers::{logged_fifo as logged, run_until_idle};
use common::fd::{fifo_in, payload, pty, raw_pty, set_nonblocking, trickle};
use common::{check_teardown, ring_with};
use iocomplete::{BufferPool, Driver, FifoReceived, FifoReceiver, FifoStatus, Ring};

// ---- helpers -------------------------------------------------------------------------------

fn pool(slots: usize, len: usize) -> BufferPool {
    common::pool_hdr(slots, len, 8)
}

/// Open the FIFO at `path` for reading, non-blocking (does not wait for a writer).
fn open_reader(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// Open the FIFO at `path` for writing (blocking: a reader must be there).
fn open_writer(path: &Path) -> File {
    std::fs::OpenOptions::new().write(true).open(path).unwrap()
}

/// A named FIFO with no writer yet: (dir guard, path, reader).
fn lonely_fifo() -> (tempfile::TempDir, PathBuf, File) {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo_in(dir.path());
    let rx = open_reader(&path);
    (dir, path, rx)
}

/// Drive until the receiver completes, at most `limit`; `None` if it did not (the
/// transaction is still in progress).
fn run_bounded(ring: &mut Ring, rx: &mut FifoReceiver, limit: Duration) -> Option<FifoReceived> {
    let end = Instant::now() + limit;
    loop {
        if let Some(r) = rx.process(ring).unwrap() {
            return Some(r);
        }
        if Instant::now() >= end {
            return None;
        }
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

/// Like [`run_bounded`], but a transaction still running after `limit` is cancelled and
/// collected (so teardown stays checkable), then the test fails with `what`.
fn finish(ring: &mut Ring, rx: &mut FifoReceiver, limit: Duration, what: &str) -> FifoReceived {
    if let Some(r) = run_bounded(ring, rx, limit) {
        assert_once(ring, rx);
        return r;
    }
    let cancelled = rx.cancel(ring);
    let late = run_bounded(ring, rx, Duration::from_secs(5));
    panic!(
        "{what}: no completion within {limit:?} (cancel accepted: {cancelled}, then: {:?})",
        late.map(|r| (r.status(), r.bytes()))
    );
}

/// After a completion: nothing more to collect, the receiver idle.
fn assert_once(ring: &mut Ring, rx: &mut FifoReceiver) {
    assert!(rx.process(ring).unwrap().is_none(), "completed twice");
    assert!(rx.is_idle(), "not idle after its completion");
    assert!(rx.current().is_none());
}

/// Drive until the receiver has armed its readiness wait (at most 5 s).
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

/// Read everything `f` (non-blocking) holds now.
fn steal_all(f: &mut File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match f.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(e) => panic!("steal: {e}"),
        }
    }
}

/// Switch the receiver of a named FIFO to probing (its first read is refused `RWF_NOWAIT`)
/// with one small transaction, checked.
fn switch_to_probe(ring: &mut Ring, rx: &mut FifoReceiver, pool: &BufferPool, tx: &mut File) {
    tx.write_all(b"warmup").unwrap();
    rx.receive(ring, pool.try_get().unwrap(), 6).unwrap();
    let r = finish(ring, rx, Duration::from_secs(5), "warm-up");
    assert_eq!(
        (r.status(), r.buf.data()),
        (FifoStatus::Full, &b"warmup"[..])
    );
    assert!(
        !rx.uses_nowait_reads(),
        "a FIFO opened by path took RWF_NOWAIT"
    );
}

// ---- 1. many tiny bursts, random pauses --------------------------------------------------

/// Receive `data` in transactions of random lengths (1..=max_len) while a writer trickles
/// it in tiny bursts; exact bytes, each transaction once, hooks paired.
fn tiny_bursts(rx_fd: OwnedFd, tx: File, name: &str, seed: u64, total: usize, max_len: usize) {
    let _wd = watchdog("tiny_bursts", 120);
    let data = payload(seed, total);
    let pool = pool(3, max_len);
    let (mut ring, t) = ring_with(&pool, rx_fd);
    let (mut rx, log) = logged(&ring, t);
    let writer = trickle(tx, data.clone(), seed, 13, 800);
    let mut rng = common::rng(seed ^ 0x55);
    let mut got = Vec::new();
    let mut lens = Vec::new();
    let mut waits = 0u64;
    while got.len() < total {
        let len = (1 + rng.usize(..max_len)).min(total - got.len());
        let txn = rx.receive(&mut ring, pool.try_get().unwrap(), len).unwrap();
        let r = finish(&mut ring, &mut rx, Duration::from_secs(20), name);
        assert_eq!(r.outcome.txn, txn);
        assert_eq!(r.status(), FifoStatus::Full, "{name}");
        assert_eq!((r.bytes(), r.buf.len()), (len, len), "{name}");
        waits += u64::from(r.readiness_waits());
        got.extend_from_slice(r.buf.data());
        lens.push(len as u32);
    }
    let (_tx, bursts) = writer.join().unwrap();
    assert!(got == data, "{name}: received bytes differ");
    assert_eq!(rx.readiness_waits(), waits, "{name}: lifetime waits != sum");
    assert!(rx.readiness_waits() > 0, "{name}: never waited");
    assert_eq!(rx.transactions(), lens.len() as u64);
    // No busy loop: a wait needs a burst to end it (slack for a tty's probe racing one).
    assert!(
        waits <= 2 * bursts + 4,
        "{name}: {waits} waits for {bursts} bursts"
    );
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2 * lens.len(), "{name}: hooks");
    for (pair, &len) in log.chunks(2).zip(&lens) {
        assert_eq!((pair[0].0, pair[1].0), ('B', 'E'));
        assert_eq!(pair[0].1, pair[1].1);
        assert_eq!((pair[0].2, pair[1].2), (len, len));
    }
    eprintln!(
        "{name}: {total} bytes, {bursts} bursts, {} receives, {waits} waits, nowait {}",
        lens.len(),
        rx.uses_nowait_reads()
    );
    assert!(!rx.uses_nowait_reads(), "{name}: took RWF_NOWAIT?");
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn named_fifo_tiny_bursts_exact_bytes_each_txn_once() {
    let (_dir, path, rx) = lonely_fifo();
    let tx = open_writer(&path);
    tiny_bursts(rx.into(), tx, "named FIFO", 101, 6000, 300);
}

#[test]
fn raw_pty_tiny_bursts_exact_bytes_each_txn_once() {
    let (master, slave) = raw_pty();
    set_nonblocking(slave.as_raw_fd());
    tiny_bursts(slave, master.into(), "raw pty", 102, 4000, 200);
}

// ---- 2. a second reader steals between probe and read -----------------------------------

/// Set up: a FIFO receiver in probe mode, data written, and the receiver's transaction
/// started (`start`), whose probe saw the data; then a second reader takes all of it
/// before the ring ran (the read is queued, not yet in the kernel).
fn stolen(
    start: impl FnOnce(&mut Ring, &mut FifoReceiver, &BufferPool),
) -> (
    Ring,
    FifoReceiver,
    BufferPool,
    File,
    File,
    tempfile::TempDir,
) {
    let (dir, path, rx_file) = lonely_fifo();
    let mut tx = open_writer(&path);
    let mut thief = open_reader(&path);
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, rx_file);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    switch_to_probe(&mut ring, &mut rx, &pool, &mut tx);
    tx.write_all(&[0xA5; 50]).unwrap();
    start(&mut ring, &mut rx, &pool);
    assert!(
        !rx.is_waiting_for_readiness(),
        "the probe did not see the data written"
    );
    let took = steal_all(&mut thief);
    assert_eq!(took, [0xA5; 50], "the thief did not get the data first");
    (ring, rx, pool, tx, thief, dir)
}

#[test]
fn stolen_data_receive_with_deadline_times_out_cleanly() {
    let _wd = watchdog("stolen_deadline", 60);
    let (mut ring, mut rx, pool, tx, thief, _dir) = stolen(|ring, rx, pool| {
        rx.receive_with_deadline(
            ring,
            pool.try_get().unwrap(),
            100,
            Duration::from_millis(200),
        )
        .unwrap();
    });
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "stolen + deadline",
    );
    assert_eq!((r.status(), r.bytes()), (FifoStatus::TimedOut, 0));
    drop(r);
    // The receiver still works: new data, a new transaction.
    let mut tx = tx;
    tx.write_all(b"after").unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 5).unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "after steal");
    assert_eq!(
        (r.status(), r.buf.data()),
        (FifoStatus::Full, &b"after"[..])
    );
    drop((r, rx, thief));
    check_teardown(&ring, &[&pool]);
}

#[test]
fn stolen_data_receive_waits_for_more_and_cancel_ends_it() {
    let _wd = watchdog("stolen_cancel", 60);
    let (mut ring, mut rx, pool, mut tx, thief, _dir) = stolen(|ring, rx, pool| {
        rx.receive(ring, pool.try_get().unwrap(), 20).unwrap();
    });
    // Documented: the read waits in the kernel for more. It must take new data, exactly.
    assert!(run_bounded(&mut ring, &mut rx, Duration::from_millis(100)).is_none());
    tx.write_all(b"0123456789abcdefghij").unwrap();
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "stolen then data",
    );
    assert_eq!(r.status(), FifoStatus::Full);
    assert_eq!(r.buf.data(), b"0123456789abcdefghij");
    drop(r);
    // Steal again and cancel instead.
    tx.write_all(&[1; 30]).unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
    let mut thief = thief;
    let took = steal_all(&mut thief);
    assert_eq!(took, [1; 30]);
    assert!(run_bounded(&mut ring, &mut rx, Duration::from_millis(50)).is_none());
    assert!(rx.cancel(&mut ring));
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "stolen + cancel",
    );
    assert_eq!((r.status(), r.bytes()), (FifoStatus::Cancelled, 0));
    drop((r, rx, thief, tx));
    check_teardown(&ring, &[&pool]);
}

/// A drain promises never to wait, and has no deadline. Found by this attack: after a steal
/// between probe and read, the drain's plain read waited in the kernel for data that might
/// never come; a drain's reads now also carry a zero linked timeout.
#[test]
fn stolen_data_drain_still_ends_drained() {
    let _wd = watchdog("stolen_drain", 60);
    let (mut ring, mut rx, pool, tx, thief, _dir) = stolen(|ring, rx, pool| {
        rx.drain(ring, pool.try_get().unwrap()).unwrap();
    });
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(2),
        "drain after steal",
    );
    assert_eq!((r.status(), r.bytes()), (FifoStatus::Drained, 0));
    assert_eq!(r.readiness_waits(), 0);
    drop((r, rx, thief, tx));
    check_teardown(&ring, &[&pool]);
}

// ---- 3. writers that come and go ---------------------------------------------------------

#[test]
fn writer_opens_and_closes_without_writing_ends_not_hangs() {
    let _wd = watchdog("writer_opens_closes", 60);
    // (a) while the receiver waits for its first writer
    let (_dir, path, rx_file) = lonely_fifo();
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, rx_file);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 10).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    drop(open_writer(&path));
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "writer came and went",
    );
    assert!(
        matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp),
        "{:?}",
        r.status()
    );
    assert_eq!(r.bytes(), 0);
    drop(r);
    // Afterwards (no writer, one has been): a receive ends at once, a drain too.
    rx.receive(&mut ring, pool.try_get().unwrap(), 10).unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "after hang-up");
    assert!(matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp));
    drop(r);
    rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "drain after hang-up",
    );
    assert!(
        matches!(r.status(), FifoStatus::Eof | FifoStatus::Drained),
        "{:?}",
        r.status()
    );
    drop(r);
    // A new writer: data flows again.
    let mut tx = open_writer(&path);
    tx.write_all(b"again").unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 5).unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "new writer");
    assert_eq!(
        (r.status(), r.buf.data()),
        (FifoStatus::Full, &b"again"[..])
    );
    drop((r, rx, tx));
    check_teardown(&ring, &[&pool]);

    // (b) a writer came and went before the first receive (after the reader opened)
    let (_dir, path, rx_file) = lonely_fifo();
    drop(open_writer(&path));
    let (mut ring, t) = ring_with(&pool, rx_file);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 10).unwrap();
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "writer gone before",
    );
    assert!(matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp));
    assert_eq!(r.bytes(), 0);
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
}

#[test]
fn writer_closes_mid_transaction_keeps_every_byte() {
    let _wd = watchdog("writer_closes_mid", 60);
    for round in 0..20u64 {
        let (_dir, path, rx_file) = lonely_fifo();
        let pool = pool(2, 4096);
        let (mut ring, t) = ring_with(&pool, rx_file);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        let data = payload(200 + round, 3000);
        // Start before any writer exists, on even rounds.
        if round % 2 == 0 {
            rx.receive(&mut ring, pool.try_get().unwrap(), 4000)
                .unwrap();
        }
        let tx = open_writer(&path);
        let w = trickle(tx, data.clone(), 200 + round, 200, 300);
        if round % 2 == 1 {
            rx.receive(&mut ring, pool.try_get().unwrap(), 4000)
                .unwrap();
        }
        let (tx, _) = w.join().unwrap();
        drop(tx);
        let r = finish(
            &mut ring,
            &mut rx,
            Duration::from_secs(5),
            "mid-transaction close",
        );
        assert!(
            matches!(r.status(), FifoStatus::Eof | FifoStatus::HangUp),
            "round {round}: {:?}",
            r.status()
        );
        assert!(
            r.buf.data() == &data[..],
            "round {round}: bytes differ ({})",
            r.bytes()
        );
        drop((r, rx));
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn fifo_writer_never_comes_deadline_times_out() {
    let _wd = watchdog("writer_never_comes", 60);
    let (_dir, _path, rx_file) = lonely_fifo();
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, rx_file);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    let t0 = Instant::now();
    rx.receive_with_deadline(
        &mut ring,
        pool.try_get().unwrap(),
        10,
        Duration::from_millis(100),
    )
    .unwrap();
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "no writer + deadline",
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!((r.status(), r.bytes()), (FifoStatus::TimedOut, 0));
    assert!(r.readiness_waits() >= 1, "timed out without waiting?");
    assert!(r.into_result().unwrap_err().is_timed_out());
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

// ---- 4. cancel and deadline at awkward moments ------------------------------------------

#[test]
fn cancel_and_deadline_right_after_receive_and_while_waiting() {
    let _wd = watchdog("cancel_deadline", 60);
    for probe_first in [false, true] {
        for with_data in [false, true] {
            let (_dir, path, rx_file) = lonely_fifo();
            let mut tx = open_writer(&path);
            let pool = pool(2, 256);
            let (mut ring, t) = ring_with(&pool, rx_file);
            let mut rx = FifoReceiver::new(&ring, t).unwrap();
            if probe_first {
                switch_to_probe(&mut ring, &mut rx, &pool, &mut tx);
            }
            let what = format!("probe {probe_first} data {with_data}");
            let data = payload(300, 40);
            if with_data {
                tx.write_all(&data).unwrap();
            }
            // Cancel right after receive() returned (the first read not yet in the kernel,
            // on the first round the RWF_NOWAIT read the FIFO will refuse).
            rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
            assert!(rx.cancel(&mut ring), "{what}");
            assert!(rx.cancel(&mut ring), "{what}: second cancel"); // changes nothing
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!(r.status(), FifoStatus::Cancelled, "{what}");
            let got = r.bytes();
            assert!(r.buf.data() == &data[..got.min(data.len())] && (got == 0 || with_data));
            drop(r);
            let mut seen = got;
            // Zero deadline right away.
            rx.receive_with_deadline(&mut ring, pool.try_get().unwrap(), 100, Duration::ZERO)
                .unwrap();
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!(r.status(), FifoStatus::TimedOut, "{what}");
            assert!(r.buf.data() == &data[seen.min(data.len())..seen + r.bytes()]);
            seen += r.bytes();
            drop(r);
            // Drain what is left, then cancel and deadline while waiting after an empty probe.
            rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!(r.status(), FifoStatus::Drained, "{what}");
            assert!(r.buf.data() == &data[seen.min(data.len())..seen + r.bytes()]);
            seen += r.bytes();
            assert_eq!(seen, if with_data { 40 } else { 0 }, "{what}: bytes lost");
            drop(r);
            rx.receive(&mut ring, pool.try_get().unwrap(), 10).unwrap();
            drive_until_waiting(&mut ring, &mut rx);
            assert!(rx.cancel(&mut ring));
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!(
                (r.status(), r.bytes()),
                (FifoStatus::Cancelled, 0),
                "{what}"
            );
            drop(r);
            rx.receive_with_deadline(
                &mut ring,
                pool.try_get().unwrap(),
                10,
                Duration::from_millis(50),
            )
            .unwrap();
            drive_until_waiting(&mut ring, &mut rx);
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!((r.status(), r.bytes()), (FifoStatus::TimedOut, 0), "{what}");
            drop(r);
            // Still works.
            tx.write_all(b"ok").unwrap();
            rx.receive(&mut ring, pool.try_get().unwrap(), 2).unwrap();
            let r = finish(&mut ring, &mut rx, Duration::from_secs(5), &what);
            assert_eq!(r.buf.data(), b"ok");
            assert!(!rx.uses_nowait_reads(), "{what}");
            drop((r, rx, tx));
            check_teardown(&ring, &[&pool]);
        }
    }
}

// ---- 5. drain ----------------------------------------------------------------------------

#[test]
fn drain_on_an_empty_named_fifo_ends_at_once() {
    let _wd = watchdog("drain_empty", 60);
    // Never a writer; a writer open but silent; first transaction and later ones.
    for writer in [false, true] {
        let (_dir, path, rx_file) = lonely_fifo();
        let tx = writer.then(|| open_writer(&path));
        let pool = pool(2, 256);
        let (mut ring, t) = ring_with(&pool, rx_file);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        for i in 0..3 {
            rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
            let r = finish(
                &mut ring,
                &mut rx,
                Duration::from_secs(2),
                "drain of empty FIFO",
            );
            assert_eq!(
                (r.status(), r.bytes(), r.readiness_waits()),
                (FifoStatus::Drained, 0, 0),
                "writer {writer}, drain {i}"
            );
        }
        assert_eq!(rx.readiness_waits(), 0);
        drop((rx, tx));
        check_teardown(&ring, &[&pool]);
    }
}

// ---- 6. dropping the receiver or the ring while waiting ---------------------------------

#[test]
fn dropping_receiver_while_waiting_for_a_first_writer() {
    let _wd = watchdog("drop_rx", 60);
    for deadline in [None, Some(Duration::from_secs(3600))] {
        let (_dir, _path, rx_file) = lonely_fifo();
        let pool = pool(2, 256);
        let (mut ring, t) = ring_with(&pool, rx_file);
        let mut rx = FifoReceiver::new(&ring, t).unwrap();
        match deadline {
            None => rx.receive(&mut ring, pool.try_get().unwrap(), 10).unwrap(),
            Some(d) => rx
                .receive_with_deadline(&mut ring, pool.try_get().unwrap(), 10, d)
                .unwrap(),
        };
        drive_until_waiting(&mut ring, &mut rx);
        drop(rx);
        run_until_idle(&mut ring, Duration::from_secs(5), "dropped receiver's wait");
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn dropping_the_ring_while_waiting_or_reading_after_a_steal() {
    let _wd = watchdog("drop_ring", 60);
    // (a) waiting for readiness on a writer-less FIFO
    let (_dir, _path, rx_file) = lonely_fifo();
    let pool1 = pool(2, 256);
    let (mut ring, t) = ring_with(&pool1, rx_file);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    rx.receive(&mut ring, pool1.try_get().unwrap(), 10).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    let t0 = Instant::now();
    drop(ring);
    drop(rx);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let st = pool1.stats();
    assert_eq!(st.free, st.total, "slot lost: {st:?}");
    // (b) a plain read waiting in the kernel (data stolen after the probe)
    let (ring, rx, pool2, tx, thief, _dir2) = stolen(|ring, rx, pool| {
        rx.receive(ring, pool.try_get().unwrap(), 100).unwrap();
    });
    let mut ring = ring;
    ring.run_once(Some(Duration::from_millis(20))).unwrap();
    let t0 = Instant::now();
    drop(ring);
    drop(rx);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "ring drop took {:?}",
        t0.elapsed()
    );
    let st = pool2.stats();
    assert_eq!(st.free, st.total, "slot lost: {st:?}");
    drop((tx, thief));
}

// ---- 7. character devices and a cooked tty ---------------------------------------------

fn char_dev(path: &str) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

#[test]
fn dev_null_and_dev_zero() {
    let _wd = watchdog("dev_null_zero", 60);
    let pool = pool(2, 4096);
    let (mut ring, t) = ring_with(&pool, char_dev("/dev/null"));
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    for _ in 0..2 {
        rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
        let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "/dev/null");
        assert_eq!((r.status(), r.bytes()), (FifoStatus::Eof, 0));
        drop(r);
        rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
        let r = finish(
            &mut ring,
            &mut rx,
            Duration::from_secs(5),
            "/dev/null drain",
        );
        assert_eq!((r.status(), r.bytes()), (FifoStatus::Eof, 0));
    }
    eprintln!("/dev/null: nowait {}", rx.uses_nowait_reads());
    assert_eq!(rx.readiness_waits(), 0);
    drop(rx);
    check_teardown(&ring, &[&pool]);

    let (mut ring, t) = ring_with(&pool, char_dev("/dev/zero"));
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    for _ in 0..3 {
        let mut b = pool.try_get().unwrap();
        b.extend_from_slice(&[0xEE; 4096]).unwrap();
        rx.receive(&mut ring, b, 4096).unwrap();
        let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "/dev/zero");
        assert_eq!(r.status(), FifoStatus::Full);
        assert!(r.buf.data().iter().all(|&b| b == 0) && r.bytes() == 4096);
        drop(r);
        rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
        let r = finish(
            &mut ring,
            &mut rx,
            Duration::from_secs(5),
            "/dev/zero drain",
        );
        assert_eq!((r.status(), r.bytes()), (FifoStatus::Full, 4096));
    }
    eprintln!("/dev/zero: nowait {}", rx.uses_nowait_reads());
    assert_eq!(rx.readiness_waits(), 0);
    drop(rx);
    check_teardown(&ring, &[&pool]);
}

/// A pty slave in canonical mode: a partial line is not readable (poll says so, and a read
/// would say EAGAIN), so it must not be delivered; a whole line is, exactly, once.
#[test]
fn cooked_pty_partial_line_waits_whole_line_arrives_once() {
    let _wd = watchdog("cooked_pty", 60);
    let (master, slave) = pty();
    set_nonblocking(slave.as_raw_fd());
    let mut m: File = master.into();
    let pool = pool(2, 256);
    let (mut ring, t) = ring_with(&pool, slave);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    m.write_all(b"abc").unwrap();
    rx.receive_with_deadline(
        &mut ring,
        pool.try_get().unwrap(),
        7,
        Duration::from_millis(150),
    )
    .unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "partial line");
    assert_eq!(
        (r.status(), r.bytes()),
        (FifoStatus::TimedOut, 0),
        "partial line delivered"
    );
    drop(r);
    assert!(!rx.uses_nowait_reads(), "a tty took RWF_NOWAIT");
    rx.receive(&mut ring, pool.try_get().unwrap(), 7).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    m.write_all(b"def\n").unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "whole line");
    assert_eq!(
        (r.status(), r.buf.data()),
        (FifoStatus::Full, &b"abcdef\n"[..])
    );
    drop(r);
    // Two lines, received as one transaction of their total length; nothing duplicated.
    m.write_all(b"one\ntwo\n").unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 8).unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "two lines");
    assert_eq!(
        (r.status(), r.buf.data()),
        (FifoStatus::Full, &b"one\ntwo\n"[..])
    );
    drop(r);
    rx.drain(&mut ring, pool.try_get().unwrap()).unwrap();
    let r = finish(&mut ring, &mut rx, Duration::from_secs(5), "drain cooked");
    assert_eq!((r.status(), r.bytes()), (FifoStatus::Drained, 0));
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
    // The echo went back to the master: drain it so its close is clean.
    set_nonblocking(m.as_raw_fd());
    let _ = steal_all(&mut m);
}

/// A raw pty whose master closes mid-transaction: the bytes before the close come back
/// (a prefix of what was written, in order), and it ends — no hang.
#[test]
fn raw_pty_master_closes_mid_transaction_ends() {
    let _wd = watchdog("pty_close", 60);
    let (master, slave) = raw_pty();
    set_nonblocking(slave.as_raw_fd());
    let pool = pool(2, 4096);
    let (mut ring, t) = ring_with(&pool, slave);
    let mut rx = FifoReceiver::new(&ring, t).unwrap();
    let mut m: File = master.into();
    m.write_all(b"hello").unwrap();
    rx.receive(&mut ring, pool.try_get().unwrap(), 100).unwrap();
    drive_until_waiting(&mut ring, &mut rx);
    m.write_all(b" world").unwrap();
    drop(m);
    let r = finish(
        &mut ring,
        &mut rx,
        Duration::from_secs(5),
        "pty master closed",
    );
    eprintln!(
        "pty close: {:?} {:?}",
        r.status(),
        String::from_utf8_lossy(r.buf.data())
    );
    assert!(
        matches!(
            r.status(),
            FifoStatus::Eof | FifoStatus::HangUp | FifoStatus::Failed(_)
        ),
        "{:?}",
        r.status()
    );
    assert!(b"hello world".starts_with(r.buf.data()));
    assert!(r.bytes() >= 5, "bytes received before the wait lost");
    drop((r, rx));
    check_teardown(&ring, &[&pool]);
}
