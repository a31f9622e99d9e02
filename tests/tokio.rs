//! A ring driven from tokio (feature `tokio`): on both runtime flavours, many reads at
//! once from tasks, futures dropped mid-flight (cancelled, buffers back, each operation
//! completed once), `timeout` then shutdown, targets registered, closed and operations
//! cancelled from tasks on other threads, and `get_async` under contention. Every test
//! gets the ring back from its driver task and checks the teardown invariants.
#![cfg(feature = "tokio")]

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::verify;
use iocomplete::{BufferPool, CompletionQueue, ErrorKind, Op, Ring, RingHandle};
use tokio::runtime::{Builder, Runtime};

/// No test may hang: each body runs under this bound.
const BOUND: Duration = Duration::from_secs(60);

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Run `body` on `rt` under [`BOUND`].
fn run<F: std::future::Future>(rt: &Runtime, body: F) -> F::Output {
    rt.block_on(async { tokio::time::timeout(BOUND, body).await })
        .expect("test body hung")
}

fn ring_with_pool(slots: usize, len: usize) -> (Ring, BufferPool) {
    let pool = common::pool(slots, len);
    let mut ring = Ring::new().unwrap();
    ring.register_pool(&pool);
    (ring, pool)
}

/// Shut the ring down, get it back from its task, check the invariants.
async fn finish(
    handle: &RingHandle,
    driver: tokio::task::JoinHandle<iocomplete::Result<Ring>>,
    pools: &[&BufferPool],
) -> Ring {
    handle.shutdown();
    let ring = tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("driver did not return after shutdown")
        .expect("driver task panicked")
        .expect("driver failed");
    common::check_teardown(&ring, pools);
    ring
}

/// Read 4 files of 1 MiB in 64 KiB pieces, every piece its own task, and check each
/// piece's verify blocks; `files x pieces` reads in flight at once at most.
async fn many_reads(dir: std::path::PathBuf) {
    let (ring, pool) = ring_with_pool(16, 64 * 1024);
    let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
    let size = 1 << 20;
    let mut tasks = tokio::task::JoinSet::new();
    for f in 0..4u64 {
        let path = verify::file_in(&dir, &format!("f{f}"), size, 100 + f);
        // Registered from a task, after the ring went to its own task.
        let file = handle
            .register(std::fs::File::open(&path).unwrap())
            .unwrap();
        for piece in 0..(size / (64 * 1024)) {
            let (handle, pool) = (handle.clone(), pool.clone());
            tasks.spawn(async move {
                let off = piece * 64 * 1024;
                let buf = pool.get_async().await;
                let c = handle.submit_future(Op::read(file, off, buf)).await;
                let buf = c.into_result().unwrap();
                assert_eq!(buf.len(), 64 * 1024);
                verify::check_range(buf.data(), 4096, 100 + f, off).unwrap();
            });
        }
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 64);
    let ring = finish(&handle, driver, &[&pool]).await;
    assert!(ring.stats().completed >= 64);
}

#[test]
fn many_concurrent_reads_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    run(&current_thread(), many_reads(dir.path().to_owned()));
}

#[test]
fn many_concurrent_reads_on_a_multi_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    run(&multi_thread(), many_reads(dir.path().to_owned()));
}

/// `timeout(read of an idle pipe)` drops the future: the read is cancelled, its buffer
/// comes back once the kernel's completion arrives, and a plain `shutdown` then returns.
async fn timeout_then_shutdown() {
    let (ring, pool) = ring_with_pool(4, 4096);
    let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
    let (rx, _tx) = common::fd::pipe();
    let pipe = handle.register(rx).unwrap();
    for _ in 0..3 {
        let read = handle.submit_future(Op::read(pipe, 0, pool.get_async().await));
        let r = tokio::time::timeout(Duration::from_millis(30), read).await;
        assert!(r.is_err(), "an idle pipe produced data");
    }
    // The cancels reach the ring: every slot comes back without any data written.
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.stats().free != pool.stats().total {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("dropped futures' buffers never came back");
    let ring = finish(&handle, driver, &[&pool]).await;
    assert_eq!(ring.stats().submitted, 3);
}

#[test]
fn timeout_then_shutdown_never_hangs_current_thread() {
    run(&current_thread(), timeout_then_shutdown());
}

#[test]
fn timeout_then_shutdown_never_hangs_multi_thread() {
    run(&multi_thread(), timeout_then_shutdown());
}

/// A future dropped before the ring even started its operation: the operation never
/// starts, and its buffer is back at once.
#[test]
fn a_future_dropped_before_the_ring_saw_it_never_starts() {
    run(&current_thread(), async {
        let (ring, pool) = ring_with_pool(2, 4096);
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
        let (rx, _tx) = common::fd::pipe();
        let pipe = handle.register(rx).unwrap();
        // Current-thread runtime: the driver task cannot run between these two lines.
        let fut = handle.submit_future(Op::read(pipe, 0, pool.try_get().unwrap()));
        assert_eq!(fut.id(), None);
        drop(fut);
        // Let the ring see the inbox; the read must not be pending on the pipe.
        tokio::task::yield_now().await;
        let ring = finish(&handle, driver, &[&pool]).await;
        assert_eq!(ring.stats().submitted, 0, "a dropped future's read started");
    });
}

/// `shutdown_now` cancels reads that would otherwise wait forever; each completes
/// once, `Cancelled`, and later submissions complete `Cancelled` without starting.
#[test]
fn shutdown_now_cancels_what_is_in_flight() {
    run(&multi_thread(), async {
        let (ring, pool) = ring_with_pool(8, 4096);
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
        let (rx, _tx) = common::fd::pipe();
        let pipe = handle.register(rx).unwrap();
        let q = Arc::new(CompletionQueue::new(16));
        for i in 0..4 {
            let buf = pool.get_async().await;
            handle.submit_to(Op::read(pipe, 0, buf).tag(i), &q);
        }
        // Wait until the ring has started them (nothing can complete them).
        while pool.stats().in_flight < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.shutdown_now();
        let ring = tokio::time::timeout(Duration::from_secs(20), driver)
            .await
            .expect("shutdown_now did not end the driver")
            .unwrap()
            .unwrap();
        let mut tags = Vec::new();
        while let Some(c) = q.pop() {
            assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
            tags.push(c.tag());
        }
        tags.sort();
        assert_eq!(tags, [0, 1, 2, 3], "each read completes exactly once");
        // After the shutdown: refused at once, buffer back.
        let late = handle.submit_future(Op::read(pipe, 0, pool.try_get().unwrap()));
        assert_eq!(
            late.await.error().map(|e| e.kind()),
            Some(ErrorKind::Cancelled)
        );
        assert_eq!(
            handle
                .register(tempfile::tempfile().unwrap())
                .unwrap_err()
                .kind(),
            ErrorKind::RingClosed
        );
        drop(ring);
        assert!(handle.is_closed());
        assert_eq!(
            handle
                .register(tempfile::tempfile().unwrap())
                .unwrap_err()
                .kind(),
            ErrorKind::RingClosed
        );
        let st = pool.stats();
        assert_eq!(st.free, st.total);
    });
}

/// Tasks on other worker threads register files, read, close them, and cancel reads
/// of idle pipes by `OpFuture::cancel` and by `RingHandle::cancel(id)`.
#[test]
fn register_close_and_cancel_from_tasks_on_other_threads() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    run(&multi_thread(), async move {
        let (ring, pool) = ring_with_pool(32, 4096);
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
        let cancelled = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8u64 {
            let (handle, pool, dir, cancelled) =
                (handle.clone(), pool.clone(), dir.clone(), cancelled.clone());
            tasks.spawn(async move {
                let path = verify::file_in(&dir, &format!("t{i}"), 64 * 1024, 7 + i);
                for round in 0..4u64 {
                    let file = handle
                        .register(std::fs::File::open(&path).unwrap())
                        .unwrap();
                    let off = round * 4096;
                    let c = handle
                        .submit_future(Op::read(file, off, pool.get_async().await))
                        .await;
                    verify::check_range(c.into_result().unwrap().data(), 4096, 7 + i, off).unwrap();
                    handle.close(file).unwrap();
                    let stale = handle
                        .submit_future(Op::read(file, 0, pool.get_async().await))
                        .await;
                    assert_eq!(
                        stale.error().map(|e| e.kind()),
                        Some(ErrorKind::StaleTarget)
                    );
                    // A read that would wait forever, cancelled two ways.
                    let (rx, _tx) = common::fd::pipe();
                    let pipe = handle.register(rx).unwrap();
                    let read = handle.submit_future(Op::read(pipe, 0, pool.get_async().await));
                    if round % 2 == 0 {
                        read.cancel();
                    } else {
                        // Wait for the ring to start it, then cancel by id.
                        let id = loop {
                            if let Some(id) = read.id() {
                                break id;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        };
                        handle.cancel(id);
                    }
                    let c = read.await;
                    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
                    cancelled.fetch_add(1, Ordering::Relaxed);
                    handle.close(pipe).unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(cancelled.load(Ordering::Relaxed), 32);
        finish(&handle, driver, &[&pool]).await;
    });
}

/// 16 tasks on 4 worker threads share a 3-slot pool: each round waits for a slot with
/// `get_async`, reads into it through the ring, checks it, and lets it go.
#[test]
fn get_async_under_contention() {
    let dir = tempfile::tempdir().unwrap();
    let path = verify::file_in(dir.path(), "f", 256 * 1024, 3);
    run(&multi_thread(), async move {
        let (ring, pool) = ring_with_pool(3, 4096);
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
        let file = handle
            .register(std::fs::File::open(&path).unwrap())
            .unwrap();
        let reads = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..16u64 {
            let (handle, pool, reads) = (handle.clone(), pool.clone(), reads.clone());
            tasks.spawn(async move {
                for round in 0..50u64 {
                    let off = ((t * 50 + round) % 64) * 4096;
                    let buf = pool.get_async().await;
                    let c = handle.submit_future(Op::read(file, off, buf)).await;
                    verify::check_range(c.into_result().unwrap().data(), 4096, 3, off).unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(reads.load(Ordering::Relaxed), 16 * 50);
        finish(&handle, driver, &[&pool]).await;
    });
}

/// A single-issuer ring cannot be driven by a multi-thread runtime's workers in turn:
/// refused with a typed error, before anything runs.
#[test]
fn a_single_issuer_ring_is_refused_on_a_multi_thread_runtime() {
    common::or_skip!(common::needs_uring(
        &Ring::new().unwrap(),
        "single-issuer rings"
    ));
    run(&multi_thread(), async {
        let ring = Ring::builder().single_issuer(true).build().unwrap();
        let e = iocomplete::tokio::spawn(ring).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e:?}");
    });
    // On a current-thread runtime it is fine: a read of a pipe that another thread fills
    // later wakes the driver task.
    run(&current_thread(), async move {
        let pool = common::pool(2, 4096);
        let mut ring = Ring::builder().single_issuer(true).build().unwrap();
        ring.register_pool(&pool);
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap();
        let c = handle.submit_future(Op::nop().tag(9)).await;
        assert_eq!(c.tag(), 9);
        let (rx, tx) = common::fd::pipe();
        let pipe = handle.register(rx).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            common::fd::write_fd(tx.as_raw_fd(), b"late data");
            tx
        });
        let c = handle
            .submit_future(Op::read(pipe, 0, pool.try_get().unwrap()))
            .await;
        assert_eq!(c.into_result().unwrap().data(), b"late data");
        drop(writer.join().unwrap());
        finish(&handle, driver, &[&pool]).await;
    });
    // DEFER_TASKRUN: its completions would never wake tokio's epoll; refused up front.
    run(&current_thread(), async {
        let ring = Ring::builder().defer_taskrun(true).build().unwrap();
        let e = iocomplete::tokio::spawn(ring).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e:?}");
    });
}

#[test]
fn spawn_outside_a_runtime_is_a_typed_error() {
    let e = iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e:?}");
}

/// `tokio_cat PATH...` writes exactly what `cat PATH...` writes: files of every size
/// around its chunk and window, more files than it reads at once, a FIFO fed slowly, and
/// stdin (a pipe) in the middle; to a pipe and to a regular file.
#[test]
fn tokio_cat_is_byte_identical_to_cat() {
    use common::bin::{example, run_with, stderr, LIMIT};
    use std::process::{Command, Stdio};
    let bin = match example("tokio_cat") {
        Some(b) => b,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let chunk = 128 * 1024;
    let sizes = [
        0,
        1,
        4095,
        chunk,
        chunk + 1,
        4 * chunk - 1,
        4 * chunk,
        9 * chunk + 17,
        (3 << 20) + 5,
        12_345,
    ];
    let mut args: Vec<String> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let p = verify::file_in(dir.path(), &format!("f{i}"), size as u64, 50 + i as u64);
        args.push(p.to_str().unwrap().to_owned());
    }
    let fifo = common::fd::fifo_in(dir.path());
    let fifo_data = common::fd::payload(9, 700 * 1024 + 3);
    args.insert(3, fifo.to_str().unwrap().to_owned());
    args.insert(6, "-".to_owned());
    let stdin_data = common::fd::payload(10, 300 * 1024 + 1);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();

    // What cat writes (each run gets the FIFO and stdin data afresh).
    let run_one = |program: &std::path::Path, out: Option<Stdio>| {
        let feeder = {
            let (fifo, data) = (fifo.clone(), fifo_data.clone());
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                common::fd::slow_writer(f.into(), data, 7).join().unwrap();
            })
        };
        let (rx, tx) = common::fd::pipe();
        let w = common::fd::slow_writer(tx, stdin_data.clone(), 5);
        let o = run_with(
            program,
            &arg_refs,
            std::fs::File::from(rx).into(),
            out,
            LIMIT,
        );
        w.join().unwrap();
        feeder.join().unwrap();
        o
    };
    let cat = Command::new("cat").arg("--version").output();
    assert!(cat.is_ok(), "no cat(1) to compare with");
    let want = run_one(std::path::Path::new("/bin/cat"), None);
    assert!(want.status.success());
    let expected_len: usize = sizes.iter().sum::<usize>() + fifo_data.len() + stdin_data.len();
    assert_eq!(want.stdout.len(), expected_len);

    let got = run_one(&bin, None);
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(
        got.stdout == want.stdout,
        "tokio_cat differs from cat (to a pipe)"
    );

    let out_path = dir.path().join("out");
    let out = Stdio::from(std::fs::File::create(&out_path).unwrap());
    let got = run_one(&bin, Some(out));
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(
        std::fs::read(&out_path).unwrap() == want.stdout,
        "tokio_cat differs from cat (to a file)"
    );
}

/// A missing PATH in the middle: what came before it is written in full, the error
/// names it, the status is 1 — and a directory is refused the same way.
#[test]
fn tokio_cat_reports_a_bad_path_after_writing_what_came_before() {
    use common::bin::{example, run, stderr, LIMIT};
    let bin = match example("tokio_cat") {
        Some(b) => b,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let a = verify::file_in(dir.path(), "a", 1 << 20, 1);
    let b = verify::file_in(dir.path(), "b", 5000, 2);
    let missing = dir.path().join("missing");
    let d = dir.path().to_str().unwrap();
    let mut want = std::fs::read(&a).unwrap();
    want.extend(std::fs::read(&b).unwrap());
    for bad in [missing.to_str().unwrap(), d] {
        let args = [
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            bad,
            a.to_str().unwrap(),
        ];
        let o = run(&bin, &args, LIMIT);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(bad), "{}", stderr(&o));
        assert!(
            o.stdout == want,
            "the files before the bad one were not written in full"
        );
    }
}
