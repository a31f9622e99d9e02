//! FIFO receive in steady state performs zero heap allocations: transactions that run dry,
//! wait for readiness, and complete — on a real pipe, written by this thread between
//! steps.

use std::os::fd::AsRawFd;
use std::time::Duration;

use iocomplete::{Driver, FifoReceiver, FifoStatus, Ring};

use crate::common::{self, alloc::counted, fd::write_fd};

#[test]
fn steady_state_fifo_receive_does_not_allocate() {
    let (rx, tx) = common::fd::pipe();
    common::fd::set_nonblocking(rx.as_raw_fd());
    let mut ring = Ring::new().unwrap();
    let pool = common::pool(4, 4096);
    ring.register_pool(&pool);
    let t = ring.register(rx).unwrap();
    let mut fifo = FifoReceiver::new(&ring, t).unwrap();

    // Each round: half the bytes are there, the receiver runs dry and arms its readiness
    // poll, the other half arrives, the transaction completes full.
    let round = |ring: &mut Ring, fifo: &mut FifoReceiver, i: u64| {
        let msg = i.to_le_bytes();
        write_fd(tx.as_raw_fd(), &msg);
        fifo.receive(ring, pool.try_get().unwrap(), 16).unwrap();
        loop {
            assert!(fifo.process(ring).unwrap().is_none());
            if fifo.is_waiting_for_readiness() {
                break;
            }
            ring.run_once(Some(Duration::from_secs(5))).unwrap();
        }
        write_fd(tx.as_raw_fd(), &msg);
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
    let ((), n) = counted(|| {
        for i in 0..1000 {
            round(&mut ring, &mut fifo, i);
        }
    });
    assert_eq!(fifo.readiness_waits() - waits, 1000);
    assert_eq!(n, 0, "{n} allocations in 1000 FIFO transactions");
    drop(fifo);
    common::check_teardown(&ring, &[&pool]);
}
