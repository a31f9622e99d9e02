//! Every driver refuses a ring it was not built for, and a FIFO hook that panics loses no
//! completion (found by the outside attack on the Driver trait, issue 12). Each test is
//! bounded by a watchdog that fails the run instead of hanging.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use iocomplete::dma::{DmaConfig, DmaDriver, SgList};
use iocomplete::split::{Job, SplitConfig, SplitDriver};
use iocomplete::{BufferPool, Direction, Driver, FifoReceiver, Ring};

/// Exits the process (failing the run) if not dropped within `secs`.
struct Watchdog(Option<mpsc::Sender<()>>);

fn watchdog(name: &'static str, secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            eprintln!("WATCHDOG: {name} still running after {secs} s: hang");
            std::process::exit(101);
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn pool(slots: usize, len: usize) -> BufferPool {
    BufferPool::builder()
        .slots(slots)
        .slot_len(len)
        .build()
        .unwrap()
}

fn file_with(len: usize) -> File {
    let mut f = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this test owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
    }
}

/// (non-blocking read end, blocking write end)
fn pipe() -> (OwnedFd, File) {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    set_nonblocking(fds[0]);
    // SAFETY: just created, owned once.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn assert_all_free(p: &BufferPool, what: &str) {
    // slots may come back from other threads (workers): give them a moment
    let t0 = Instant::now();
    loop {
        let s = p.stats();
        if s.free == s.total {
            return;
        }
        if t0.elapsed() > Duration::from_secs(2) {
            panic!("{what}: pool slots not back: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_bounded<D: Driver>(d: &mut D, ring: &mut Ring, within: Duration) -> Option<D::Output> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some(o) = d.step(ring, Some(Duration::from_millis(20))).unwrap() {
            return Some(o);
        }
    }
    None
}

fn split_read(
    ring: &mut Ring,
    p: &BufferPool,
    len: u64,
    cfg: SplitConfig,
) -> iocomplete::Result<SplitDriver> {
    let f = ring.register(file_with(64 * 1024)).unwrap();
    SplitDriver::new(
        ring,
        p,
        Job::Read {
            src: f,
            offset: 0,
            len,
        },
        cfg,
    )
}

fn dma_file(ring: &mut Ring) -> iocomplete::Target {
    ring.register(file_with(256 * 1024)).unwrap()
}

/// `Driver::process`: "# Errors: If the ring failed, or is not the one the driver was built
/// for." A split driver given another ring submits its children there instead (each is
/// refused `StaleTarget`) and hands out its one outcome — the request is consumed.
#[test]
fn split_process_on_wrong_ring_consumes_request() {
    let _w = watchdog("finding_split_wrong_ring", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(8, 4096);
    ring.register_pool(&p);
    let mut d = split_read(&mut ring, &p, 50_000, SplitConfig::new()).unwrap();
    let r = d.process(&mut other);
    let submitted = other.stats().submitted;
    assert!(
        r.is_err() && submitted == 0,
        "process(other ring) -> {r:?}, {submitted} ops submitted on the other ring"
    );
    let out = d.run(&mut ring).unwrap();
    assert_eq!((out.status, out.bytes), (Ok(()), 50_000));
}

/// Mid-flight, no deadline: children are in the kernel of the driver's ring (not reaped
/// yet) when `process(&mut other)` is called: it is not refused, and submits there.
#[test]
fn split_wrong_ring_mid_flight_not_refused() {
    let _w = watchdog("finding_split_wrong_ring_mid_early", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(8, 4096);
    ring.register_pool(&p);
    let mut d = split_read(&mut ring, &p, 60_000, SplitConfig::new()).unwrap();
    d.process(&mut ring).unwrap();
    let in_kernel = ring.in_flight();
    let r = d.process(&mut other);
    eprintln!(
        "children in the kernel: {in_kernel}; process(other) -> {r:?}; d.in_flight()={}",
        d.in_flight()
    );
    let out = run_bounded(&mut d, &mut ring, Duration::from_secs(3));
    eprintln!(
        "then on its own ring: {out:?}; other ring {:?}",
        other.stats()
    );
    assert!(r.is_err() && other.stats().submitted == 0, "process(other) mid-flight -> {r:?} with {in_kernel} children in the kernel; other ring got {} ops", other.stats().submitted);
    let out = out.expect("never completed");
    assert_eq!((out.status, out.bytes), (Ok(()), 60_000));
}

/// Mid-flight, with a deadline: after one `process(&mut other)` the request never
/// completes on its own ring; its deadline timer stays armed in the ring and its children's
/// slots stay out until the driver is dropped.
#[test]
fn split_wrong_ring_mid_flight_wedges_with_deadline() {
    let _w = watchdog("finding_split_wrong_ring_mid_wedge", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(8, 4096);
    ring.register_pool(&p);
    let mut d = split_read(
        &mut ring,
        &p,
        60_000,
        SplitConfig::new().deadline(Duration::from_secs(3600)),
    )
    .unwrap();
    d.process(&mut ring).unwrap();
    ring.run_once(Some(Duration::from_millis(50))).unwrap();
    let r = d.process(&mut other);
    eprintln!(
        "process(other) mid-flight -> {r:?}; other ring {:?}",
        other.stats()
    );
    let out = run_bounded(&mut d, &mut ring, Duration::from_secs(3));
    let (inflight, st, idle) = (ring.in_flight(), p.stats(), d.is_idle());
    eprintln!("own ring after 3 s: outcome {out:?}, ring.in_flight={inflight}, d.is_idle={idle}, pool {st:?}");
    assert!(r.is_err(), "process(other) not refused: {r:?}");
    assert!(
        out.is_some(),
        "never completed: ring.in_flight={inflight}, pool {st:?}"
    );
}

/// A DMA driver given another ring submits there too — including its deadline timer, armed
/// in the foreign ring — and hands out a `StaleTarget` outcome.
#[test]
fn dma_process_on_wrong_ring_submits_there() {
    let _w = watchdog("finding_dma_wrong_ring", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(8, 4096);
    ring.register_pool(&p);
    let f = dma_file(&mut ring);
    let mut sg = SgList::new();
    sg.push_extent(&p, 0, 20_000).unwrap();
    let mut d = DmaDriver::builder(f, sg, Direction::Read)
        .deadline(Duration::from_secs(3600))
        .build(&mut ring)
        .unwrap();
    let r = d.process(&mut other);
    let (sub, inf) = (other.stats().submitted, other.in_flight());
    assert!(
        r.is_err() && sub == 0,
        "process(other ring) -> {:?}; {sub} ops submitted on the other ring, {inf} still in its kernel",
        r.map(|o| o.map(|(o, _)| o))
    );
    let (out, _sg) = d.run(&mut ring).unwrap();
    assert_eq!(out.status, Ok(()));
}

/// Mid-flight, the DMA driver on the wrong ring.
#[test]
fn dma_wrong_ring_mid_flight() {
    let _w = watchdog("finding_dma_wrong_ring_mid", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(16, 4096);
    ring.register_pool(&p);
    let f = dma_file(&mut ring);
    let mut sg = SgList::new();
    sg.push_extent(&p, 0, 60_000).unwrap();
    let mut d = DmaDriver::builder(f, sg, Direction::Read)
        .config(DmaConfig::new().max_transfer(4096).max_in_flight(2))
        .deadline(Duration::from_secs(3600))
        .build(&mut ring)
        .unwrap();
    d.process(&mut ring).unwrap();
    ring.run_once(Some(Duration::from_millis(50))).unwrap();
    let r = d.process(&mut other);
    let sub = other.stats().submitted;
    let out = run_bounded(&mut d, &mut ring, Duration::from_secs(3));
    eprintln!(
        "dma mid-flight wrong ring: {:?}, other submitted {sub}, then own ring -> {:?}",
        r.as_ref().map(|o| o.as_ref().map(|(o, _)| *o)),
        out.as_ref().map(|(o, _)| *o)
    );
    eprintln!(
        "  own ring: in_flight={} d.in_flight={} idle={} pool {:?}",
        ring.in_flight(),
        d.in_flight(),
        d.is_idle(),
        p.stats()
    );
    assert!(
        r.is_err() && sub == 0,
        "mid-flight process(other) not refused"
    );
    let (o, _sg) = out.expect("never completed");
    assert_eq!((o.status, o.bytes), (Ok(()), 60_000));
}

/// `on_end` panicking: the transaction's one completion is never handed out (the receiver
/// reports idle, `process` gives `None` forever) — it completed zero times.
#[test]
fn fifo_on_end_panic_loses_completion() {
    let _w = watchdog("finding_fifo_on_end_panic", 20);
    let mut ring = Ring::new().unwrap();
    let p = pool(4, 4096);
    let (rx, mut tx) = pipe();
    let src = ring.register(rx).unwrap();
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    let mut fifo = FifoReceiver::new(&ring, src).unwrap().on_end(move |_, _| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("boom on_end")
        }
    });
    tx.write_all(&[3; 10]).unwrap();
    fifo.receive(&mut ring, p.try_get().unwrap(), 10).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        run_bounded(&mut fifo, &mut ring, Duration::from_secs(5))
    }));
    assert!(r.is_err());
    let mut after = None;
    for _ in 0..20 {
        if let Ok(Ok(Some(x))) = catch_unwind(AssertUnwindSafe(|| {
            fifo.step(&mut ring, Some(Duration::from_millis(10)))
        })) {
            after = Some(x);
            break;
        }
    }
    assert!(
        after.is_some(),
        "transaction never completed after its on_end panicked (idle={})",
        fifo.is_idle()
    );
}

/// `cancel(&mut other_ring)` on a split / dma driver is accepted (returns true) and cancels
/// the request — FifoReceiver ("False, and nothing happens, on a ring other than the
/// receiver's") and ContinuousReader (`WrongRing`, "nothing happens") refuse it.
#[test]
fn split_dma_cancel_on_wrong_ring_accepted() {
    let _w = watchdog("finding_cancel_wrong_ring", 20);
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let p = pool(16, 4096);
    ring.register_pool(&p);
    let mut report = vec![];
    // before the first process
    let mut d = split_read(&mut ring, &p, 50_000, SplitConfig::new()).unwrap();
    let c = d.cancel(&mut other);
    let out = run_bounded(&mut d, &mut ring, Duration::from_secs(3)).expect("hang");
    report.push(format!(
        "split before process: cancel(other)={c}, outcome {:?}",
        out.status
    ));
    // mid-flight
    let mut d = split_read(&mut ring, &p, 50_000, SplitConfig::new()).unwrap();
    d.process(&mut ring).unwrap();
    let c2 = d.cancel(&mut other);
    let out2 = run_bounded(&mut d, &mut ring, Duration::from_secs(3)).expect("hang");
    report.push(format!(
        "split mid-flight: cancel(other)={c2}, outcome {:?}, other submitted {}",
        out2.status,
        other.stats().submitted
    ));
    let f = dma_file(&mut ring);
    let mk = |ring: &mut Ring| {
        let mut sg = SgList::new();
        sg.push_extent(&p, 0, 20_000).unwrap();
        DmaDriver::builder(f, sg, Direction::Read)
            .config(DmaConfig::new().max_transfer(4096))
            .build(ring)
            .unwrap()
    };
    let mut d = mk(&mut ring);
    let c3 = d.cancel(&mut other);
    let (o3, sg) = run_bounded(&mut d, &mut ring, Duration::from_secs(3)).expect("hang");
    drop(sg);
    report.push(format!(
        "dma before process: cancel(other)={c3}, outcome {:?}",
        o3.status
    ));
    let mut d = mk(&mut ring);
    d.process(&mut ring).unwrap();
    let c4 = d.cancel(&mut other);
    let (o4, sg) = run_bounded(&mut d, &mut ring, Duration::from_secs(3)).expect("hang");
    drop(sg);
    report.push(format!(
        "dma mid-flight: cancel(other)={c4}, outcome {:?}, other submitted {}",
        o4.status,
        other.stats().submitted
    ));
    for r in &report {
        eprintln!("{r}");
    }
    assert_all_free(&p, "cancel wrong ring");
    assert!(
        !c && !c2
            && !c3
            && !c4
            && out.status.is_ok()
            && out2.status.is_ok()
            && o3.status.is_ok()
            && o4.status.is_ok(),
        "cancel on another ring took effect: {report:#?}"
    );
}
