//! FIFO receive in steady state performs zero heap allocations: a counting global
//! allocator (this test binary only) watches transactions that run dry, wait for
//! readiness, and complete — on a real pipe, written by this thread between steps. Only
//! this thread's allocations count (the test harness's own threads allocate at will).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use iocomplete::{BufferPool, Driver, FifoReceiver, FifoStatus, Ring};

#[path = "common/alloc.rs"]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

fn write(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: writes `bytes.len()` bytes from a valid slice to a descriptor we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

#[test]
fn steady_state_fifo_receive_does_not_allocate() {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(r, 0);
    // SAFETY: pipe2 returned these descriptors; each is owned once.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut ring = Ring::new().unwrap();
    let pool = BufferPool::builder()
        .slots(4)
        .slot_len(4096)
        .build()
        .unwrap();
    ring.register_pool(&pool);
    let t = ring.register(rx).unwrap();
    let mut fifo = FifoReceiver::new(&ring, t).unwrap();

    // Each round: half the bytes are there, the receiver runs dry and arms its readiness
    // poll, the other half arrives, the transaction completes full.
    let round = |ring: &mut Ring, fifo: &mut FifoReceiver, i: u64| {
        let msg = i.to_le_bytes();
        write(&tx, &msg);
        fifo.receive(ring, pool.try_get().unwrap(), 16).unwrap();
        loop {
            assert!(fifo.process(ring).unwrap().is_none());
            if fifo.is_waiting_for_readiness() {
                break;
            }
            ring.run_once(Some(Duration::from_secs(5))).unwrap();
        }
        write(&tx, &msg);
        let r = fifo.run(ring).unwrap();
        assert_eq!(r.status(), FifoStatus::Full);
        assert_eq!(r.readiness_waits(), 1);
        assert_eq!(&r.buf.data()[..8], &msg);
        assert_eq!(&r.buf.data()[8..], &msg);
    };
    for i in 0..100 {
        round(&mut ring, &mut fifo, i);
    }
    let waits = fifo.readiness_waits();
    let ((), n) = alloc::counted(|| {
        for i in 0..1000 {
            round(&mut ring, &mut fifo, i);
        }
    });
    assert_eq!(fifo.readiness_waits() - waits, 1000);
    assert_eq!(n, 0, "{n} allocations in 1000 FIFO transactions");
    drop(fifo);
    common::check_teardown(&ring, &[&pool]);
}
