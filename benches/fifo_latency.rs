//! Wake-up latency of FIFO receive at low rates: a writer thread writes an 8-byte
//! timestamp into a pipe every `interval`; the receiver reports how long after the write
//! it had the bytes. Peers in the same run, on the same kind of pipe:
//!
//! * `fifo-receiver`: [`FifoReceiver`] (nowait read → `EAGAIN` → one `POLL_ADD` → read),
//! * `uring-read`: a plain io_uring read that waits inside the kernel (no readiness step),
//! * `poll+read`: `poll(2)` then a non-blocking `read(2)`,
//! * `blocking-read`: `read(2)` on a blocking descriptor.
//!
//! Also the receiving thread's CPU time per message (`getrusage(RUSAGE_THREAD)`).
//!
//! `cargo bench --bench fifo_latency` (env: `FIFO_LAT_SAMPLES`, default 1000 at 1 kHz and
//! 200 at 100 Hz).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use iocomplete::{BufferPool, Driver, FifoReceiver, FifoStatus, Op, Ring};

#[derive(Debug, Clone, Copy)]
enum Method {
    FifoReceiver,
    UringRead,
    PollRead,
    BlockingRead,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::FifoReceiver => "fifo-receiver",
            Method::UringRead => "uring-read",
            Method::PollRead => "poll+read",
            Method::BlockingRead => "blocking-read",
        }
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: `rusage` is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; RUSAGE_THREAD is supported on Linux.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pipe(nonblocking_rx: bool) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    if nonblocking_rx {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(fds[0], libc::F_GETFL);
            libc::fcntl(fds[0], libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    // SAFETY: pipe2 returned these descriptors; each is owned once.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn read_exact_blocking(fd: i32, out: &mut [u8; 8]) {
    let mut got = 0;
    while got < 8 {
        // SAFETY: writes at most `8 - got` bytes into `out[got..]`.
        let n = unsafe { libc::read(fd, out[got..].as_mut_ptr().cast(), 8 - got) };
        assert!(n > 0, "read: {}", std::io::Error::last_os_error());
        got += n as usize;
    }
}

/// One run: latencies in ns and the receiver's CPU time.
fn measure(method: Method, interval: Duration, samples: usize) -> (Vec<u64>, Duration) {
    let nonblocking = matches!(method, Method::FifoReceiver | Method::PollRead);
    let (rx, tx) = pipe(nonblocking);
    let base = Instant::now();
    let writer = std::thread::spawn(move || {
        for _ in 0..samples {
            std::thread::sleep(interval);
            let ts = (base.elapsed().as_nanos() as u64).to_le_bytes();
            // SAFETY: writes 8 bytes from `ts`; the pipe is ours.
            let n = unsafe { libc::write(tx.as_raw_fd(), ts.as_ptr().cast(), 8) };
            assert_eq!(n, 8);
        }
        tx
    });
    let mut lat = Vec::with_capacity(samples);
    let cpu0;
    let mut record = |bytes: &[u8]| {
        let ts = u64::from_le_bytes(bytes.try_into().unwrap());
        lat.push(base.elapsed().as_nanos() as u64 - ts);
    };
    match method {
        Method::FifoReceiver | Method::UringRead => {
            let mut ring = Ring::new().unwrap();
            let pool = BufferPool::builder()
                .slots(2)
                .slot_len(4096)
                .build()
                .unwrap();
            ring.register_pool(&pool);
            let t = ring.register(rx).unwrap();
            let mut fifo = FifoReceiver::new(&ring, t).ok();
            cpu0 = thread_cpu();
            for _ in 0..samples {
                if let Some(fifo) = fifo.as_mut().filter(|_| nonblocking) {
                    fifo.receive(&mut ring, pool.try_get().unwrap(), 8).unwrap();
                    let r = fifo.run(&mut ring).unwrap();
                    assert_eq!(r.status(), FifoStatus::Full);
                    record(r.buf.data());
                } else {
                    let c = ring
                        .submit(Op::read_len(t, 0, pool.try_get().unwrap(), 8))
                        .wait()
                        .unwrap();
                    let b = c.into_result().unwrap();
                    assert_eq!(b.len(), 8, "short read");
                    record(b.data());
                }
            }
        }
        Method::PollRead => {
            cpu0 = thread_cpu();
            let mut buf = [0u8; 8];
            for _ in 0..samples {
                let mut got = 0;
                while got < 8 {
                    let mut p = libc::pollfd {
                        fd: rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    // SAFETY: writes at most `8 - got` bytes into `buf[got..]`.
                    let n = unsafe {
                        libc::read(rx.as_raw_fd(), buf[got..].as_mut_ptr().cast(), 8 - got)
                    };
                    if n > 0 {
                        got += n as usize;
                    }
                }
                record(&buf);
            }
        }
        Method::BlockingRead => {
            cpu0 = thread_cpu();
            let mut buf = [0u8; 8];
            for _ in 0..samples {
                read_exact_blocking(rx.as_raw_fd(), &mut buf);
                record(&buf);
            }
        }
    }
    let cpu = thread_cpu() - cpu0;
    drop(writer.join().unwrap());
    (lat, cpu)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a smoke pass.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let scale = std::env::var("FIFO_LAT_SAMPLES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1000);
    let runs = [
        (Duration::from_millis(1), if smoke { 20 } else { scale }),
        (Duration::from_millis(10), if smoke { 5 } else { scale / 5 }),
    ];
    println!(
        "{:<14} {:>8} {:>7} {:>9} {:>9} {:>9} {:>12}",
        "method", "rate", "n", "p50 µs", "p99 µs", "max µs", "cpu µs/msg"
    );
    for (interval, n) in runs {
        for m in [
            Method::FifoReceiver,
            Method::UringRead,
            Method::PollRead,
            Method::BlockingRead,
        ] {
            let (mut lat, cpu) = measure(m, interval, n);
            lat.sort_unstable();
            println!(
                "{:<14} {:>6}Hz {:>7} {:>9.1} {:>9.1} {:>9.1} {:>12.2}",
                m.name(),
                1_000_000 / interval.as_micros(),
                n,
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                pct(&lat, 1.0),
                cpu.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
