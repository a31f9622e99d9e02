//! Fault injection on real devices: a FUSE file that fails chosen offsets with `EIO`,
//! delays or holds its replies, vanishes mid-read (connection aborted, server process
//! killed) or corrupts a byte; a loop block device stacked on it. Plain ring operations go
//! through it: each error reaches the caller as a typed error on the right request, the
//! others verify, every operation completes exactly once, and nothing leaks.

mod common;

use common::or_skip;
use libc::ENOTCONN;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::time::Duration;

use common::fuse::{ChildFuse, FileSpec, FuseMount};
use common::{check_teardown, ring_with, verify};
use iocomplete::{BufferPool, ErrorKind, Op, Ring, Target, Ticket};

const BS: usize = 4096;

use common::pool_hdr as pool;

/// Outcome of one block read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Verified,
    /// Read in full, but the verify check failed (printed).
    Corrupt,
    Failed(ErrorKind),
}

/// Read `blocks` `BS`-byte blocks of `t`, `depth` in flight at a time, completing in any
/// order; verify every successful block; return each block's outcome (exactly one each).
fn read_blocks(
    ring: &mut Ring,
    pool: &BufferPool,
    t: Target,
    blocks: u64,
    depth: usize,
    seed: u64,
) -> Vec<Got> {
    read_blocks_in(ring, pool, t, &(0..blocks).collect::<Vec<_>>(), depth, seed)
}

/// [`read_blocks`] in the given order (outcomes indexed by block number).
fn read_blocks_in(
    ring: &mut Ring,
    pool: &BufferPool,
    t: Target,
    order: &[u64],
    depth: usize,
    seed: u64,
) -> Vec<Got> {
    let blocks = order.iter().max().map_or(0, |m| m + 1);
    assert_eq!(
        order.len() as u64,
        blocks,
        "order must be a permutation of 0..blocks"
    );
    let mut out: Vec<Option<Got>> = vec![None; blocks as usize];
    let mut inflight: Vec<(u64, Ticket)> = Vec::new();
    let mut todo = order.iter().copied();
    let mut more = true;
    while more || !inflight.is_empty() {
        while more && inflight.len() < depth {
            let Some(next) = todo.next() else {
                more = false;
                break;
            };
            let buf = pool.get_timeout(Duration::from_secs(5)).unwrap();
            let tk = ring
                .submit(Op::read_len(t, next * BS as u64, buf, BS).tag(next))
                .ticket();
            inflight.push((next, tk));
        }
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
        for (b, tk) in take_done(ring, &mut inflight, |e| &e.1) {
            let c = ring.wait(tk).unwrap();
            assert_eq!(c.tag(), b, "completion routed to the wrong request");
            let got = match c.result() {
                Ok(n) => {
                    assert_eq!(n, BS, "short read of block {b}");
                    let buf = c.into_result().unwrap();
                    match verify::check_block(buf.data(), b * BS as u64, seed) {
                        Ok(()) => Got::Verified,
                        Err(e) => {
                            eprintln!("verify: {e}");
                            Got::Corrupt
                        }
                    }
                }
                Err(e) => Got::Failed(e.kind()),
            };
            assert!(out[b as usize].replace(got).is_none(), "block {b} twice");
        }
    }
    for b in order {
        assert!(out[*b as usize].is_some(), "block {b} not completed");
    }
    out.into_iter()
        .map(|g| g.unwrap_or(Got::Verified))
        .collect()
}

/// Remove from `inflight` the entries whose operation (`ticket` of the entry) is done;
/// return them, in the order found.
fn take_done<T>(ring: &Ring, inflight: &mut Vec<T>, ticket: impl Fn(&T) -> &Ticket) -> Vec<T> {
    let mut done = Vec::new();
    let mut i = 0;
    while i < inflight.len() {
        if ring.is_done(ticket(&inflight[i])) {
            done.push(inflight.swap_remove(i));
        } else {
            i += 1;
        }
    }
    done
}

/// Each block read `Verified`, but the `bad` ones, which failed with `EIO`.
fn check_eio_only_at(got: &[Got], bad: &[u64]) {
    for (b, g) in got.iter().enumerate() {
        let want = if bad.contains(&(b as u64)) {
            Got::Failed(ErrorKind::Os(libc::EIO))
        } else {
            Got::Verified
        };
        assert_eq!(*g, want, "block {b}");
    }
}

/// Read the first `blocks` blocks of `t` back, each verified against the seed `seed_of`
/// says; then the teardown invariants.
fn check_blocks(
    ring: &mut Ring,
    pool: &BufferPool,
    t: Target,
    blocks: u64,
    seed_of: impl Fn(u64) -> u64,
) {
    for b in 0..blocks {
        let buf = read_block(ring, pool, t, b);
        verify::check_block(buf.data(), b * BS as u64, seed_of(b)).unwrap();
    }
    check_teardown(ring, &[pool]);
}

/// Read block `b` of `t` (waiting for it).
fn read_block(ring: &mut Ring, pool: &BufferPool, t: Target, b: u64) -> iocomplete::PoolBuf {
    let op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS);
    ring.submit(op).wait().unwrap().into_result().unwrap()
}

#[test]
fn eio_at_chosen_offsets_fails_only_those_reads() {
    let spec = FileSpec::blocks(256, 21);
    let fs = or_skip!(FuseMount::new(spec));
    let bad = [0u64, 7, 100, 201, 255];
    for b in bad {
        fs.ctl().fail_block(b);
    }
    // Jittered replies: reads really are in flight together and complete out of order.
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(3));
    let pool = pool(32, BS, 16);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let got = read_blocks(&mut ring, &pool, t, 256, 32, spec.seed);
    check_eio_only_at(&got, &bad);
    let st = fs.ctl().stats();
    assert_eq!(st.eio_injected, bad.len() as u64);
    assert!(st.max_outstanding > 1, "reads never overlapped: {st:?}");
    // A vectored read spanning a bad block fails as a whole; its neighbour reads fine.
    let mut bufs = vec![pool.try_get().unwrap(), pool.try_get().unwrap()];
    for b in &mut bufs {
        b.set_len(BS).unwrap();
    }
    let c = ring
        .submit(Op::readv(t, 6 * BS as u64, bufs))
        .wait()
        .unwrap();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Os(libc::EIO)));
    drop(c);
    // Disarmed, the same blocks read and verify: the device, not the data, was bad.
    fs.ctl().clear();
    let got = read_blocks(&mut ring, &pool, t, 256, 32, spec.seed);
    assert!(got.iter().all(|g| *g == Got::Verified));
    eprintln!("EIO at offsets: {:?}", fs.ctl().stats());
    check_teardown(&ring, &[&pool]);
}

#[test]
fn write_eio_reaches_the_right_request_and_the_rest_land() {
    let spec = FileSpec::blocks(64, 22);
    let fs = or_skip!(FuseMount::new(spec));
    fs.ctl().fail_block(9);
    fs.ctl().fail_block(40);
    fs.ctl().fail_writes(true);
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(2));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fs.path())
        .unwrap();
    let pool = pool(16, BS, 0);
    let (mut ring, t) = ring_with(&pool, f);
    // Rewrite every block with a new seed, 16 in flight.
    let new_seed = 23;
    let mut results = HashMap::new();
    for first in (0..64u64).step_by(16) {
        let tks: Vec<_> = (first..first + 16)
            .map(|b| {
                let mut buf = pool.try_get().unwrap();
                buf.set_len(BS).unwrap();
                verify::fill_block(buf.data_mut(), b * BS as u64, new_seed);
                (
                    b,
                    ring.submit(Op::write(t, b * BS as u64, buf).tag(b))
                        .ticket(),
                )
            })
            .collect();
        for (b, tk) in tks {
            let c = ring.wait(tk).unwrap();
            assert_eq!(c.tag(), b);
            assert!(results.insert(b, c.result()).is_none());
        }
    }
    for (b, r) in &results {
        if *b == 9 || *b == 40 {
            assert_eq!(
                r.map_err(|e| e.kind()),
                Err(ErrorKind::Os(libc::EIO)),
                "block {b}"
            );
        } else {
            assert_eq!(*r, Ok(BS), "block {b}");
        }
    }
    // Read everything back: failed writes left the old block, the others the new one.
    fs.ctl().clear();
    let seed_of = |b| {
        if b == 9 || b == 40 {
            spec.seed
        } else {
            new_seed
        }
    };
    check_blocks(&mut ring, &pool, t, 64, seed_of);
}

#[test]
fn eio_through_a_loop_device_on_the_faulty_file() {
    let spec = FileSpec::blocks(512, 24);
    let (fs, dev) = or_skip!(FuseMount::under_loop(spec));
    eprintln!(
        "loop {} over FUSE, direct I/O {}",
        dev.path,
        dev.direct_io()
    );
    // Armed after losetup: partition probing must not trip them.
    let bad = [3u64, 64, 300, 511];
    for b in bad {
        fs.ctl().fail_block(b);
    }
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(2));
    let f = dev.open(false);
    let pool = pool(32, BS, 64);
    let (mut ring, t) = ring_with(&pool, f);
    assert_eq!(ring.info(t).unwrap().kind, iocomplete::FdKind::BlockDevice);
    // Even blocks, then odd ones: reads in flight together are never adjacent, so the
    // block layer cannot merge a good block's read into a failing request.
    let order: Vec<u64> = (0..512).step_by(2).chain((1..512).step_by(2)).collect();
    let got = read_blocks_in(&mut ring, &pool, t, &order, 32, spec.seed);
    check_eio_only_at(&got, &bad);
    assert!(fs.ctl().stats().eio_injected >= bad.len() as u64);
    check_teardown(&ring, &[&pool]);
    drop(ring);
    drop(dev);
}

/// Reads of a slow device (every reply delayed 5-40 ms), a third plain, a third with a
/// deadline of 1-20 ms, a third cancelled (half before the reads reach the device, half
/// while they are there). Each op's outcome must match what was done to it: plain → `Ok`
/// with the verified block; deadline → `TimedOut` or `Ok` (a FUSE read already handed to
/// the device cannot be cut short: README, "Known kernel behaviours"); cancel →
/// `Cancelled` or `Ok`. And the races must really happen: every cancel is asked while its
/// read is in flight, and deadlines shorter than the device's shortest delay expire while
/// their read is at the device.
#[test]
fn slow_device_with_cancel_and_deadline_completes_each_op_once() {
    const MIN_DELAY: Duration = Duration::from_millis(5);
    let spec = FileSpec::blocks(128, 25);
    let fs = or_skip!(FuseMount::new(spec));
    fs.ctl().delay(MIN_DELAY, Duration::from_millis(40));
    let pool = pool(64, BS, 8);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let mut counts: HashMap<(u64, &str), u32> = HashMap::new();
    let (mut cancels_asked, mut expired_at_device) = (0u32, 0u32);
    for round in 0..4u64 {
        let mut tks = Vec::new();
        for i in 0..48u64 {
            let b = (round * 48 + i) % 128;
            let mut op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS).tag(b);
            let kind = i % 3;
            if kind == 1 {
                let d = Duration::from_millis(1 + i % 20);
                if d < MIN_DELAY {
                    expired_at_device += 1;
                }
                op = op.deadline(d);
            }
            let tk = ring.submit(op).ticket();
            if kind == 2 && i % 2 == 0 {
                assert!(
                    ring.cancel(tk.id()),
                    "block {b}: cancel found nothing in flight"
                );
                cancels_asked += 1;
            }
            tks.push((b, kind, tk));
        }
        ring.poll().unwrap();
        // The other half of the cancels: asked once the reads are in the kernel.
        for (b, _, tk) in tks.iter().filter(|(b, kind, _)| *kind == 2 && b % 2 == 1) {
            assert!(
                ring.cancel(tk.id()),
                "block {b}: cancel found nothing in flight"
            );
            cancels_asked += 1;
        }
        for (b, kind, tk) in tks {
            let c = ring.wait(tk).unwrap();
            assert_eq!(c.tag(), b);
            let outcome = match c.result() {
                Ok(n) => {
                    assert_eq!(n, BS);
                    verify::check_block(c.into_result().unwrap().data(), b * BS as u64, 25)
                        .unwrap();
                    "ok"
                }
                Err(e) if kind == 1 && e.is_timed_out() => "timed out",
                Err(e) if kind == 2 && e.is_cancelled() => "cancelled",
                Err(e) => panic!("block {b} (kind {kind}): unexpected {e:?}"),
            };
            *counts.entry((kind, outcome)).or_insert(0) += 1;
        }
    }
    ring.run_until_idle().unwrap();
    eprintln!("slow device outcomes (kind 0 plain, 1 deadline, 2 cancel): {counts:?}");
    eprintln!("{:?} {:?}", ring.stats(), fs.ctl().stats());
    let of_kind = |k: u64| -> u32 {
        counts
            .iter()
            .filter(|((kind, _), _)| *kind == k)
            .map(|(_, n)| *n)
            .sum()
    };
    // Every kind of op occurred, and completed once each.
    assert_eq!(
        (of_kind(0), of_kind(1), of_kind(2)),
        (64, 64, 64),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&(0, "ok")),
        Some(&64),
        "plain reads must all verify"
    );
    // The races happened: every cancel was asked while its read was in flight, and
    // these deadlines expired while their reads waited at the device.
    assert_eq!(cancels_asked, 64);
    assert!(expired_at_device >= 4 * 4, "{expired_at_device}");
    // On io_uring every read reaches the device before its cancel or deadline; the
    // thread-pool backend takes some still queued for a worker, before they get there.
    if ring.backend() == iocomplete::BackendKind::Uring {
        assert!(fs.ctl().stats().delayed >= 192, "{:?}", fs.ctl().stats());
    } else {
        assert!(fs.ctl().stats().delayed >= 64, "{:?}", fs.ctl().stats());
    }
    check_teardown(&ring, &[&pool]);
}

#[test]
fn stuck_device_reads_complete_once_when_released() {
    let pool = pool(32, BS, 0);
    let fs = or_skip!(FuseMount::holding(FileSpec::blocks(64, 26)));
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let mut tks = Vec::new();
    for b in 0..24u64 {
        let mut op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS).tag(b);
        if b % 3 == 1 {
            op = op.deadline(Duration::from_millis(20));
        }
        tks.push(ring.submit(op).ticket());
    }
    ring.poll().unwrap();
    assert!(
        fs.ctl().wait_outstanding(24, Duration::from_secs(5)),
        "reads did not reach the device"
    );
    for tk in tks.iter().skip(2).step_by(3) {
        assert!(ring.cancel(tk.id()), "cancel found nothing in flight");
    }
    // Deadlines expire and cancels are asked while the device holds every read: an
    // issued read on a file cannot be pulled back, so none completes early, none twice.
    for _ in 0..10 {
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let early: Vec<u64> = tks
        .iter()
        .enumerate()
        .filter(|(_, tk)| ring.is_done(tk))
        .map(|(b, _)| b as u64)
        .collect();
    assert!(
        early.is_empty(),
        "blocks {early:?} completed while the device held every read"
    );
    assert_eq!(fs.ctl().outstanding(), 24, "a held read left the device");
    fs.ctl().release();
    let mut outcomes = HashMap::new();
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        let b = c.tag();
        // Released, each read completes once, with its data: the deadline that expired
        // and the cancel that was asked while it was held could not pull it back.
        match c.result() {
            Ok(n) => {
                assert_eq!(n, BS);
                verify::check_block(c.into_result().unwrap().data(), b * BS as u64, 26).unwrap();
            }
            Err(e) => panic!("block {b} (a held read) ended {e:?} instead of with its data"),
        }
        *outcomes.entry(b % 3).or_insert(0) += 1;
    }
    eprintln!("stuck device: completed after release, by kind (0 plain, 1 deadline, 2 cancel): {outcomes:?}");
    assert_eq!(outcomes.values().sum::<u32>(), 24);
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn dropping_a_ring_while_the_device_holds_its_reads_returns_every_slot() {
    let spec = FileSpec::blocks(32, 27);
    let fs = or_skip!(FuseMount::holding(spec));
    let pool = pool(16, BS, 0);
    let q = std::sync::Arc::new(iocomplete::CompletionQueue::new(32));
    let ctl = fs.ctl().clone();
    {
        let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
        for b in 0..16u64 {
            ring.submit(Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS).tag(b))
                .to_queue(&q);
        }
        ring.poll().unwrap();
        assert!(ctl.wait_outstanding(16, Duration::from_secs(5)));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            ctl.release();
        });
        // Drop waits for the kernel to hand every buffer back; it never frees early.
        drop(ring);
        releaser.join().unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(c) = q.pop() {
        assert!(seen.insert(c.tag()), "completion {} twice", c.tag());
        if let Ok(n) = c.result() {
            assert_eq!(n, BS);
            let b = c.tag();
            verify::check_block(c.into_result().unwrap().data(), b * BS as u64, 27).unwrap();
        }
    }
    assert_eq!(seen.len(), 16);
    let st = pool.stats();
    assert_eq!((st.free, st.in_flight), (st.total, 0));
}

#[test]
fn device_vanishing_mid_read_fails_in_flight_reads_once() {
    let spec = FileSpec::blocks(64, 28);
    let mut fs = or_skip!(FuseMount::new(spec));
    let pool = pool(32, BS, 0);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    // Served reads first, verified.
    let got = read_blocks(&mut ring, &pool, t, 8, 8, spec.seed);
    assert!(got.iter().all(|g| *g == Got::Verified));
    // Then the device stops answering, with 16 reads in flight, and vanishes.
    fs.ctl().hold(0..u64::MAX);
    let tks = common::read_tickets(&mut ring, t, &pool, 8..24);
    ring.poll().unwrap();
    assert!(fs.ctl().wait_outstanding(16, Duration::from_secs(5)));
    fs.abort();
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        assert_eq!(
            c.error().map(|e| e.kind()),
            Some(ErrorKind::Os(libc::ECONNABORTED)),
            "read {} after abort: {:?}",
            c.tag(),
            c.result()
        );
    }
    // Later requests fail at once: the connection is gone.
    let c = ring
        .submit(Op::read_len(t, 0, pool.try_get().unwrap(), BS))
        .wait()
        .unwrap();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Os(ENOTCONN)));
    drop(c);
    check_teardown(&ring, &[&pool]);
}

/// Entry point of the child-process FUSE server ([`ChildFuse`]); a no-op in normal runs.
#[test]
fn fuse_child_server() {
    common::fuse::child_server_entry();
}

#[test]
fn server_process_killed_mid_read() {
    let spec = FileSpec::blocks(64, 29);
    let hold_from = 16 * BS as u64;
    let mut srv = or_skip!(ChildFuse::spawn("fuse_child_server", spec, hold_from));
    let pool = pool(32, BS, 0);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(srv.path()).unwrap());
    let got = read_blocks(&mut ring, &pool, t, 16, 8, spec.seed);
    assert!(got.iter().all(|g| *g == Got::Verified));
    let tks = common::read_tickets(&mut ring, t, &pool, 16..32);
    ring.poll().unwrap();
    // Let the requests reach the server, then kill it.
    std::thread::sleep(Duration::from_millis(100));
    for tk in &tks {
        assert!(!ring.is_done(tk), "a held read completed");
    }
    srv.kill();
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        let k = c.error().map(|e| e.kind());
        assert!(
            matches!(
                k,
                Some(ErrorKind::Os(libc::ECONNABORTED) | ErrorKind::Os(libc::ENOTCONN))
            ),
            "read {} after the server died: {:?}",
            c.tag(),
            c.result()
        );
    }
    check_teardown(&ring, &[&pool]);
}

#[test]
fn server_without_async_dio_serves_reads_inside_submission_each_once() {
    let spec = FileSpec::blocks(16, 30);
    let fs = or_skip!(FuseMount::with_async_dio(spec, false));
    fs.ctl()
        .delay(Duration::from_millis(5), Duration::from_millis(5));
    let pool = pool(8, BS, 0);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    or_skip!(common::needs_uring(
        &ring,
        "reads issued inside the submission"
    ));
    let tks: Vec<_> = (0..8u64)
        .map(|b| {
            let op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS)
                .tag(b)
                .deadline(Duration::from_millis(1));
            ring.submit(op).ticket()
        })
        .collect();
    let t0 = std::time::Instant::now();
    ring.poll().unwrap();
    let submit_time = t0.elapsed();
    // The kernel blocks io_uring_enter in each read (FUSE ignores IOCB_NOWAIT without
    // async DIO): when the submission returns, the device has served all 8, one at a time.
    let st = fs.ctl().stats();
    assert_eq!(
        st.reads_ok, 8,
        "reads not served inside the submission: {st:?}"
    );
    assert_eq!(
        st.max_outstanding, 1,
        "reads overlapped at the device: {st:?}"
    );
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        let b = c.tag();
        match c.result() {
            Ok(_) => {
                verify::check_block(c.into_result().unwrap().data(), b * BS as u64, 30).unwrap()
            }
            Err(e) => assert!(e.is_timed_out(), "{e:?}"),
        }
    }
    eprintln!(
        "sync-DIO FUSE: submitting 8 reads of 5 ms took {submit_time:?}; max outstanding {}",
        fs.ctl().stats().max_outstanding
    );
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

/// Write `blocks` verify blocks through the ring with O_DIRECT (so they are on disk).
fn write_direct_file(path: &std::path::Path, blocks: u64, seed: u64) {
    let f = common::open(path, true, true);
    let pool = pool(8, BS, 0);
    let (mut ring, t) = ring_with(&pool, f);
    for b in 0..blocks {
        let mut buf = pool.try_get().unwrap();
        buf.set_len(BS).unwrap();
        verify::fill_block(buf.data_mut(), b * BS as u64, seed);
        let c = ring
            .submit(Op::write(t, b * BS as u64, buf))
            .wait()
            .unwrap();
        assert_eq!(c.result(), Ok(BS));
    }
    assert!(ring.submit(Op::fsync(t, false)).wait().unwrap().is_ok());
    check_teardown(&ring, &[&pool]);
}

/// Rewrite block `b` on disk (O_DIRECT, bypassing the page cache) after `edit` changes it.
fn edit_block_on_disk(path: &std::path::Path, b: u64, edit: impl FnOnce(&mut [u8])) {
    use std::os::unix::fs::FileExt;
    let aligned = pool(1, BS, 0);
    let mut buf = aligned.try_get().unwrap();
    let f = common::open(path, true, true);
    let data = buf.capacity_mut();
    f.read_exact_at(&mut data[..BS], b * BS as u64).unwrap();
    edit(&mut data[..BS]);
    f.write_all_at(&data[..BS], b * BS as u64).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn verify_mode_catches_blocks_corrupted_on_disk_between_write_and_read() {
    let (_dir, path) = common::disk_path("v");
    let seed = 31;
    write_direct_file(&path, 64, seed);
    // Four kinds of damage, done on disk behind the ring's back.
    edit_block_on_disk(&path, 17, |b| b[1000] ^= 0x01); // one flipped bit in the payload
    edit_block_on_disk(&path, 30, |b| b[9] ^= 0x80); // header: offset field
    let mut misdirected = vec![0u8; BS];
    verify::fill_block(&mut misdirected, 44 * BS as u64, seed);
    edit_block_on_disk(&path, 45, |b| b.copy_from_slice(&misdirected)); // landed at 45
    edit_block_on_disk(&path, 50, |b| {
        verify::fill_block(b, 50 * BS as u64, seed + 1)
    }); // stale
    let f = common::open(&path, false, true);
    let pool = pool(16, BS, 0);
    let (mut ring, t) = ring_with(&pool, f);
    let mut caught = Vec::new();
    let mut whole = Vec::new();
    for b in 0..64u64 {
        let buf = read_block(&mut ring, &pool, t, b);
        whole.extend_from_slice(buf.data());
        if let Err(e) = verify::check_block(buf.data(), b * BS as u64, seed) {
            caught.push((b, e));
        }
    }
    let blocks: Vec<u64> = caught.iter().map(|c| c.0).collect();
    assert_eq!(blocks, [17, 30, 45, 50], "{caught:?}");
    assert!(caught[0].1.contains("crc"), "{}", caught[0].1);
    assert!(
        caught[1].1.contains("header says offset"),
        "{}",
        caught[1].1
    );
    assert!(
        caught[2].1.contains("header says offset 180224"),
        "{}",
        caught[2].1
    );
    assert!(caught[3].1.contains("seed"), "{}", caught[3].1);
    let e = verify::check_range(&whole, BS, seed, 0).unwrap_err();
    assert!(e.contains(&format!("{}", 17 * BS)), "{e}");
    // Undo the damage: the checker passes again, so it flagged the damage, not the I/O.
    for b in [17u64, 30, 45, 50] {
        edit_block_on_disk(&path, b, |d| verify::fill_block(d, b * BS as u64, seed));
    }
    check_blocks(&mut ring, &pool, t, 64, |_| seed);
}

#[test]
fn verify_mode_catches_a_byte_flipped_on_the_device_under_a_loop_device() {
    let spec = FileSpec::blocks(256, 32);
    let (fs, dev) = or_skip!(FuseMount::under_loop(spec));
    let pool = pool(16, BS, 0);
    let (mut ring, file) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let blk = ring.register(dev.open(false)).unwrap();
    // Silent corruption on the device: one bit of block 77's payload, one of block 200's
    // header magic.
    fs.ctl().corrupt(77 * BS as u64 + 2000, 0x04);
    fs.ctl().corrupt(200 * BS as u64, 0x01);
    for t in [file, blk] {
        let got = read_blocks(&mut ring, &pool, t, 256, 16, spec.seed);
        for (b, g) in got.iter().enumerate() {
            let want = if b == 77 || b == 200 {
                Got::Corrupt
            } else {
                Got::Verified
            };
            assert_eq!(*g, want, "block {b}");
        }
    }
    check_teardown(&ring, &[&pool]);
}

/// Soak (run by `scripts/campaign.sh`): random reads, 1 to 4 blocks long, 32 in flight,
/// over the faulty file and over a loop device stacked on it, with random `EIO`s and
/// delays, some reads cancelled or given deadlines. Every byte read is verified, every
/// failure must be the injected `EIO` (or the cancel/deadline asked for), every operation
/// completes exactly once, nothing leaks. `IOCOMPLETE_SOAK_SECS` sets the length.
#[test]
#[ignore = "soak: run by scripts/campaign.sh"]
fn soak_random_faults_verify_every_block() {
    let secs: u64 = std::env::var("IOCOMPLETE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    const BLOCKS: u64 = 1024;
    let spec = FileSpec::blocks(BLOCKS, 33);
    let (fs, dev) = or_skip!(FuseMount::under_loop(spec));
    fs.ctl().random_eio(20, 0x5eed);
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(2));
    let pool = pool(48, 4 * BS, 16);
    let (mut ring, file) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let blk = ring.register(dev.open(false)).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    #[derive(Default, Debug)]
    struct Counts {
        reads: u64,
        ok: u64,
        eio: u64,
        cancelled: u64,
        timed_out: u64,
        bytes_verified: u64,
        file_eio: u64,
    }
    let mut n = Counts::default();
    let start = std::time::Instant::now();
    let mut seen = HashSet::new();
    let mut inflight: Vec<(u64, u64, usize, u8, bool, Ticket)> = Vec::new();
    let mut tag = 0u64;
    let file_eio_before = fs.ctl().stats().eio_injected;
    let mut file_phase_eio = 0u64;
    let mut file_phase_injected = 0u64;
    let mut phase_start_injected = file_eio_before;
    let mut on_file = true;
    let mut phase_until = start + Duration::from_millis(500);
    while start.elapsed() < Duration::from_secs(secs) || !inflight.is_empty() {
        let running = start.elapsed() < Duration::from_secs(secs);
        // Phase switch (file <-> loop device) once everything in flight has landed.
        if std::time::Instant::now() > phase_until && inflight.is_empty() {
            let injected = fs.ctl().stats().eio_injected;
            if on_file {
                file_phase_injected += injected - phase_start_injected;
            }
            phase_start_injected = injected;
            on_file = !on_file;
            phase_until = std::time::Instant::now() + Duration::from_millis(500);
        }
        let switching = std::time::Instant::now() > phase_until;
        while running && !switching && inflight.len() < 32 {
            let r = next();
            let len = (1 + r % 4) as usize * BS;
            let b = (r >> 8) % (BLOCKS - 3);
            let (t, is_file) = if on_file { (file, true) } else { (blk, false) };
            let mode = ((r >> 40) % 20) as u8; // 0: deadline, 1-2: cancel, else plain
            let mut op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), len).tag(tag);
            if mode == 0 {
                op = op.deadline(Duration::from_micros(500 + (r >> 50) % 3000));
            }
            let tk = ring.submit(op).ticket();
            if mode == 1 || mode == 2 {
                ring.cancel(tk.id());
            }
            inflight.push((tag, b, len, mode, is_file, tk));
            tag += 1;
            n.reads += 1;
        }
        ring.run_once(Some(Duration::from_millis(5))).unwrap();
        for (tg, b, len, mode, is_file, tk) in take_done(&ring, &mut inflight, |e| &e.5) {
            let c = ring.wait(tk).unwrap();
            assert_eq!(c.tag(), tg);
            assert!(seen.insert(tg), "op {tg} completed twice");
            match c.result() {
                Ok(got) => {
                    assert_eq!(got, len, "short read at block {b}");
                    let buf = c.into_result().unwrap();
                    verify::check_range(buf.data(), BS, spec.seed, b * BS as u64)
                        .unwrap_or_else(|e| panic!("soak: {e}"));
                    n.ok += 1;
                    n.bytes_verified += got as u64;
                }
                Err(e) => match e.kind() {
                    ErrorKind::Os(libc::EIO) => {
                        n.eio += 1;
                        if is_file {
                            file_phase_eio += 1;
                        }
                    }
                    ErrorKind::Cancelled if mode == 1 || mode == 2 => n.cancelled += 1,
                    ErrorKind::TimedOut if mode == 0 => n.timed_out += 1,
                    k => panic!("soak: op {tg} (mode {mode}) failed with {k:?}"),
                },
            }
        }
    }
    if on_file {
        file_phase_injected += fs.ctl().stats().eio_injected - phase_start_injected;
    }
    n.file_eio = file_phase_eio;
    // On the file, one ring read is one FUSE request: each injected EIO failed exactly
    // one read, and no read failed without one.
    assert_eq!(file_phase_eio, file_phase_injected, "EIOs lost or invented");
    ring.run_until_idle().unwrap();
    let st = fs.ctl().stats();
    println!(
        "SOAK secs={secs} reads={} ok={} eio={} cancelled={} timed_out={} faults_injected={} \
         delayed={} bytes_verified={} failures=0",
        n.reads,
        n.ok,
        n.eio,
        n.cancelled,
        n.timed_out,
        st.eio_injected,
        st.delayed,
        n.bytes_verified
    );
    check_teardown(&ring, &[&pool]);
    drop(ring);
    drop(dev);
}
