//! `tokio_cat`: `cat` from a tokio program. One ring, driven on a tokio task
//! (`iocomplete::tokio::spawn`: no ring thread of its own), reads the PATHs concurrently —
//! several reads in flight per file — and writes them to stdout in argument order,
//! through the same ring, from the pool slots the reads filled (no copy).
//!
//! ```text
//! cargo run --release --features tokio --example tokio_cat -- PATH...
//! ```
//!
//! A PATH may be a file, a block device, a FIFO, a pipe or a tty; `-` (or no PATH) is
//! stdin. Files and block devices are read `WINDOW` chunks at a time, streams one read at
//! a time. `AHEAD` files are read at once, so any number of PATHs fits a fixed pool. On
//! an error, what came before it is written, then `tokio_cat: PATH: error` goes to stderr
//! and the exit status is 1.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use iocomplete::{BufferPool, Completion, Error, FdInfo, Op, PoolBuf, Ring, RingHandle, Target};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes per read.
const CHUNK: usize = 128 * 1024;
/// Reads in flight per file (files and block devices).
const WINDOW: usize = 4;
/// Filled buffers queued per file, waiting for stdout.
const QUEUED: usize = 4;
/// Files read at once.
const AHEAD: usize = 4;

type Res<T> = Result<T, String>;

/// A file's filled buffers, in order, and its share of the pool (given back once the
/// file is written).
type FileQueue = (mpsc::Receiver<Res<PoolBuf>>, OwnedSemaphorePermit);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.iter().any(|p| p == "--help" || p == "-h") {
        println!("usage: tokio_cat [PATH...]   (`-`, or no PATH: stdin)");
        return;
    }
    if paths.is_empty() {
        paths.push("-".into());
    }
    if let Err(e) = run(paths).await {
        eprintln!("tokio_cat: {e}");
        std::process::exit(1);
    }
}

async fn run(paths: Vec<String>) -> Res<()> {
    // What one file holds at most (reads in flight + buffers queued), for every file
    // read at once, plus the buffer being written: a reader never waits for a slot that
    // only a later file holds.
    let pool = BufferPool::builder()
        .slots(AHEAD * (WINDOW + QUEUED) + 1)
        .slot_len(CHUNK)
        .build()
        .map_err(|e| e.to_string())?;
    let mut ring = Ring::new().map_err(|e| format!("io_uring: {e}"))?;
    ring.register_pool(&pool);
    let (ring, driver) = iocomplete::tokio::spawn(ring).map_err(|e| e.to_string())?;

    let stdout = std::io::stdout().as_fd().try_clone_to_owned();
    let out = ring
        .register(stdout.map_err(|e| format!("stdout: {e}"))?)
        .map_err(|e| format!("stdout: {e}"))?;

    // One reader task per PATH, started in order, AHEAD at a time.
    let (files_tx, mut files) = mpsc::unbounded_channel::<FileQueue>();
    let ahead = Arc::new(Semaphore::new(AHEAD));
    let (r, p) = (ring.clone(), pool.clone());
    tokio::spawn(async move {
        for path in paths {
            let permit = ahead.clone().acquire_owned().await.expect("never closed");
            let (tx, rx) = mpsc::channel(QUEUED);
            if files_tx.send((rx, permit)).is_err() {
                return; // the writer stopped at an error
            }
            let (ring, pool) = (r.clone(), p.clone());
            tokio::spawn(async move {
                if let Err(e) = read_file(&ring, &pool, &path, &tx).await {
                    let _ = tx.send(Err(format!("{path}: {e}"))).await;
                }
            });
        }
    });

    // Write them in argument order.
    let mut result = Ok(());
    'files: while let Some((mut bufs, permit)) = files.recv().await {
        while let Some(buf) = bufs.recv().await {
            let written = match buf {
                Ok(buf) => write_all(&ring, out, buf).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                result = Err(e);
                break 'files;
            }
        }
        drop(permit);
    }
    drop(files);
    // Reads still in flight after an error are cancelled; the ring comes back idle.
    if result.is_err() {
        ring.shutdown_now();
    } else {
        ring.shutdown();
    }
    let idle = driver.await.map_err(|e| e.to_string())?;
    idle.map_err(|e| e.to_string())?;
    result
}

/// Read PATH to its end, sending every filled buffer in order.
async fn read_file(
    ring: &RingHandle,
    pool: &BufferPool,
    path: &str,
    tx: &mpsc::Sender<Res<PoolBuf>>,
) -> Result<(), Error> {
    let fd: OwnedFd = if path == "-" {
        std::io::stdin().as_fd().try_clone_to_owned()?
    } else {
        std::fs::File::open(path)?.into()
    };
    let info = FdInfo::probe(fd.as_raw_fd())?;
    let target = ring.register(fd)?;
    let r = if info.kind.is_seekable() {
        read_positional(ring, pool, target, tx).await
    } else {
        read_stream(ring, pool, target, tx).await
    };
    let _ = ring.close(target);
    r
}

/// A file or block device: WINDOW reads in flight at advancing offsets, taken in order;
/// the first short read is the end.
async fn read_positional(
    ring: &RingHandle,
    pool: &BufferPool,
    target: Target,
    tx: &mpsc::Sender<Res<PoolBuf>>,
) -> Result<(), Error> {
    let mut reads = VecDeque::with_capacity(WINDOW);
    let mut next = 0u64;
    loop {
        while reads.len() < WINDOW {
            let buf = pool.get_async().await;
            reads.push_back(ring.submit_future(Op::read(target, next, buf)));
            next += CHUNK as u64;
        }
        let buf = reads.pop_front().expect("WINDOW > 0").await.into_result()?;
        let end = buf.len() < CHUNK;
        if !buf.is_empty() && tx.send(Ok(buf)).await.is_err() {
            return Ok(()); // the writer stopped at an error
        }
        if end {
            // The reads past the end are dropped: cancelled, their slots back.
            return Ok(());
        }
    }
}

/// A pipe, FIFO, socket or tty: one read at a time until end of file.
async fn read_stream(
    ring: &RingHandle,
    pool: &BufferPool,
    target: Target,
    tx: &mpsc::Sender<Res<PoolBuf>>,
) -> Result<(), Error> {
    loop {
        let buf = pool.get_async().await;
        let c = ring.submit_future(Op::read(target, 0, buf)).await;
        if would_block(&c) {
            // A non-blocking descriptor with nothing to read yet: wait for data.
            ring.submit_future(Op::poll(target, libc::POLLIN as u32))
                .await
                .result()?;
            continue;
        }
        let buf = c.into_result()?;
        if buf.is_empty() {
            return Ok(());
        }
        if tx.send(Ok(buf)).await.is_err() {
            return Ok(());
        }
    }
}

/// Write all of `buf` at stdout's file position (short writes continue from where they
/// stopped; a full non-blocking stdout is waited for).
async fn write_all(ring: &RingHandle, out: Target, mut buf: PoolBuf) -> Res<()> {
    let fail = |e: Error| format!("write error: {e}");
    loop {
        let c = ring.submit_future(Op::write_cursor(out, buf)).await;
        if would_block(&c) {
            buf = c.into_buf().ok_or("write gave no buffer back")?;
            let poll = Op::poll(out, libc::POLLOUT as u32);
            ring.submit_future(poll).await.result().map_err(fail)?;
            continue;
        }
        let n = c.result().map_err(fail)?;
        buf = c.into_buf().ok_or("write gave no buffer back")?;
        if n == buf.len() {
            return Ok(());
        }
        if n == 0 {
            return Err(fail(Error::from_errno(libc::EIO)));
        }
        // Short write: the rest moves to the front of the slot (the only copy, and only
        // on this rare path).
        let len = buf.len();
        buf.data_mut().copy_within(n.., 0);
        buf.set_len(len - n).map_err(fail)?;
    }
}

fn would_block(c: &Completion) -> bool {
    c.error().and_then(|e| e.raw_os_error()) == Some(libc::EAGAIN)
}
