//! The tour: creates a file, reads it back through every completion mode with
//! header-offset buffers, verifies every byte, and prints what happened.
//!
//! `cargo run --release --example demo [PATH]` (default: a new temp file). PATH must be
//! a regular file or absent (it is checked with `stat` first: a FIFO's open would block);
//! anything else is refused with exit 2, and every error names PATH.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use iocomplete::{BufferPool, Completion, CompletionQueue, Op, Ring};

const BLOCK: usize = 64 * 1024;
const BLOCKS: u64 = 64;
const HEADER: usize = 16;

/// Deterministic content: every byte depends on its file offset.
fn byte_at(off: u64) -> u8 {
    (off.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn check(data: &[u8], off: u64) -> Result<(), String> {
    for (i, &b) in data.iter().enumerate() {
        if b != byte_at(off + i as u64) {
            return Err(format!("byte at offset {} differs", off + i as u64));
        }
    }
    Ok(())
}

/// The tour: create a file, read it back through every completion mode (wait, tickets,
/// completion routines, a completion queue, detach, futures) and verify every byte.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Args {
    /// The file to create (overwritten) [default: a new temporary file]
    #[arg(value_name = "PATH", value_parser = cli::named)]
    path: Option<std::path::PathBuf>,
}

#[path = "common/cli.rs"]
mod cli;

fn main() {
    let args = Args::parse();
    if let Some(p) = &args.path {
        match std::fs::metadata(p) {
            Ok(m) if !m.is_file() => {
                eprintln!(
                    "demo: PATH {}: not a regular file (demo overwrites a regular file or creates one)",
                    p.display()
                );
                std::process::exit(2);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("demo: PATH {}: {e}", p.display());
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(args) {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let path = args.path.unwrap_or_else(|| dir.path().join("demo.dat"));
    let size = BLOCK as u64 * BLOCKS;
    {
        let named = |e: std::io::Error| format!("PATH {}: {e}", path.display());
        let mut f = std::fs::File::create(&path).map_err(named)?;
        let data: Vec<u8> = (0..size).map(byte_at).collect();
        f.write_all(&data).map_err(named)?;
        f.sync_all().map_err(named)?;
    }
    println!("created {} ({} KiB)", path.display(), size / 1024);

    let mut ring = Ring::builder().entries(64).build()?;
    let caps = *ring.capabilities();
    println!(
        "ring: sq {} cq {}, fixed files {}, fixed buffers {}, READV_FIXED {}, multishot read {}",
        caps.sq_entries,
        caps.cq_entries,
        caps.fixed_files,
        caps.fixed_buffers,
        caps.readv_fixed,
        caps.read_multishot
    );
    let pool = BufferPool::builder()
        .slots(16)
        .slot_len(BLOCK)
        .header_len(HEADER)
        .build()?;
    println!(
        "pool: 16 slots of {} KiB, {HEADER}-byte header in front of the data: {:?}",
        BLOCK / 1024,
        ring.register_pool(&pool)
    );
    let file = ring.register(
        std::fs::File::open(&path).map_err(|e| format!("PATH {}: {e}", path.display()))?,
    )?;
    let off = |i: u64| i * BLOCK as u64;
    let mut verified = 0u64;

    // 1. wait(): submit and drive the ring until done.
    let c = ring.submit(Op::read(file, 0, pool.try_get()?)).wait()?;
    let mut buf = c.into_result()?;
    check(buf.data(), 0)?;
    buf.header_mut().copy_from_slice(b"block:0000000000");
    println!(
        "wait:      read {} bytes; len() excludes the header; frame() = {} bytes = header + data, contiguous",
        buf.len(),
        buf.frame().len()
    );
    verified += buf.len() as u64;
    drop(buf);

    // 2. tickets: many in flight, collected later.
    let tickets: Vec<_> = (1..9)
        .map(|i| {
            (
                i,
                ring.submit(Op::read(file, off(i), pool.try_get().unwrap()))
                    .ticket(),
            )
        })
        .collect();
    for (i, t) in tickets {
        let b = ring.wait(t)?.into_result()?;
        check(b.data(), off(i))?;
        verified += b.len() as u64;
    }
    println!("tickets:   8 reads in flight at once, collected in any order");

    // 3. completion routines.
    let done = Arc::new(AtomicUsize::new(0));
    for i in 9..17 {
        let d = done.clone();
        ring.submit(Op::read(file, off(i), pool.try_get()?))
            .then(move |c| {
                let b = c.into_result().expect("read");
                check(b.data(), off(i)).expect("content");
                d.fetch_add(b.len(), Ordering::Relaxed);
            });
    }
    ring.run_until_idle()?;
    verified += done.load(Ordering::Relaxed) as u64;
    println!("routines:  8 completion routines ran on the ring's thread");

    // 4. a completion queue consumed by another thread.
    let q = Arc::new(CompletionQueue::<Completion>::new(64));
    let consumer = {
        let q = q.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            let mut bytes = 0;
            for _ in 0..16 {
                let c = q.pop_timeout(Duration::from_secs(10)).ok_or("timeout")?;
                let i = c.tag();
                let b = c.into_result().map_err(|e| e.to_string())?;
                check(b.data(), off(i))?;
                bytes += b.len() as u64;
            }
            Ok(bytes)
        })
    };
    for i in 17..33 {
        let b = pool.get_timeout(Duration::from_secs(10))?;
        ring.submit(Op::read(file, off(i), b).tag(i)).to_queue(&q);
    }
    ring.run_until_idle()?;
    verified += consumer.join().map_err(|_| "consumer panicked")??;
    println!("queue:     16 completions handed to a consumer thread through the lock-free queue");

    // 5. send-and-forget: the ring still reclaims the buffers.
    for i in 33..41 {
        ring.submit(Op::read(file, off(i), pool.try_get()?))
            .detach();
    }
    ring.run_until_idle()?;
    println!(
        "detach:    8 reads sent and forgotten; pool free {}/{}",
        pool.stats().free,
        pool.stats().total
    );

    // 6. futures: the ring moves to its own thread; any executor can await.
    let (handle, driver) = ring.spawn()?;
    for i in 41..BLOCKS {
        let c = block_on(handle.submit_future(Op::read(file, off(i), pool.get())));
        let b = c.into_result()?;
        check(b.data(), off(i))?;
        verified += b.len() as u64;
    }
    handle.shutdown();
    driver.join().map_err(|_| "ring thread panicked")??;
    println!(
        "futures:   {} reads awaited, driven by a ring thread",
        BLOCKS - 41
    );

    let st = pool.stats();
    if st.free != st.total {
        return Err(format!("pool leak: {st:?}").into());
    }
    let detached = 8 * BLOCK as u64;
    if verified + detached != size {
        return Err(format!("verified {verified} + detached {detached} != {size}").into());
    }
    println!("verified {verified} bytes byte-for-byte; every slot back in the pool");
    eprintln!(
        "demo: ok, {} blocks, {} KiB verified in {:.1} ms",
        BLOCKS,
        verified / 1024,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// A minimal executor: park until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct W(std::thread::Thread);
    impl Wake for W {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(W(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
