//! A boundary table for every public entry point.
//!
//! Each numeric argument is tried at 0, 1, max-1, max and at values that overflow in
//! combination (offset + length, start + length, now + duration), against real files,
//! O_DIRECT files, a loop block device and pipes. What every row expects:
//!
//! * bad input gets a typed [`Error`] before anything reaches the kernel (no
//!   `io_uring_enter`, the ring counts a rejection), the buffers come back untouched and
//!   nothing changes on the target (its content is compared before and after);
//! * valid input does exactly what it says (read bytes are compared with the file, written
//!   bytes are read back where they should have landed);
//! * huge durations mean "effectively never": no panic, no instant `TimedOut`;
//! * nothing hangs: every test runs under a watchdog ([`bounded`]), and the cases that
//!   could spin forever run in a child process that is killed at the limit
//!   ([`isolated`]).
//!
//! Rows that document a known bug (being fixed elsewhere) carry `// finding N` and name it
//! in their failure message; they fail until the fix lands. Rows marked `NEW-x` document
//! bugs found by this table (see the report in the commit message).

mod common;

use common::or_skip;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::drivers::run_until_idle;
use common::fd::{pipe, set_nonblocking, write_fd};
use common::{check_teardown, ring_with, verify};
use iocomplete::dma::{DmaConfig, SgList};
use iocomplete::ring::BufPart;
use iocomplete::split::{Job, Mode, SplitConfig};
use iocomplete::Direction;
use iocomplete::{
    BufferPool, Bufs, Completion, CompletionQueue, ContinuousReader, Dispatch, DmaDriver, Driver,
    ErrorKind, FdKind, FifoReceiver, FifoStatus, IoBuf, Op, PoolBuf, Restart, Ring, RingBuilder,
    SplitDriver, Target,
};

const BS: usize = 4096;
const HDR: usize = 16;
const BLOCKS: u64 = 16;
const SIZE: u64 = BLOCKS * BS as u64;
const SEED: u64 = 0xB0DA;
const I64MAX: u64 = i64::MAX as u64;
/// Durations past which a deadline means "never" (none of them may fire).
const HUGE: [(&str, Duration); 4] = [
    ("from_secs(i64::MAX)", Duration::from_secs(i64::MAX as u64)),
    ("from_secs(1<<63)", Duration::from_secs(1 << 63)),
    ("from_secs(u64::MAX)", Duration::from_secs(u64::MAX)),
    ("Duration::MAX", Duration::MAX),
];
/// Durations that expire at once (or nearly).
const TINY: [(&str, Duration); 3] = [
    ("ZERO", Duration::ZERO),
    ("1ns", Duration::from_nanos(1)),
    ("1ms", Duration::from_millis(1)),
];

// ---- harness -----------------------------------------------------------------------------

/// Run `f` on its own thread and fail if it is not done within `limit`: a hang fails the
/// test instead of blocking the suite. (A thread that spins forever stays behind until the
/// process ends; cases that can spin run [`isolated`] instead.)
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bounded".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => resume_unwind(p),
        Err(_) => panic!("HANG: still running after {limit:?} (watchdog)"),
    }
}

const CHILD_ENV: &str = "IOCOMPLETE_BOUNDARY_CHILD";

/// Run test `name` of this binary in a child process, killed after `limit`. Returns true
/// in the child (the caller then runs the body); in the parent it checks that the child
/// passed in time and returns false.
fn isolated(name: &str, limit: Duration) -> bool {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let out = File::create(&out_path).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        None => panic!("HANG: {name} still running after {limit:?}; killed. Output:\n{text}"),
        Some(st) => assert!(
            st.success() && text.contains("1 passed"),
            "{name} failed in its child process ({st}):\n{text}"
        ),
    }
    false
}

/// The failures of one table, reported together: every row runs even when an earlier one
/// fails, and the message names each failing row and the finding it documents.
struct Table {
    name: &'static str,
    rows: usize,
    failures: Vec<String>,
}

impl Table {
    fn new(name: &'static str) -> Table {
        Table {
            name,
            rows: 0,
            failures: Vec::new(),
        }
    }

    /// Run one row; `known` names the finding it documents ("" when none).
    fn row(&mut self, row: impl AsRef<str>, known: &str, f: impl FnOnce()) {
        self.rows += 1;
        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            let tag = if known.is_empty() {
                String::new()
            } else {
                format!(" [{known}]")
            };
            self.failures
                .push(format!("{}{tag}: {}", row.as_ref(), msg.trim()));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} rows failed:\n  {}",
            self.name,
            self.failures.len(),
            self.rows,
            self.failures.join("\n  ")
        );
    }
}

// ---- fixtures ----------------------------------------------------------------------------

fn pool(slots: usize) -> BufferPool {
    common::pool_hdr(slots, BS, HDR)
}

/// The target's kind for the transfer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    /// A regular file on ext4 (buffered).
    File,
    /// The same, opened O_DIRECT.
    Direct,
    /// A loop block device (buffered), `SIZE` bytes.
    Block,
}

/// A ring with a registered pool and a read-write target of `SIZE` bytes of verify blocks.
struct Fx {
    _dir: Option<tempfile::TempDir>,
    _loop: Option<common::LoopDev>,
    path: PathBuf,
    ring: Ring,
    pool: BufferPool,
    t: Target,
    dev: Dev,
}

impl Fx {
    fn new(dev: Dev) -> Option<Fx> {
        let (dir, lo, path) = match dev {
            Dev::File | Dev::Direct => {
                let (dir, path) = common::disk_path("t");
                verify::make_file(&path, SIZE, BS, SEED);
                (Some(dir), None, path)
            }
            Dev::Block => {
                let lo = common::LoopDev::new(SIZE, Some((BS, SEED)))?;
                let path = PathBuf::from(&lo.path);
                (None, Some(lo), path)
            }
        };
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if dev == Dev::Direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let f = oo.open(&path).unwrap();
        let pool = pool(8);
        let (ring, t) = ring_with(&pool, f);
        Some(Fx {
            _dir: dir,
            _loop: lo,
            path,
            ring,
            pool,
            t,
            dev,
        })
    }

    /// The target's bytes in `[0, SIZE)` and its length.
    fn snapshot(&self) -> (Vec<u8>, u64) {
        let f = File::open(&self.path).unwrap();
        let mut v = vec![0u8; SIZE as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        let len = match self.dev {
            Dev::Block => SIZE,
            _ => f.metadata().unwrap().len(),
        };
        (v, len)
    }

    fn read_at(&self, off: u64, n: usize) -> Vec<u8> {
        let f = File::open(&self.path).unwrap();
        let mut v = vec![0u8; n];
        f.read_exact_at(&mut v, off).unwrap();
        v
    }

    fn buf_with(&self, len: usize, byte: u8) -> PoolBuf {
        let mut b = self.pool.try_get().unwrap();
        for (i, x) in b.capacity_mut().iter_mut().enumerate() {
            *x = byte ^ (i as u8);
        }
        b.set_len(len).unwrap();
        b
    }

    fn teardown(mut self) {
        self.ring.run_until_idle().unwrap();
        check_teardown(&self.ring, &[&self.pool]);
    }
}

/// The direct-I/O offset/length alignment of an O_DIRECT file in the disk directory.
fn direct_align() -> u64 {
    static ALIGN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ALIGN.get_or_init(|| {
        let (_dir, path) = common::disk_path("probe");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let f = common::open(&path, false, true);
        u64::from(
            iocomplete::FdInfo::probe(f.as_raw_fd())
                .unwrap()
                .offset_align,
        )
    })
}

/// The file's expected bytes `[off, off + n)`.
fn file_bytes(off: u64, n: usize) -> Vec<u8> {
    verify::expected(BS, SEED, off, n)
}

// ---- transfers: offsets x lengths x shapes ---------------------------------------------

/// The shape of one transfer request. Lengths are data bytes; parts are `(start, len)`.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Read,
    ReadLen(usize),
    ReadAppend {
        at: usize,
        len: usize,
    },
    Write(usize),
    WriteFrame(usize),
    Readv(&'static [usize]),
    Writev(&'static [usize]),
    ReadvParts(&'static [(usize, usize)]),
    /// Buffers of `BS` data bytes each, written from the given ranges.
    WritevParts(&'static [(usize, usize)]),
}

impl Shape {
    fn is_write(self) -> bool {
        matches!(
            self,
            Shape::Write(_) | Shape::WriteFrame(_) | Shape::Writev(_) | Shape::WritevParts(_)
        )
    }

    /// `Ok(total bytes)` when the request is valid on its face, `Err(finding)` (which
    /// finding documents it, "" for none) when it must be refused.
    fn valid(self) -> Result<usize, &'static str> {
        let cap = BS;
        let part_ok = |s: usize, l: usize, within: usize| {
            l > 0 && s.checked_add(l).is_some_and(|e| e <= within)
        };
        match self {
            Shape::Read => Ok(cap),
            Shape::ReadLen(l) if l > 0 && l <= cap => Ok(l),
            Shape::ReadAppend { at, len } if len > 0 && at.saturating_add(len) <= cap => Ok(len),
            Shape::Write(l) if l > 0 => Ok(l),
            Shape::WriteFrame(l) => Ok(HDR + l),
            Shape::Readv(ls) | Shape::Writev(ls)
                if !ls.is_empty() && ls.len() <= 1024 && ls.iter().all(|&l| l > 0) =>
            {
                Ok(ls.iter().sum())
            }
            Shape::ReadvParts(ps)
                if !ps.is_empty() && ps.iter().all(|&(s, l)| part_ok(s, l, cap)) =>
            {
                Ok(ps.iter().map(|p| p.1).sum())
            }
            Shape::ReadvParts(ps) if ps.iter().any(|&(s, l)| s.checked_add(l).is_none()) => {
                Err("finding 1")
            }
            Shape::WritevParts(ps)
                if !ps.is_empty() && ps.iter().all(|&(s, l)| part_ok(s, l, BS)) =>
            {
                Ok(ps.iter().map(|p| p.1).sum())
            }
            _ => Err(""),
        }
    }
}

/// What a valid-on-its-face transfer of `total` bytes at `off` must do on `dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A typed error before the kernel; nothing changes.
    Refused,
    /// Success, this many bytes.
    Bytes(usize),
    /// Success with this many bytes, or this errno from the kernel (a limit of the
    /// filesystem or device, not bad input), with nothing changed.
    BytesOr(usize, i32),
}

fn want(dev: Dev, shape: Shape, off: u64) -> (Want, &'static str) {
    let total = match shape.valid() {
        Ok(n) => n,
        Err(known) => return (Want::Refused, known),
    };
    if dev == Dev::Direct {
        let a = direct_align();
        if off % a != 0 || total as u64 % a != 0 {
            return (Want::Refused, "");
        }
    }
    // Offsets past i64::MAX are negative to the kernel, and u64::MAX (-1) means "the file
    // position": never a valid positional offset.
    if off > I64MAX {
        return (Want::Refused, "finding 2");
    }
    // The transfer's end past i64::MAX: the kernel refuses it (EINVAL); the crate should
    // have, before it.
    if u128::from(off) + total as u128 > u128::from(I64MAX) {
        return (Want::Refused, "NEW-A");
    }
    if shape.is_write() {
        match dev {
            Dev::Block if off >= SIZE => (Want::BytesOr(total, libc::ENOSPC), ""),
            // A block device takes what fits before its end.
            Dev::Block => (Want::Bytes(total.min((SIZE - off) as usize)), ""),
            // ext4 caps files at 16 TiB.
            _ if off + total as u64 > 1 << 40 => (Want::BytesOr(total, libc::EFBIG), ""),
            _ => (Want::Bytes(total), ""),
        }
    } else {
        let n = if off >= SIZE {
            0
        } else {
            total.min((SIZE - off) as usize)
        };
        (Want::Bytes(n), "")
    }
}

fn build(fx: &mut Fx, shape: Shape, off: u64) -> Op {
    let t = fx.t;
    match shape {
        Shape::Read => Op::read(t, off, fx.buf_with(0, 0x11)),
        Shape::ReadLen(l) => Op::read_len(t, off, fx.buf_with(0, 0x11), l),
        Shape::ReadAppend { at, len } => Op::read_append(t, off, fx.buf_with(at, 0x22), len),
        Shape::Write(l) => Op::write(t, off, fx.buf_with(l.min(BS), 0x33)),
        Shape::WriteFrame(l) => {
            let mut b = fx.buf_with(l, 0x44);
            b.header_mut().copy_from_slice(b"HEADER-16-BYTES!");
            Op::write_frame(t, off, b)
        }
        Shape::Readv(ls) => Op::readv(t, off, ls.iter().map(|&l| fx.buf_with(l, 0x55)).collect()),
        Shape::Writev(ls) => Op::writev(
            t,
            off,
            ls.iter()
                .map(|&l| IoBuf::from(fx.buf_with(l, 0x66)))
                .collect(),
        ),
        Shape::ReadvParts(ps) => Op::readv_parts(
            t,
            off,
            ps.iter().map(|_| fx.buf_with(0, 0x77)).collect(),
            ps.iter()
                .map(|&(start, len)| BufPart { start, len })
                .collect(),
        ),
        Shape::WritevParts(ps) => Op::writev_parts(
            t,
            off,
            ps.iter()
                .map(|_| IoBuf::from(fx.buf_with(BS, 0x88)))
                .collect(),
            ps.iter()
                .map(|&(start, len)| BufPart { start, len })
                .collect(),
        ),
    }
}

/// The bytes a write shape sends, in order.
fn sent_bytes(shape: Shape) -> Vec<u8> {
    let pat = |byte: u8, n: usize| (0..n).map(|i| byte ^ (i as u8)).collect::<Vec<u8>>();
    match shape {
        Shape::Write(l) => pat(0x33, l),
        Shape::WriteFrame(l) => {
            let mut v = b"HEADER-16-BYTES!".to_vec();
            v.extend(pat(0x44, l));
            v
        }
        Shape::Writev(ls) => ls.iter().flat_map(|&l| pat(0x66, l)).collect(),
        Shape::WritevParts(ps) => ps
            .iter()
            .flat_map(|&(s, l)| pat(0x88, BS)[s..s + l].to_vec())
            .collect(),
        _ => unreachable!(),
    }
}

/// The bytes a read shape received, from its completion.
fn received_bytes(shape: Shape, c: &mut Completion, n: usize) -> Vec<u8> {
    match (shape, c.take_bufs()) {
        (Shape::Read | Shape::ReadLen(_), Bufs::Pool(b)) => {
            assert_eq!(b.len(), n, "buffer len() is not the byte count");
            b.data().to_vec()
        }
        (Shape::ReadAppend { at, .. }, Bufs::Pool(b)) => {
            assert_eq!(b.len(), at + n, "appended buffer len()");
            let before: Vec<u8> = (0..at).map(|i| 0x22 ^ (i as u8)).collect();
            assert_eq!(
                &b.data()[..at],
                &before[..],
                "read_append changed the bytes held"
            );
            b.data()[at..].to_vec()
        }
        (Shape::Readv(_), Bufs::PoolList(v)) => v.iter().flat_map(|b| b.data().to_vec()).collect(),
        (Shape::ReadvParts(ps), Bufs::PoolList(mut v)) => {
            let mut out = Vec::new();
            for (b, &(s, l)) in v.iter_mut().zip(ps) {
                assert_eq!(b.len(), 0, "readv_parts changed a buffer's len()");
                out.extend_from_slice(&b.capacity_mut()[s..s + l]);
            }
            out.truncate(n);
            out
        }
        (s, b) => panic!("{s:?}: unexpected buffers {b:?}"),
    }
}

/// Submit `shape` at `off` on a fresh fixture and check it against [`want`].
fn transfer_row(dev: Dev, shape: Shape, off: u64) {
    let Some(mut fx) = Fx::new(dev) else { return };
    let (want, _) = want(dev, shape, off);
    let (before, before_len) = fx.snapshot();
    let stats = fx.ring.stats();
    let op = build(&mut fx, shape, off);
    let mut c = fx.ring.submit(op).wait().unwrap();
    let after = fx.ring.stats();
    let refused_here = after.rejected > stats.rejected;
    let mut landed = None;
    match (want, c.result()) {
        (Want::Refused, Err(e)) => {
            assert!(
                !matches!(
                    e.kind(),
                    ErrorKind::Os(_) | ErrorKind::Cancelled | ErrorKind::TimedOut
                ),
                "refused by the kernel, not before it: {e:?}"
            );
            assert!(refused_here, "not counted as rejected: {e:?}");
            assert_eq!(
                after.enters, stats.enters,
                "a refused request reached the kernel"
            );
            // The buffers come back as they went in.
            match c.take_bufs() {
                Bufs::Pool(b) => match shape {
                    Shape::ReadAppend { at, .. } => assert_eq!(b.len(), at),
                    Shape::Write(l) | Shape::WriteFrame(l) => assert_eq!(b.len(), l),
                    _ => assert_eq!(b.len(), 0),
                },
                Bufs::PoolList(_) | Bufs::List(_) => {}
                other => panic!("buffers not handed back: {other:?}"),
            }
        }
        (Want::Refused, Ok(n)) => panic!("accepted and moved {n} bytes; want a typed refusal"),
        (Want::Bytes(n) | Want::BytesOr(n, _), Ok(got)) => {
            assert_eq!(got, n, "byte count");
            if shape.is_write() {
                let sent = sent_bytes(shape);
                assert!(
                    fx.read_at(off, n) == sent[..n],
                    "written bytes not where they belong"
                );
                landed = Some(n);
            } else {
                let got_bytes = received_bytes(shape, &mut c, n);
                assert_eq!(got_bytes.len(), n);
                assert!(
                    got_bytes == file_bytes(off, n),
                    "read bytes differ from the file at {off}"
                );
            }
        }
        (Want::BytesOr(_, errno), Err(e)) if e.raw_os_error() == Some(errno) => {}
        (w, Err(e)) => panic!("want {w:?}, got {e:?}"),
    }
    drop(c);
    // Nothing else changed: the first SIZE bytes stay (except what a valid write wrote).
    let (now, now_len) = fx.snapshot();
    let mut expect = before;
    let mut expect_len = before_len;
    if let Some(n) = landed {
        let sent = sent_bytes(shape);
        for (i, b) in sent[..n].iter().enumerate() {
            if let Some(x) = usize::try_from(off)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| expect.get_mut(at))
            {
                *x = *b;
            }
        }
        if dev != Dev::Block {
            expect_len = expect_len.max(off + n as u64);
        }
    }
    assert!(
        now == expect,
        "the target's bytes changed where nothing was written"
    );
    assert_eq!(now_len, expect_len, "the target's size changed");
    fx.teardown();
}

/// Offsets worth trying for a transfer of `len` bytes: both ends of the file and of the
/// kernel's signed offset range, and the overflowing ones.
fn offsets(len: usize) -> Vec<(String, u64)> {
    let l = len as u64;
    vec![
        ("0".into(), 0),
        ("1".into(), 1),
        ("BS".into(), BS as u64),
        ("SIZE-1".into(), SIZE - 1),
        ("SIZE-len".into(), SIZE - l),
        ("SIZE".into(), SIZE),
        ("SIZE+1".into(), SIZE + 1),
        ("i64::MAX-len-BS".into(), I64MAX - l - BS as u64 + 1),
        ("i64::MAX-len+1 (end = 2^63)".into(), I64MAX - l + 2),
        ("i64::MAX".into(), I64MAX),
        ("i64::MAX+1".into(), I64MAX + 1),
        ("u64::MAX-BS+1".into(), u64::MAX - BS as u64 + 1),
        ("u64::MAX-1".into(), u64::MAX - 1),
        ("u64::MAX (-1: file position)".into(), u64::MAX),
    ]
}

const SHAPES: &[(&str, Shape)] = &[
    ("read", Shape::Read),
    ("read_len(100)", Shape::ReadLen(100)),
    (
        "read_append(at 100, 200)",
        Shape::ReadAppend { at: 100, len: 200 },
    ),
    ("write(BS)", Shape::Write(BS)),
    ("write_frame(100)", Shape::WriteFrame(100)),
    ("readv([BS, 100])", Shape::Readv(&[BS, 100])),
    ("writev([100, BS])", Shape::Writev(&[100, BS])),
    (
        "readv_parts([(8, 100), (0, BS)])",
        Shape::ReadvParts(&[(8, 100), (0, BS)]),
    ),
    (
        "writev_parts([(0, BS), (100, 50)])",
        Shape::WritevParts(&[(0, BS), (100, 50)]),
    ),
];

fn offset_table(dev: Dev, table: &mut Table) {
    for &(sname, shape) in SHAPES {
        let len = shape.valid().unwrap();
        for (oname, off) in offsets(len) {
            let (_, known) = want(dev, shape, off);
            table.row(format!("{dev:?} {sname} at {oname}"), known, || {
                transfer_row(dev, shape, off)
            });
        }
    }
}

// finding 2: rows at offsets > i64::MAX (u64::MAX reads/writes the file position).
// NEW-A: rows whose offset + length passes i64::MAX reach the kernel (EINVAL).
#[test]
fn op_offsets_on_a_file() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("offsets x shapes, buffered file");
        offset_table(Dev::File, &mut t);
        t.finish();
    });
}

// finding 2 and NEW-A, as above, on an O_DIRECT file (aligned offsets past i64::MAX).
#[test]
fn op_offsets_on_an_o_direct_file() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("offsets x shapes, O_DIRECT file");
        const DIRECT_SHAPES: &[(&str, Shape)] = &[
            ("read", Shape::Read),
            ("read_len(512)", Shape::ReadLen(512)),
            ("write(BS)", Shape::Write(BS)),
            ("readv([BS, BS])", Shape::Readv(&[BS, BS])),
            ("writev([BS])", Shape::Writev(&[BS])),
            ("readv_parts([(0, BS)])", Shape::ReadvParts(&[(0, BS)])),
            ("writev_parts([(0, BS)])", Shape::WritevParts(&[(0, BS)])),
        ];
        for &(sname, shape) in DIRECT_SHAPES {
            let len = shape.valid().unwrap();
            let mut offs = offsets(len);
            offs.push((
                "2^63-BS (aligned, end = 2^63)".into(),
                (1 << 63) - BS as u64,
            ));
            offs.push(("2^63-2BS (aligned)".into(), (1 << 63) - 2 * BS as u64));
            offs.push(("2^63 (aligned)".into(), 1 << 63));
            for (oname, off) in offs {
                let (_, known) = want(Dev::Direct, shape, off);
                t.row(format!("Direct {sname} at {oname}"), known, || {
                    transfer_row(Dev::Direct, shape, off)
                });
            }
        }
        t.finish();
    });
}

// finding 2 and NEW-A, as above, on a loop block device.
#[test]
fn op_offsets_on_a_loop_block_device() {
    bounded(Duration::from_secs(120), || {
        if Fx::new(Dev::Block).is_none() {
            return;
        }
        let mut t = Table::new("offsets x shapes, loop block device");
        for &(sname, shape) in &SHAPES[..5] {
            let len = shape.valid().unwrap();
            for (oname, off) in offsets(len) {
                let (_, known) = want(Dev::Block, shape, off);
                t.row(format!("Block {sname} at {oname}"), known, || {
                    transfer_row(Dev::Block, shape, off)
                });
            }
        }
        t.finish();
    });
}

// finding 1: readv_parts rows whose start + len overflows usize.
#[test]
fn op_lengths_and_parts() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("lengths and parts at offset 0 and SIZE-BS");
        const CAP: usize = BS;
        const MAXU: usize = usize::MAX;
        // Rows marked finding 1: start + len overflows usize.
        #[rustfmt::skip]
        let shapes: Vec<(&str, Shape)> = vec![
            ("read_len(0)", Shape::ReadLen(0)),
            ("read_len(1)", Shape::ReadLen(1)),
            ("read_len(cap-1)", Shape::ReadLen(CAP - 1)),
            ("read_len(cap)", Shape::ReadLen(CAP)),
            ("read_len(cap+1)", Shape::ReadLen(CAP + 1)),
            ("read_len(u32::MAX)", Shape::ReadLen(u32::MAX as usize)),
            ("read_len(u32::MAX+1)", Shape::ReadLen(u32::MAX as usize + 1)),
            ("read_len(usize::MAX)", Shape::ReadLen(MAXU)),
            ("read_append(at 0, 1)", Shape::ReadAppend { at: 0, len: 1 }),
            ("read_append(at 1, cap-1)", Shape::ReadAppend { at: 1, len: CAP - 1 }),
            ("read_append(at 1, cap)", Shape::ReadAppend { at: 1, len: CAP }),
            ("read_append(at cap, 1)", Shape::ReadAppend { at: CAP, len: 1 }),
            ("read_append(at cap, 0)", Shape::ReadAppend { at: CAP, len: 0 }),
            ("read_append(at 7, 0)", Shape::ReadAppend { at: 7, len: 0 }),
            ("read_append(at 7, usize::MAX)", Shape::ReadAppend { at: 7, len: MAXU }),
            ("read_append(at cap, usize::MAX-cap+1)", Shape::ReadAppend { at: CAP, len: MAXU - CAP + 1 }),
            ("write(0)", Shape::Write(0)),
            ("write(1)", Shape::Write(1)),
            ("write(cap)", Shape::Write(CAP)),
            ("write_frame(0): header only", Shape::WriteFrame(0)),
            ("write_frame(cap)", Shape::WriteFrame(CAP)),
            ("readv([])", Shape::Readv(&[])),
            ("readv([0])", Shape::Readv(&[0])),
            ("readv([1])", Shape::Readv(&[1])),
            ("readv([cap, 0])", Shape::Readv(&[CAP, 0])),
            ("readv([cap, cap])", Shape::Readv(&[CAP, CAP])),
            ("writev([])", Shape::Writev(&[])),
            ("writev([0])", Shape::Writev(&[0])),
            ("writev([1, cap])", Shape::Writev(&[1, CAP])),
            ("readv_parts([])", Shape::ReadvParts(&[])),
            ("readv_parts([(0, 0)])", Shape::ReadvParts(&[(0, 0)])),
            ("readv_parts([(0, 1)])", Shape::ReadvParts(&[(0, 1)])),
            ("readv_parts([(0, cap)])", Shape::ReadvParts(&[(0, CAP)])),
            ("readv_parts([(cap-1, 1)])", Shape::ReadvParts(&[(CAP - 1, 1)])),
            ("readv_parts([(cap, 1)])", Shape::ReadvParts(&[(CAP, 1)])),
            ("readv_parts([(1, cap)])", Shape::ReadvParts(&[(1, CAP)])),
            ("readv_parts([(0, cap+1)])", Shape::ReadvParts(&[(0, CAP + 1)])),
            ("readv_parts([(usize::MAX, 1)])", Shape::ReadvParts(&[(MAXU, 1)])), // finding 1
            ("readv_parts([(usize::MAX-15, 32)])", Shape::ReadvParts(&[(MAXU - 15, 32)])), // finding 1
            // Overflows too, but the 2 GiB total check catches it.
            ("readv_parts([(1, usize::MAX)])", Shape::ReadvParts(&[(1, MAXU)])),
            ("readv_parts([(usize::MAX, usize::MAX)])", Shape::ReadvParts(&[(MAXU, MAXU)])),
            ("writev_parts([])", Shape::WritevParts(&[])),
            ("writev_parts([(0, 0)])", Shape::WritevParts(&[(0, 0)])),
            ("writev_parts([(0, cap)])", Shape::WritevParts(&[(0, CAP)])),
            ("writev_parts([(cap-1, 1)])", Shape::WritevParts(&[(CAP - 1, 1)])),
            ("writev_parts([(cap, 1)])", Shape::WritevParts(&[(CAP, 1)])),
            ("writev_parts([(0, cap+1)])", Shape::WritevParts(&[(0, CAP + 1)])),
            ("writev_parts([(usize::MAX, 1)])", Shape::WritevParts(&[(MAXU, 1)])),
            ("writev_parts([(usize::MAX-15, 32)])", Shape::WritevParts(&[(MAXU - 15, 32)])),
        ];
        for (name, shape) in shapes {
            for off in [0, SIZE - BS as u64] {
                let (_, known) = want(Dev::File, shape, off);
                t.row(format!("{name} at {off}"), known, || {
                    transfer_row(Dev::File, shape, off)
                });
            }
        }
        t.finish();
    });
}

// finding 1: a part whose start + len overflows usize passes the bounds check
// (`checked_add(..) <= Some(cap)` is true for None); the iovec then points before the
// buffer, into another live buffer of the same pool, and the kernel writes there.
#[test]
fn readv_parts_overflowing_part_never_reaches_another_buffer() {
    bounded(Duration::from_secs(30), || {
        let mut fx = Fx::new(Dev::File).unwrap();
        // The victim: a live buffer the caller keeps, right before the attacker's slot.
        let mut victim = fx.buf_with(BS, 0xAA);
        let attacker = fx.pool.try_get().unwrap();
        assert!(
            attacker.data_ptr() > victim.data_ptr(),
            "slots in pool order"
        );
        let dist = attacker.data_ptr() as usize - victim.data_ptr() as usize;
        let before = victim.data().to_vec();
        // attacker + start == victim (mod 2^64), and start + len == 2^64 exactly.
        let part = BufPart {
            start: 0usize.wrapping_sub(dist),
            len: dist,
        };
        let stats = fx.ring.stats();
        let c = fx
            .ring
            .submit(Op::readv_parts(fx.t, 0, vec![attacker], vec![part]))
            .wait()
            .unwrap();
        let moved = c.result();
        let clobbered = victim.data() != &before[..];
        drop(c);
        assert!(
            !clobbered,
            "the kernel wrote into another live buffer (result {moved:?}); the part \
             {part:?} passed the bounds check"
        );
        assert!(
            matches!(moved, Err(e) if matches!(e.kind(), ErrorKind::InvalidInput { .. })),
            "want InvalidInput, got {moved:?}"
        );
        assert_eq!(fx.ring.stats().enters, stats.enters, "reached the kernel");
        victim.clear();
        drop(victim);
        fx.teardown();
    });
}

/// readv_parts / writev_parts with a number of parts other than one per buffer.
#[test]
fn vectored_parts_counts_must_match_buffers() {
    bounded(Duration::from_secs(30), || {
        let mut t = Table::new("parts vs buffers");
        let cases: [(usize, usize); 5] = [(1, 0), (1, 2), (2, 1), (0, 0), (0, 1)];
        for (bufs, parts) in cases {
            for write in [false, true] {
                t.row(
                    format!("{bufs} bufs, {parts} parts, write={write}"),
                    "",
                    || {
                        let mut fx = Fx::new(Dev::File).unwrap();
                        let (before, _) = fx.snapshot();
                        let ps = vec![BufPart { start: 0, len: 8 }; parts];
                        let op = if write {
                            let bs = (0..bufs).map(|_| IoBuf::from(fx.buf_with(BS, 1))).collect();
                            Op::writev_parts(fx.t, 0, bs, ps)
                        } else {
                            let bs = (0..bufs).map(|_| fx.buf_with(0, 1)).collect();
                            Op::readv_parts(fx.t, 0, bs, ps)
                        };
                        let e = fx.ring.submit(op).wait().unwrap().error();
                        // No buffers and no parts: counted right, but an empty transfer.
                        let refused = match e.map(|e| e.kind()) {
                            Some(ErrorKind::ZeroLength { .. }) => (bufs, parts) == (0, 0),
                            Some(ErrorKind::InvalidInput { .. }) => (bufs, parts) != (0, 0),
                            _ => false,
                        };
                        assert!(refused, "want InvalidInput (or ZeroLength), got {e:?}");
                        assert_eq!(fx.ring.stats().enters, 0);
                        assert!(fx.snapshot().0 == before);
                        fx.teardown();
                    },
                );
            }
        }
        t.finish();
    });
}

/// 1024 buffers is the most one vectored op takes; 1025 is refused. A total over
/// i32::MAX bytes is refused too (pool of 1 GiB slots, never touched).
#[test]
fn vectored_buffer_count_and_total_limits() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("vectored limits");
        let big = BufferPool::builder()
            .slots(1100)
            .slot_len(BS)
            .build()
            .unwrap();
        for (n, ok) in [(1usize, true), (1023, true), (1024, true), (1025, false)] {
            for write in [false, true] {
                t.row(format!("{n} buffers, write={write}"), "", || {
                    let mut fx = Fx::new(Dev::File).unwrap();
                    fx.ring.register_pool(&big);
                    let (before, _) = fx.snapshot();
                    let op = if write {
                        let bs = (0..n)
                            .map(|_| {
                                let mut b = big.try_get().unwrap();
                                b.set_len(1).unwrap();
                                b.capacity_mut()[0] = 0x5C;
                                IoBuf::from(b)
                            })
                            .collect();
                        Op::writev(fx.t, 0, bs)
                    } else {
                        let bs = (0..n)
                            .map(|_| {
                                let mut b = big.try_get().unwrap();
                                b.set_len(1).unwrap();
                                b
                            })
                            .collect();
                        Op::readv(fx.t, 0, bs)
                    };
                    let c = fx.ring.submit(op).wait().unwrap();
                    if ok {
                        assert_eq!(c.result(), Ok(n), "{:?}", c.error());
                        if write {
                            assert!(fx.read_at(0, n).iter().all(|&b| b == 0x5C));
                        } else if let Bufs::PoolList(v) = c.bufs() {
                            let got: Vec<u8> = v.iter().flat_map(|b| b.data().to_vec()).collect();
                            assert!(got == file_bytes(0, n));
                        }
                    } else {
                        assert!(
                            matches!(
                                c.error().map(|e| e.kind()),
                                Some(ErrorKind::OutOfRange { max: 1024, .. })
                            ),
                            "want OutOfRange, got {:?}",
                            c.result()
                        );
                        assert!(fx.snapshot().0 == before);
                    }
                    drop(c);
                    fx.ring.run_until_idle().unwrap();
                    check_teardown(&fx.ring, &[&fx.pool, &big]);
                });
            }
        }
        let huge = BufferPool::builder().populate(false);
        let huge = huge.slots(2).slot_len(1 << 30).build().unwrap();
        for (lens, ok) in [
            ([1usize << 30, (1 << 30) - 1], true),
            ([1 << 30, 1 << 30], false),
        ] {
            t.row(format!("readv of {lens:?} (total vs i32::MAX)"), "", || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let bufs = lens
                    .iter()
                    .map(|&l| {
                        let mut b = huge.try_get().unwrap();
                        b.set_len(l).unwrap();
                        b
                    })
                    .collect();
                let c = fx.ring.submit(Op::readv(fx.t, 0, bufs)).wait().unwrap();
                if ok {
                    assert_eq!(c.result(), Ok(SIZE as usize));
                } else {
                    assert!(
                        matches!(
                            c.error().map(|e| e.kind()),
                            Some(ErrorKind::OutOfRange {
                                what: "vectored transfer length",
                                ..
                            })
                        ),
                        "want OutOfRange, got {:?}",
                        c.result()
                    );
                }
                drop(c);
                fx.ring.run_until_idle().unwrap();
                check_teardown(&fx.ring, &[&fx.pool, &huge]);
            });
        }
        t.finish();
    });
}

/// Streams ignore the offset (documented): any offset reads the next bytes, and nothing
/// is lost whatever the crate decides.
#[test]
fn op_offsets_on_a_pipe_are_ignored() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("offsets on a pipe");
        for (oname, off) in offsets(BS) {
            t.row(format!("pipe read at {oname}"), "", || {
                let (rx, tx) = pipe();
                let pool = pool(2);
                let (mut ring, r) = ring_with(&pool, rx);
                let w = ring.register(tx).unwrap();
                let mut b = pool.try_get().unwrap();
                b.extend_from_slice(b"stream bytes").unwrap();
                let c = ring.submit(Op::write(w, off, b)).wait().unwrap();
                assert_eq!(c.result(), Ok(12), "write at {off}");
                drop(c);
                let c = ring
                    .submit(Op::read(r, off, pool.try_get().unwrap()))
                    .wait()
                    .unwrap();
                assert_eq!(c.into_result().unwrap().data(), b"stream bytes");
                ring.run_until_idle().unwrap();
                check_teardown(&ring, &[&pool]);
            });
        }
        t.finish();
    });
}

// ---- durations ---------------------------------------------------------------------------

/// A ring with a pipe registered (read end) and its write end, for operations only a
/// write (or a timer) can finish.
struct PipeFx {
    ring: Ring,
    pool: BufferPool,
    r: Target,
    tx: OwnedFd,
}

impl PipeFx {
    fn new() -> PipeFx {
        let (rx, tx) = pipe();
        let pool = pool(4);
        let (ring, r) = ring_with(&pool, rx);
        PipeFx { ring, pool, r, tx }
    }

    fn send(&self, bytes: &[u8]) {
        write_fd(self.tx.as_raw_fd(), bytes);
    }

    /// Drive the ring a little (~60 ms) without anything arriving.
    fn idle(&mut self) {
        for _ in 0..3 {
            self.ring.run_once(Some(Duration::from_millis(20))).unwrap();
        }
    }

    fn teardown(mut self) {
        self.ring.run_until_idle().unwrap();
        check_teardown(&self.ring, &[&self.pool]);
    }
}

fn is_kind(r: Result<usize, iocomplete::Error>, k: fn(&ErrorKind) -> bool) -> bool {
    matches!(r, Err(e) if k(&e.kind()))
}

// finding 5: Op::deadline with a duration past i64::MAX seconds times out at once.
#[test]
fn op_deadline_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("Op::deadline");
        for (name, d) in TINY {
            t.row(format!("pipe read, deadline {name}"), "", || {
                let mut fx = PipeFx::new();
                let c = fx
                    .ring
                    .submit(Op::read(fx.r, 0, fx.pool.try_get().unwrap()).deadline(d))
                    .wait()
                    .unwrap();
                assert!(
                    c.error().is_some_and(|e| e.is_timed_out()),
                    "{:?}",
                    c.result()
                );
                drop(c);
                fx.teardown();
            });
        }
        for (name, d) in HUGE {
            let known = if d.as_secs() > I64MAX {
                "finding 5"
            } else {
                ""
            };
            t.row(format!("pipe read, deadline {name}: never"), known, || {
                let mut fx = PipeFx::new();
                let tk = fx
                    .ring
                    .submit(Op::read(fx.r, 0, fx.pool.try_get().unwrap()).deadline(d))
                    .ticket();
                fx.idle();
                if fx.ring.is_done(&tk) {
                    let c = fx.ring.wait(tk).unwrap();
                    panic!("completed without data: {:?}", c.result());
                }
                fx.send(b"late");
                let c = fx.ring.wait(tk).unwrap();
                assert_eq!(c.into_result().unwrap().data(), b"late");
                fx.teardown();
            });
            t.row(format!("nop, deadline {name}"), known, || {
                let mut fx = PipeFx::new();
                let c = fx.ring.submit(Op::nop().deadline(d)).wait().unwrap();
                assert_eq!(c.result(), Ok(0));
                fx.teardown();
            });
            t.row(format!("file read, deadline {name}"), known, || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let buf = fx.pool.try_get().unwrap();
                let c = fx
                    .ring
                    .submit(Op::read(fx.t, 0, buf).deadline(d))
                    .wait()
                    .unwrap();
                let b = c.into_result().unwrap();
                assert!(b.data() == file_bytes(0, BS));
                drop(b);
                fx.teardown();
            });
        }
        t.finish();
    });
}

// finding 5: Op::timeout with a duration past i64::MAX seconds fails EINVAL.
#[test]
fn op_timeout_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("Op::timeout");
        for (name, d) in TINY {
            t.row(format!("timeout {name}"), "", || {
                let mut fx = PipeFx::new();
                let c = fx.ring.submit(Op::timeout(d)).wait().unwrap();
                assert!(
                    c.error().is_some_and(|e| e.is_timed_out()),
                    "{:?}",
                    c.result()
                );
                fx.teardown();
            });
        }
        for (name, d) in HUGE {
            let known = if d.as_secs() > I64MAX {
                "finding 5"
            } else {
                ""
            };
            t.row(
                format!("timeout {name}: never, then cancelled"),
                known,
                || {
                    let mut fx = PipeFx::new();
                    let tk = fx.ring.submit(Op::timeout(d)).ticket();
                    fx.idle();
                    if fx.ring.is_done(&tk) {
                        let c = fx.ring.wait(tk).unwrap();
                        panic!("fired: {:?}", c.result());
                    }
                    assert!(fx.ring.cancel(tk.id()));
                    let c = fx.ring.wait(tk).unwrap();
                    assert!(
                        c.error().is_some_and(|e| e.is_cancelled()),
                        "{:?}",
                        c.result()
                    );
                    fx.teardown();
                },
            );
        }
        t.row("timeout with a deadline of its own", "", || {
            let mut fx = PipeFx::new();
            let c = fx
                .ring
                .submit(Op::timeout(Duration::ZERO).deadline(Duration::ZERO))
                .wait()
                .unwrap();
            assert!(is_kind(c.result(), |k| matches!(
                k,
                ErrorKind::InvalidInput { .. }
            )));
            assert_eq!(fx.ring.stats().enters, 0);
            fx.teardown();
        });
        t.finish();
    });
}

/// A thread that writes `bytes` to `fd` after `after`.
fn write_later(fd: &OwnedFd, after: Duration, bytes: &'static [u8]) -> std::thread::JoinHandle<()> {
    let fd = fd.try_clone().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        write_fd(fd.as_raw_fd(), bytes);
    })
}

// finding 5: run_once(Some(d)) / run_wait(.., Some(d)) with d past i64::MAX seconds
// return at once (or fail) instead of waiting for the completion.
#[test]
fn run_once_and_run_wait_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("Ring::run_once / run_wait");
        let all: Vec<(&str, Option<Duration>)> = TINY
            .iter()
            .chain(HUGE.iter())
            .map(|&(n, d)| (n, Some(d)))
            .chain([("None", None)])
            .collect();
        for &(name, d) in &all {
            t.row(
                format!("run_once({name}) with nothing in flight"),
                "",
                || {
                    let mut fx = PipeFx::new();
                    assert_eq!(fx.ring.run_once(d), Ok(0));
                    fx.teardown();
                },
            );
            t.row(
                format!("run_wait(usize::MAX, {name}) with nothing in flight"),
                "",
                || {
                    let mut fx = PipeFx::new();
                    assert_eq!(fx.ring.run_wait(usize::MAX, d), Ok(0));
                    fx.teardown();
                },
            );
        }
        for &(name, d) in &all {
            let tiny = d.is_some_and(|d| d <= Duration::from_millis(1));
            let known = if d.is_some_and(|d| d.as_secs() > I64MAX) {
                "finding 5"
            } else {
                ""
            };
            t.row(
                format!("run_once({name}) with a read waiting for a write"),
                known,
                || {
                    let mut fx = PipeFx::new();
                    let tk = fx
                        .ring
                        .submit(Op::read(fx.r, 0, fx.pool.try_get().unwrap()))
                        .ticket();
                    fx.ring.poll().unwrap();
                    let w = write_later(&fx.tx, Duration::from_millis(50), b"now");
                    let n = fx.ring.run_once(d).unwrap();
                    if tiny {
                        assert!(n <= 1);
                    } else {
                        assert_eq!(n, 1, "returned before the completion");
                        assert!(fx.ring.is_done(&tk));
                    }
                    w.join().unwrap();
                    let c = fx.ring.wait(tk).unwrap();
                    assert_eq!(c.into_result().unwrap().data(), b"now");
                    fx.teardown();
                },
            );
            t.row(
                format!("run_wait(usize::MAX, {name}) with two reads waiting"),
                known,
                || {
                    let mut fx = PipeFx::new();
                    let (rx2, tx2) = pipe();
                    let r2 = fx.ring.register(rx2).unwrap();
                    let a = fx
                        .ring
                        .submit(Op::read(fx.r, 0, fx.pool.try_get().unwrap()))
                        .ticket();
                    let b = fx
                        .ring
                        .submit(Op::read(r2, 0, fx.pool.try_get().unwrap()))
                        .ticket();
                    fx.ring.poll().unwrap();
                    let w1 = write_later(&fx.tx, Duration::from_millis(30), b"one");
                    let w2 = write_later(&tx2, Duration::from_millis(60), b"two");
                    let n = fx.ring.run_wait(usize::MAX, d).unwrap();
                    if tiny {
                        assert!(n <= 2);
                    } else {
                        assert_eq!(n, 2, "returned before both completions");
                    }
                    w1.join().unwrap();
                    w2.join().unwrap();
                    assert_eq!(
                        fx.ring.wait(a).unwrap().into_result().unwrap().data(),
                        b"one"
                    );
                    assert_eq!(
                        fx.ring.wait(b).unwrap().into_result().unwrap().data(),
                        b"two"
                    );
                    fx.teardown();
                },
            );
            t.row(
                format!("run_wait(0, {name}) with a read waiting: returns"),
                "",
                || {
                    let mut fx = PipeFx::new();
                    let tk = fx
                        .ring
                        .submit(Op::read(fx.r, 0, fx.pool.try_get().unwrap()))
                        .ticket();
                    assert_eq!(fx.ring.run_wait(0, d), Ok(0));
                    fx.send(b"x");
                    assert_eq!(fx.ring.wait(tk).unwrap().result(), Ok(1));
                    fx.teardown();
                },
            );
        }
        t.finish();
    });
}

// finding 5: get_timeout(d) with d past what an Instant can hold panics.
#[test]
fn pool_get_timeout_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("BufferPool::get_timeout");
        for (name, d) in TINY {
            t.row(format!("get_timeout({name}), a slot free"), "", || {
                let p = pool(1);
                let b = p.get_timeout(d).unwrap();
                assert_eq!(b.capacity(), BS);
            });
            t.row(format!("get_timeout({name}), exhausted"), "", || {
                let p = pool(1);
                let _held = p.try_get().unwrap();
                let e = p.get_timeout(d).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::PoolExhausted);
            });
        }
        for (name, d) in HUGE {
            t.row(
                format!("get_timeout({name}), a slot returned later"),
                "finding 5",
                || {
                    let p = pool(1);
                    let held = p.try_get().unwrap();
                    let h = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        drop(held);
                    });
                    let b = p.get_timeout(d).unwrap();
                    h.join().unwrap();
                    drop(b);
                    assert_eq!(p.stats().free, 1);
                },
            );
        }
        t.finish();
    });
}

// finding 5: pop_timeout / push_timeout / pop_batch_timeout with huge durations panic.
#[test]
fn completion_queue_timeout_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("CompletionQueue timeouts");
        for (name, d) in TINY {
            t.row(format!("pop_timeout({name}), empty"), "", || {
                let q = CompletionQueue::<u32>::new(1);
                assert_eq!(q.pop_timeout(d), None);
            });
            t.row(format!("pop_timeout({name}), one item"), "", || {
                let q = CompletionQueue::new(1);
                q.push(7u32).unwrap();
                assert_eq!(q.pop_timeout(d), Some(7));
            });
            t.row(
                format!("push_timeout({name}), full: item handed back"),
                "",
                || {
                    let q = CompletionQueue::new(1);
                    q.push(1u32).unwrap();
                    assert_eq!(q.push_timeout(2, d), Err(2));
                    assert_eq!(q.pop(), Some(1));
                    assert_eq!(q.pop(), None);
                },
            );
            t.row(
                format!("pop_batch_timeout(max 0 / 1 / usize::MAX, {name})"),
                "",
                || {
                    let q = CompletionQueue::new(4);
                    let mut out = Vec::new();
                    assert_eq!(q.pop_batch_timeout(&mut out, 0, d), 0);
                    assert_eq!(q.pop_batch_timeout(&mut out, usize::MAX, d), 0);
                    q.push(1u32).unwrap();
                    q.push(2).unwrap();
                    assert_eq!(q.pop_batch_timeout(&mut out, 0, d), 0);
                    assert_eq!(q.pop_batch_timeout(&mut out, 1, d), 1);
                    assert_eq!(q.pop_batch_timeout(&mut out, usize::MAX, d), 1);
                    assert_eq!(out, [1, 2]);
                },
            );
        }
        for (name, d) in HUGE {
            t.row(
                format!("pop_timeout({name}), pushed later"),
                "finding 5",
                || {
                    let q = Arc::new(CompletionQueue::new(1));
                    let q2 = q.clone();
                    let h = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        q2.push(9u32).unwrap();
                    });
                    assert_eq!(q.pop_timeout(d), Some(9));
                    h.join().unwrap();
                },
            );
            t.row(
                format!("push_timeout({name}), popped later"),
                "finding 5",
                || {
                    let q = Arc::new(CompletionQueue::new(1));
                    q.push(1u32).unwrap();
                    let q2 = q.clone();
                    let h = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        q2.pop()
                    });
                    assert_eq!(q.push_timeout(2, d), Ok(()));
                    assert_eq!(h.join().unwrap(), Some(1));
                    assert_eq!(q.pop(), Some(2));
                },
            );
            t.row(
                format!("pop_batch_timeout(usize::MAX, {name}), pushed later"),
                "finding 5",
                || {
                    let q = Arc::new(CompletionQueue::new(2));
                    let q2 = q.clone();
                    let h = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(30));
                        q2.push(5u32).unwrap();
                    });
                    let mut out = Vec::new();
                    assert_eq!(q.pop_batch_timeout(&mut out, usize::MAX, d), 1);
                    assert_eq!(out, [5]);
                    h.join().unwrap();
                },
            );
            t.row(
                format!("pop_batch_timeout(0, {name}) returns at once"),
                "",
                || {
                    let q = CompletionQueue::<u32>::new(2);
                    let mut out = Vec::new();
                    assert_eq!(q.pop_batch_timeout(&mut out, 0, d), 0);
                },
            );
        }
        t.finish();
    });
}

// ---- FIFO receive and the drivers' durations ---------------------------------------------

// finding 5: receive_with_deadline(Duration::MAX) panics (Instant + timeout).
#[test]
fn fifo_receive_with_deadline_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("FifoReceiver::receive_with_deadline");
        let setup = || {
            let (rx, tx) = pipe();
            set_nonblocking(rx.as_raw_fd());
            let pool = pool(2);
            let (ring, r) = ring_with(&pool, rx);
            let fifo = FifoReceiver::new(&ring, r).unwrap();
            (ring, pool, fifo, tx)
        };
        for (name, d) in TINY {
            t.row(format!("deadline {name}, silent source"), "", || {
                let (mut ring, pool, mut fifo, _tx) = setup();
                fifo.receive_with_deadline(&mut ring, pool.try_get().unwrap(), 8, d)
                    .unwrap();
                let got = fifo.run(&mut ring).unwrap();
                assert_eq!(got.status(), FifoStatus::TimedOut);
                assert_eq!(got.bytes(), 0);
                drop(got);
                ring.run_until_idle().unwrap();
                check_teardown(&ring, &[&pool]);
            });
        }
        for (name, d) in HUGE {
            t.row(format!("deadline {name}: never"), "finding 5", || {
                let (mut ring, pool, mut fifo, tx) = setup();
                fifo.receive_with_deadline(&mut ring, pool.try_get().unwrap(), 8, d)
                    .unwrap();
                for _ in 0..3 {
                    ring.run_once(Some(Duration::from_millis(20))).unwrap();
                    assert!(fifo.process(&mut ring).unwrap().is_none(), "ended early");
                }
                write_fd(tx.as_raw_fd(), b"8 bytes!");
                let got = fifo.run(&mut ring).unwrap();
                assert_eq!(got.status(), FifoStatus::Full);
                assert_eq!(got.buf.data(), b"8 bytes!");
                drop(got);
                ring.run_until_idle().unwrap();
                check_teardown(&ring, &[&pool]);
            });
        }
        t.finish();
    });
}

/// Run a split read of the whole file with `config`; returns its completion after
/// checking the bytes it delivered.
fn split_read(fx: &mut Fx, job: Job, config: SplitConfig) -> iocomplete::split::SplitOutcome {
    let mut chunks: Vec<(u64, usize)> = Vec::new();
    let mut d = SplitDriver::new(&mut fx.ring, &fx.pool, job, config)
        .unwrap()
        .on_read(move |offset: u64, buf: &PoolBuf| {
            assert!(
                buf.data() == file_bytes(offset, buf.len()),
                "chunk at {offset} differs"
            );
            chunks.push((offset, buf.len()));
            Ok(())
        });
    d.run(&mut fx.ring).unwrap()
}

// finding 5 (via Op::timeout): a split or DMA deadline past i64::MAX seconds fails the
// request at once instead of never firing.
#[test]
fn split_and_dma_deadline_durations() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("SplitConfig::deadline / DmaDriver deadline");
        let job = |fx: &Fx| Job::Read {
            src: fx.t,
            offset: 0,
            len: SIZE,
        };
        for (name, d) in TINY.iter().chain(HUGE.iter()) {
            let (name, d) = (*name, *d);
            let huge = d > Duration::from_secs(1);
            let known = if d.as_secs() > I64MAX {
                "finding 5"
            } else {
                ""
            };
            t.row(format!("split read, deadline {name}"), known, || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let j = job(&fx);
                let c = split_read(&mut fx, j, SplitConfig::new().deadline(d));
                if huge {
                    assert_eq!((c.status, c.bytes), (Ok(()), SIZE));
                } else {
                    assert!(
                        c.status.is_ok() || c.status.is_err_and(|e| e.is_timed_out()),
                        "{c:?}"
                    );
                    assert!(c.bytes <= SIZE);
                }
                fx.teardown();
            });
            t.row(format!("dma read, deadline {name}"), known, || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let mut sg = SgList::new();
                sg.push_extent(&fx.pool, 100, 3 * BS as u64).unwrap();
                let mut dr = DmaDriver::builder(fx.t, sg, Direction::Read)
                    .deadline(d)
                    .build(&mut fx.ring)
                    .unwrap();
                let (c, sg) = dr.run(&mut fx.ring).unwrap();
                if huge {
                    assert_eq!((c.status, c.bytes), (Ok(()), 3 * BS as u64));
                    let got: Vec<u8> = sg.bufs().iter().flat_map(|b| b.data().to_vec()).collect();
                    assert!(got == file_bytes(100, 3 * BS));
                } else {
                    assert!(
                        c.status.is_ok() || c.status.is_err_and(|e| e.is_timed_out()),
                        "{c:?}"
                    );
                }
                drop(sg);
                fx.teardown();
            });
        }
        t.finish();
    });
}

// ---- builders ----------------------------------------------------------------------------

/// RingBuilder sizes at their edges: a typed error or a working ring, never a panic.
#[test]
fn ring_builder_sizes() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("RingBuilder");
        /// What a row must give.
        #[derive(Clone, Copy, Debug)]
        enum W {
            Works,
            Invalid,
        }
        type Mk = fn() -> RingBuilder;
        fn b() -> RingBuilder {
            Ring::builder()
        }
        #[rustfmt::skip]
        let rows: Vec<(&str, Mk, W, &str)> = vec![
            ("entries(0)", || b().entries(0), W::Invalid, ""),
            ("entries(1)", || b().entries(1), W::Works, ""),
            ("entries(2)", || b().entries(2), W::Works, ""),
            ("entries(32767)", || b().entries(32767), W::Works, ""),
            ("entries(32768)", || b().entries(32768), W::Works, ""),
            ("entries(32769)", || b().entries(32769), W::Invalid, ""),
            ("entries(u32::MAX)", || b().entries(u32::MAX), W::Invalid, ""),
            // A CQ smaller than the SQ is refused by the kernel (EINVAL): the builder
            // raises it to the SQ's size.
            ("cq_entries(0)", || b().cq_entries(0), W::Works, "NEW-B"),
            ("cq_entries(1)", || b().cq_entries(1), W::Works, "NEW-B"),
            ("entries(1).cq_entries(1)", || b().entries(1).cq_entries(1), W::Works, ""),
            ("entries(4).cq_entries(2)", || b().entries(4).cq_entries(2), W::Works, "NEW-B"),
            ("cq_entries(u32::MAX)", || b().cq_entries(u32::MAX), W::Works, ""),
            ("entries(32768).cq_entries(u32::MAX)", || b().entries(32768).cq_entries(u32::MAX), W::Works, ""),
            ("files(0)", || b().files(0), W::Works, ""),
            ("files(1)", || b().files(1), W::Works, ""),
            ("files(u32::MAX)", || b().files(u32::MAX), W::Works, ""),
            ("buffers(0)", || b().buffers(0), W::Works, ""),
            ("buffers(1)", || b().buffers(1), W::Works, ""),
            ("buffers(u32::MAX)", || b().buffers(u32::MAX), W::Works, ""),
            ("ops(0)", || b().ops(0), W::Works, ""),
            ("ops(1)", || b().ops(1), W::Works, ""),
            ("sqpoll(0)", || b().sqpoll(0), W::Works, ""),
            ("sqpoll(u32::MAX)", || b().sqpoll(u32::MAX), W::Works, ""),
        ];
        for (name, mk, w, known) in rows {
            t.row(name, known, || {
                let r = mk().build();
                match (w, r) {
                    (W::Works, Ok(ring)) => exercise_ring(ring),
                    (W::Invalid, Err(e))
                        if e.kind()
                            == (ErrorKind::OutOfRange {
                                what: "ring entries",
                                min: 1,
                                max: 32768,
                            }) => {}
                    (w, Err(e)) => panic!("want {w:?}, got {e:?}"),
                    (w, Ok(_)) => panic!("want {w:?}, got a ring"),
                }
            });
        }
        t.finish();
    });
}

// NEW-C: RingBuilder::ops(usize::MAX) (or any reservation the allocator cannot make)
// panics with "capacity overflow" (Slab::with_capacity) instead of a typed error.
#[test]
fn ring_builder_ops_huge_is_not_a_panic() {
    if !isolated(
        "ring_builder_ops_huge_is_not_a_panic",
        Duration::from_secs(30),
    ) {
        return;
    }
    for n in [usize::MAX, usize::MAX / 2, 1 << 40] {
        let r = catch_unwind(|| Ring::builder().ops(n).build().map(drop));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::OutOfRange {
                        what: "op-table reservation",
                        ..
                    }
                ),
                "ops({n}): {e:?}"
            ),
            Err(_) => panic!("ops({n}) panicked in RingBuilder::build"),
        }
    }
}

/// A ring from a builder row must work: 40 nops, a file read and write with a registered
/// pool, and a clean teardown.
fn exercise_ring(mut ring: Ring) {
    let (_dir, path) = common::disk_path("x");
    verify::make_file(&path, SIZE, BS, SEED);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let pool = pool(4);
    let _ = ring.register_pool(&pool);
    let t = ring.register(f).unwrap();
    let q = Arc::new(CompletionQueue::new(64));
    for i in 0..40 {
        ring.submit(Op::nop().tag(i)).to_queue(&q);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.len() < 40 && Instant::now() < deadline {
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let mut tags: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|c| c.tag()).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..40).collect::<Vec<_>>());
    let b = ring
        .submit(Op::read(t, BS as u64, pool.try_get().unwrap()))
        .wait()
        .unwrap()
        .into_result()
        .unwrap();
    assert!(b.data() == file_bytes(BS as u64, BS));
    let c = ring.submit(Op::write(t, 0, b)).wait().unwrap();
    assert_eq!(c.result(), Ok(BS));
    drop(c);
    let mut got = vec![0; BS];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == file_bytes(BS as u64, BS));
    ring.run_until_idle().unwrap();
    check_teardown(&ring, &[&pool]);
}

/// PoolBuilder values at their edges: a typed error or a pool whose every slot has the
/// promised geometry, never a panic.
#[test]
fn pool_builder_sizes() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("PoolBuilder");
        const G: usize = 1 << 30;
        type Mk = fn() -> iocomplete::buf::PoolBuilder;
        fn b() -> iocomplete::buf::PoolBuilder {
            BufferPool::builder().populate(false)
        }
        #[rustfmt::skip]
        let rows: Vec<(&str, Mk, bool)> = vec![
            ("slots(0)", || b().slots(0), false),
            ("slots(1)", || b().slots(1).slot_len(BS), true),
            ("slots(2^31-1) x 4 KiB (bigger than the machine)", || b().slots((1 << 31) - 1).slot_len(BS), true),
            ("slots(2^31)", || b().slots(1 << 31), false),
            ("slots(usize::MAX)", || b().slots(usize::MAX), false),
            ("slot_len(0)", || b().slot_len(0), false),
            ("slot_len(1)", || b().slots(2).slot_len(1), true),
            ("slot_len(1 GiB)", || b().slots(2).slot_len(G), true),
            ("slot_len(1 GiB + 1)", || b().slot_len(G + 1), false),
            ("slot_len(usize::MAX)", || b().slot_len(usize::MAX), false),
            ("header_len(1)", || b().slots(2).slot_len(BS).header_len(1), true),
            ("header_len(4095)", || b().slots(2).slot_len(BS).header_len(4095), true),
            ("header_len(4097)", || b().slots(2).slot_len(BS).header_len(4097), true),
            ("header_len(1 GiB)", || b().slots(2).slot_len(BS).header_len(G), true),
            ("header_len(1 GiB + 1)", || b().header_len(G + 1), false),
            ("header_len(usize::MAX)", || b().header_len(usize::MAX), false),
            ("trailer_len(1)", || b().slots(2).slot_len(BS).trailer_len(1), true),
            ("trailer_len(1 GiB)", || b().slots(2).slot_len(BS).trailer_len(G), true),
            ("trailer_len(usize::MAX)", || b().trailer_len(usize::MAX), false),
            ("header+slot+trailer 1 GiB each", || b().slots(2).slot_len(G).header_len(G).trailer_len(G), true),
            ("align(0)", || b().align(0), false),
            ("align(1)", || b().slots(3).slot_len(100).header_len(3).align(1), true),
            ("align(2)", || b().slots(3).slot_len(100).header_len(3).align(2), true),
            ("align(3)", || b().align(3), false),
            ("align(2 MiB)", || b().slots(2).slot_len(1).align(1 << 21), true),
            ("align(4 MiB)", || b().align(1 << 22), false),
            ("align(usize::MAX)", || b().align(usize::MAX), false),
            ("align(1 << 63)", || b().align(1 << 63), false),
        ];
        for (name, mk, ok) in rows {
            t.row(name, "", || {
                let builder = mk();
                match builder.build() {
                    Ok(p) => {
                        assert!(ok, "built a pool; want a typed refusal");
                        check_pool_geometry(&p);
                    }
                    Err(e) if ok => assert!(
                        // An arena bigger than the machine can map is a typed OS error.
                        matches!(e.kind(), ErrorKind::Os(libc::ENOMEM)),
                        "want a pool, got {e:?}"
                    ),
                    Err(e) => assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::OutOfRange {
                                what: "pool slots"
                                    | "pool slot length"
                                    | "pool header/trailer length"
                                    | "pool alignment",
                                ..
                            } | ErrorKind::NotPowerOfTwo {
                                what: "pool alignment",
                                ..
                            }
                        ),
                        "want OutOfRange or NotPowerOfTwo, got {e:?}"
                    ),
                }
            });
        }
        t.finish();
    });
}

/// Every slot's data is aligned, its header sits right before it, header/data/trailer
/// are writable at both ends without touching a neighbour, and every slot comes back.
fn check_pool_geometry(p: &BufferPool) {
    let g = p.geometry();
    assert!(g.capacity >= 1 && g.capacity % g.align == 0, "{g:?}");
    let n = g.slots.min(8);
    let mut bufs: Vec<PoolBuf> = (0..n).map(|_| p.try_get().unwrap()).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        assert_eq!(b.data_ptr() as usize % g.align, 0);
        assert_eq!(b.header().len(), g.header_len);
        assert_eq!(b.capacity(), g.capacity);
        let mark = i as u8 + 1;
        if let Some(h) = b.header_mut().first_mut() {
            *h = mark;
        }
        if let Some(h) = b.header_mut().last_mut() {
            *h = mark;
        }
        let cap = b.capacity_mut();
        cap[0] = mark;
        cap[g.capacity - 1] = mark;
        if let Some(x) = b.trailer_mut().first_mut() {
            *x = mark;
        }
        if let Some(x) = b.trailer_mut().last_mut() {
            *x = mark;
        }
    }
    for (i, b) in bufs.iter_mut().enumerate() {
        let mark = i as u8 + 1;
        assert!(b.header().first().is_none_or(|&h| h == mark));
        assert!(b.header().last().is_none_or(|&h| h == mark));
        let cap = b.capacity_mut();
        assert_eq!(
            (cap[0], cap[g.capacity - 1]),
            (mark, mark),
            "slot {i} overlapped"
        );
        assert!(b.trailer_mut().last().is_none_or(|&x| x == mark));
        b.set_len(1).unwrap();
        assert_eq!(b.frame().len(), g.header_len + 1);
    }
    drop(bufs);
    assert_eq!(p.stats().free, g.slots);
}

// NEW-D: CompletionQueue::new with a capacity the allocator cannot provide panics
// (usize::MAX: "capacity overflow") or aborts the process (1 << 40: allocation failure);
// the constructor cannot report an error. Run in a child process.
#[test]
fn completion_queue_capacities() {
    bounded(Duration::from_secs(30), || {
        for (cap, want) in [(0usize, 1usize), (1, 1), (2, 2), (1000, 1000)] {
            let q = CompletionQueue::new(cap);
            assert_eq!(q.capacity(), want, "new({cap})");
            for i in 0..want {
                q.push(i).unwrap();
            }
            assert_eq!(
                q.push(99),
                Err(99),
                "new({cap}): a full queue hands the item back"
            );
            assert_eq!(q.push_timeout(98, Duration::ZERO), Err(98));
            assert_eq!(q.len(), want);
            let mut out = Vec::new();
            assert_eq!(q.pop_batch(&mut out, usize::MAX), want);
            assert_eq!(out, (0..want).collect::<Vec<_>>());
            assert!(q.is_empty());
        }
    });
}

#[test]
fn completion_queue_huge_capacity_is_not_a_crash() {
    if !isolated(
        "completion_queue_huge_capacity_is_not_a_crash",
        Duration::from_secs(30),
    ) {
        return;
    }
    for cap in [usize::MAX, 1 << 40] {
        let r = catch_unwind(|| CompletionQueue::<u64>::new(cap).capacity());
        assert!(r.is_ok(), "CompletionQueue::new({cap}) panicked"); // NEW-D
    }
}

/// register_buf_ring entries at their edges.
#[test]
fn buf_ring_entries() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("Ring::register_buf_ring");
        for (entries, ok) in [
            (0u16, false),
            (1, true),
            (2, true),
            (3, false),
            (32768, true),
            (u16::MAX, false),
        ] {
            t.row(format!("entries({entries})"), "", || {
                let mut ring = Ring::new().unwrap();
                or_skip!(common::needs_uring(&ring, "provided-buffer rings"));
                or_skip!(common::needs(
                    ring.capabilities().buf_ring,
                    "no provided-buffer rings"
                ));
                let p = pool(4);
                match ring.register_buf_ring(&p, entries) {
                    Ok(br) => {
                        assert!(ok, "accepted");
                        assert_eq!(ring.buf_ring_offered(br), (entries as usize).min(4));
                        ring.unregister_buf_ring(br).unwrap();
                        assert_eq!(p.stats().free, 4);
                    }
                    Err(e) => {
                        assert!(!ok, "refused: {e:?}");
                        assert_eq!(
                            e.kind(),
                            ErrorKind::NotPowerOfTwo {
                                what: "buffer ring entries",
                                value: entries.into()
                            }
                        );
                        assert_eq!(p.stats().free, 4);
                    }
                }
            });
        }
        t.row("pool of 65537 slots", "", || {
            let mut ring = Ring::new().unwrap();
            let p = BufferPool::builder()
                .slots(65537)
                .slot_len(1)
                .align(1)
                .populate(false)
                .build()
                .unwrap();
            let e = ring.register_buf_ring(&p, 4).unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::OutOfRange { max: 65536, .. })
                    || (ring.backend() != iocomplete::BackendKind::Uring
                        && matches!(e.kind(), ErrorKind::Unsupported { .. })),
                "{e:?}"
            );
        });
        t.finish();
    });
}

// ---- handles after their owner is gone ---------------------------------------------------

/// Every op kind on a target that is closed, belongs to another (live or dropped) ring, or
/// whose slot was reused by a new target: `StaleTarget` before the kernel, nothing changed.
#[test]
fn stale_targets_for_every_op_kind() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("stale targets");
        #[derive(Debug, Clone, Copy)]
        enum Stale {
            Closed,
            OtherLiveRing,
            DroppedRing,
            SlotReused,
        }
        type MkOp = fn(Target, &BufferPool) -> Op;
        let ops: Vec<(&str, MkOp)> = vec![
            ("read", |t, p| Op::read(t, 0, p.try_get().unwrap())),
            ("read_len", |t, p| {
                Op::read_len(t, 0, p.try_get().unwrap(), 10)
            }),
            ("read_append", |t, p| {
                Op::read_append(t, 0, p.try_get().unwrap(), 10)
            }),
            ("write", |t, p| {
                let mut b = p.try_get().unwrap();
                b.extend_from_slice(b"STALE WRITE").unwrap();
                Op::write(t, 0, b)
            }),
            ("write_frame", |t, p| {
                let mut b = p.try_get().unwrap();
                b.extend_from_slice(b"STALE WRITE").unwrap();
                Op::write_frame(t, 0, b)
            }),
            ("readv", |t, p| {
                let mut b = p.try_get().unwrap();
                b.set_len(10).unwrap();
                Op::readv(t, 0, vec![b])
            }),
            ("writev", |t, p| {
                let mut b = p.try_get().unwrap();
                b.extend_from_slice(b"STALE WRITE").unwrap();
                Op::writev(t, 0, vec![b.into()])
            }),
            ("readv_parts", |t, p| {
                Op::readv_parts(
                    t,
                    0,
                    vec![p.try_get().unwrap()],
                    vec![BufPart { start: 0, len: 8 }],
                )
            }),
            ("writev_parts", |t, p| {
                let mut b = p.try_get().unwrap();
                b.extend_from_slice(b"STALE WRITE").unwrap();
                Op::writev_parts(t, 0, vec![b.into()], vec![BufPart { start: 0, len: 8 }])
            }),
            ("fsync", |t, _| Op::fsync(t, false)),
            ("fdatasync", |t, _| Op::fsync(t, true)),
            ("poll", |t, _| Op::poll(t, libc::POLLIN as u32)),
        ];
        for stale in [
            Stale::Closed,
            Stale::OtherLiveRing,
            Stale::DroppedRing,
            Stale::SlotReused,
        ] {
            for &(name, mk) in &ops {
                t.row(format!("{name} on a target {stale:?}"), "", || {
                    let mut fx = Fx::new(Dev::File).unwrap();
                    let (before, _) = fx.snapshot();
                    let mut other = Ring::new().unwrap();
                    // Another file the reused slot now names: it must not be touched.
                    let (_dir, path2) = common::disk_path("second");
                    std::fs::write(&path2, vec![0x5Au8; BS]).unwrap();
                    let open2 = || {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path2)
                            .unwrap()
                    };
                    let target = match stale {
                        Stale::Closed => {
                            let t2 = fx.ring.register(open2()).unwrap();
                            fx.ring.close(t2).unwrap();
                            t2
                        }
                        Stale::OtherLiveRing => other.register(open2()).unwrap(),
                        Stale::DroppedRing => {
                            let mut gone = Ring::new().unwrap();
                            let t2 = gone.register(open2()).unwrap();
                            drop(gone);
                            t2
                        }
                        Stale::SlotReused => {
                            let t2 = fx.ring.register(open2()).unwrap();
                            fx.ring.close(t2).unwrap();
                            let t3 = fx.ring.register(open2()).unwrap();
                            assert_ne!(t2, t3);
                            t2
                        }
                    };
                    let stats = fx.ring.stats();
                    let c = fx.ring.submit(mk(target, &fx.pool)).wait().unwrap();
                    assert_eq!(
                        c.error().map(|e| e.kind()),
                        Some(ErrorKind::StaleTarget),
                        "{:?}",
                        c.result()
                    );
                    assert_eq!(fx.ring.stats().enters, stats.enters, "reached the kernel");
                    drop(c);
                    assert!(fx.snapshot().0 == before);
                    assert_eq!(
                        std::fs::read(&path2).unwrap(),
                        vec![0x5Au8; BS],
                        "the other file changed"
                    );
                    assert_eq!(
                        fx.ring.info(target).map(|_| ()).unwrap_err().kind(),
                        ErrorKind::StaleTarget
                    );
                    assert_eq!(
                        fx.ring.close(target).unwrap_err().kind(),
                        ErrorKind::StaleTarget
                    );
                    fx.teardown();
                    drop(other);
                });
            }
            t.row(format!("drivers on a target {stale:?}"), "", || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let mut gone = Ring::new().unwrap();
                let stale_t = match stale {
                    Stale::Closed | Stale::SlotReused => {
                        let t2 = fx.ring.register(File::open(&fx.path).unwrap()).unwrap();
                        fx.ring.close(t2).unwrap();
                        if let Stale::SlotReused = stale {
                            fx.ring.register(File::open(&fx.path).unwrap()).unwrap();
                        }
                        t2
                    }
                    Stale::OtherLiveRing | Stale::DroppedRing => {
                        gone.register(File::open(&fx.path).unwrap()).unwrap()
                    }
                };
                if let Stale::DroppedRing = stale {
                    drop(std::mem::replace(&mut gone, Ring::new().unwrap()));
                }
                let stale_kind =
                    |e: iocomplete::Error| assert_eq!(e.kind(), ErrorKind::StaleTarget);
                let r = ContinuousReader::builder(stale_t, &fx.pool)
                    .on_read(|_b: PoolBuf, _o: u64| {})
                    .on_failed(|_e: &iocomplete::Error| Restart::No)
                    .build(&mut fx.ring);
                stale_kind(r.map(drop).unwrap_err());
                stale_kind(FifoReceiver::new(&fx.ring, stale_t).map(drop).unwrap_err());
                let job = Job::Read {
                    src: stale_t,
                    offset: 0,
                    len: 10,
                };
                stale_kind(
                    SplitDriver::new(&mut fx.ring, &fx.pool, job, SplitConfig::new())
                        .map(drop)
                        .unwrap_err(),
                );
                let mut sg = SgList::new();
                sg.push_extent(&fx.pool, 0, 10).unwrap();
                let rej = DmaDriver::builder(stale_t, sg, Direction::Read)
                    .build(&mut fx.ring)
                    .map(drop)
                    .unwrap_err();
                stale_kind(rej.error());
                assert_eq!(rej.into_sg().len(), 1, "the list is handed back");
                assert_eq!(fx.ring.stats().enters, 0);
                fx.teardown();
            });
        }
        t.finish();
    });
}

/// Two pipe reads, one per ring, that are each ring's first operation: the same slot and
/// generation, so the same `OpId`.
fn twin_rings() -> ((Ring, Target, OwnedFd), (Ring, Target, OwnedFd), BufferPool) {
    let p = pool(4);
    let mk = || {
        let (rx, tx) = pipe();
        let mut ring = Ring::new().unwrap();
        let r = ring.register(rx).unwrap();
        (ring, r, tx)
    };
    (mk(), mk(), p)
}

// NEW-E: an OpId (or Ticket) carries no ring identity; `cancel` and `is_done` on ring B
// with ring A's id act on B's operation that happens to have the same slot and generation.
#[test]
fn tickets_and_ids_of_another_or_dropped_ring() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("tickets and ids of another ring");
        t.row(
            "wait(ticket of another live ring): typed error, the op still completes once",
            "",
            || {
                let ((mut a, ra, txa), (mut b, _, _), p) = twin_rings();
                let tk = a.submit(Op::read(ra, 0, p.try_get().unwrap())).ticket();
                let e = b.wait(tk).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::WrongRing { what: "ticket" }, "{e:?}");
                write_fd(txa.as_raw_fd(), b"x");
                a.run_until_idle().unwrap();
                check_teardown(&a, &[&p]);
                check_teardown(&b, &[]);
            },
        );
        t.row(
            "ticket outliving its ring: wait elsewhere refused, drop harmless",
            "",
            || {
                let ((mut a, ra, _txa), (mut b, _, _), p) = twin_rings();
                let tk = a.submit(Op::read(ra, 0, p.try_get().unwrap())).ticket();
                a.poll().unwrap();
                drop(a);
                assert_eq!(p.stats().free, 4, "the dropped ring kept a slot");
                let e = b.wait(tk).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::WrongRing { what: "ticket" }, "{e:?}");
                check_teardown(&b, &[&p]);
            },
        );
        t.row(
            "cancel(id of another ring) must not cancel this ring's op",
            "NEW-E",
            || {
                let ((mut a, ra, txa), (mut b, rb, txb), p) = twin_rings();
                let ta = a.submit(Op::read(ra, 0, p.try_get().unwrap())).ticket();
                let tb = b.submit(Op::read(rb, 0, p.try_get().unwrap())).ticket();
                a.poll().unwrap();
                b.poll().unwrap();
                assert_eq!(
                    ta.id().user_data(),
                    tb.id().user_data(),
                    "premise: twin slots and generations"
                );
                assert_ne!(ta.id(), tb.id(), "ids of two rings compare unequal");
                let hit = b.cancel(ta.id());
                for _ in 0..3 {
                    b.run_once(Some(Duration::from_millis(20))).unwrap();
                }
                let hurt = b.is_done(&tb);
                write_fd(txb.as_raw_fd(), b"b");
                let cb = b.wait(tb).unwrap();
                assert!(
                !hit && !hurt && cb.result() == Ok(1),
                "cancel with a foreign id returned {hit} and ended this ring's pending read: {:?}",
                cb.result()
            );
                drop(cb);
                write_fd(txa.as_raw_fd(), b"a");
                assert_eq!(a.wait(ta).unwrap().result(), Ok(1));
                check_teardown(&a, &[&p]);
                check_teardown(&b, &[&p]);
            },
        );
        t.row(
            "is_done(ticket of another ring) reports that ring's op, not ours",
            "NEW-E",
            || {
                let ((mut a, ra, txa), (mut b, _rb, _txb), p) = twin_rings();
                let ta = a.submit(Op::read(ra, 0, p.try_get().unwrap())).ticket();
                let tb = b.submit(Op::nop()).ticket();
                b.run_until_idle().unwrap();
                assert_eq!(
                    ta.id().user_data(),
                    tb.id().user_data(),
                    "premise: twin slots and generations"
                );
                assert_ne!(ta.id(), tb.id(), "ids of two rings compare unequal");
                assert!(!b.is_done(&ta), "ring B says A's pending read is done");
                drop(b.wait(tb).unwrap());
                write_fd(txa.as_raw_fd(), b"a");
                assert_eq!(a.wait(ta).unwrap().result(), Ok(1));
                check_teardown(&a, &[&p]);
            },
        );
        t.row("cancel(stale id) after completion is false", "", || {
            let ((mut a, _, _), _, p) = twin_rings();
            let c = a.submit(Op::nop()).wait().unwrap();
            assert!(!a.cancel(c.id()));
            drop(c);
            check_teardown(&a, &[&p]);
        });
        t.finish();
    });
}

/// RingHandle after its ring is gone: every submission route completes at once with
/// `Cancelled`, buffers come back.
#[test]
fn ring_handle_after_the_ring_dropped() {
    bounded(Duration::from_secs(60), || {
        let p = pool(4);
        let mut ring = Ring::new().unwrap();
        let (rx, _tx) = pipe();
        let r = ring.register(rx).unwrap();
        let h = ring.handle().unwrap();
        drop(ring);
        assert!(h.is_closed());
        let q = Arc::new(CompletionQueue::new(4));
        h.submit_to(Op::read(r, 0, p.try_get().unwrap()).tag(1), &q);
        let c = q.pop_timeout(Duration::from_secs(5)).expect("completion");
        assert!(
            c.error().is_some_and(|e| e.is_cancelled()) && c.tag() == 1,
            "{c:?}"
        );
        assert!(matches!(c.bufs(), Bufs::Pool(_)), "buffer handed back");
        drop(c);
        let (stx, srx) = mpsc::channel();
        h.submit_then(Op::nop().tag(2), move |c| {
            stx.send((c.tag(), c.result())).unwrap()
        });
        let (tag, res) = srx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(tag == 2 && res.is_err_and(|e| e.is_cancelled()));
        let c = common::block_on(h.submit_future(Op::read(r, 0, p.try_get().unwrap())));
        assert!(c.error().is_some_and(|e| e.is_cancelled()));
        drop(c);
        h.detach(Op::read(r, 0, p.try_get().unwrap()));
        h.wake();
        h.shutdown();
        assert_eq!(p.stats().free, 4);
    });
}

// finding 4: submit_to after the ring is gone, to a full queue, spins forever waiting for
// room (complete_unsent's push loop).
#[test]
fn ring_handle_submit_to_a_full_queue_after_the_ring_dropped_returns() {
    if !isolated(
        "ring_handle_submit_to_a_full_queue_after_the_ring_dropped_returns",
        Duration::from_secs(20),
    ) {
        return;
    }
    let p = pool(2);
    let mut ring = Ring::new().unwrap();
    let h = ring.handle().unwrap();
    drop(ring);
    let q: Arc<CompletionQueue<Completion>> = Arc::new(CompletionQueue::new(1));
    // Fill the queue with a completion of our own.
    let mut r2 = Ring::new().unwrap();
    r2.submit(Op::nop().tag(100)).to_queue(&q);
    r2.run_until_idle().unwrap();
    assert_eq!(q.len(), 1);
    let (done_tx, done_rx) = mpsc::channel();
    let h2 = h.clone();
    let q2 = q.clone();
    let buf = p.try_get().unwrap();
    let t = std::thread::spawn(move || {
        h2.submit_to(Op::read(dummy_target(), 0, buf).tag(1), &q2);
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "submit_to spins while the queue stays full and no ring is left"
    );
    // The thread's clone of the queue holds the completion (and its buffer) until the
    // thread ends.
    t.join().unwrap();
    let mut tags: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|c| c.tag()).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        [1, 100],
        "the cancelled submission is delivered, after the full queue"
    );
    drop(q);
    assert_eq!(p.stats().free, 2);
}

/// A target value for operations that never reach a ring.
fn dummy_target() -> Target {
    let mut ring = Ring::new().unwrap();
    let (rx, _tx) = pipe();
    ring.register(rx).unwrap()
}

/// OpFuture whose ring is dropped (pending read cancelled), or that is dropped before its
/// ring: it resolves once, and the slot is parked until the kernel lets go.
#[test]
fn op_future_after_the_ring_dropped() {
    bounded(Duration::from_secs(60), || {
        let p = pool(2);
        let (rx, _tx) = pipe();
        let mut ring = Ring::new().unwrap();
        let r = ring.register(rx).unwrap();
        let fut = ring
            .submit(Op::read(r, 0, p.try_get().unwrap()).tag(3))
            .future();
        let dropped = ring.submit(Op::read(r, 0, p.try_get().unwrap())).future();
        ring.poll().unwrap();
        drop(dropped);
        assert_eq!(p.stats().in_flight, 2);
        drop(ring);
        let c = common::block_on(fut);
        assert!(
            c.error().is_some_and(|e| e.is_cancelled()) && c.tag() == 3,
            "{c:?}"
        );
        drop(c);
        assert_eq!(p.stats().free, 2);
        assert_eq!(p.stats().in_flight, 0);
    });
}

/// PoolBuf / SharedBuf / a registered pool's buffers in flight after the BufferPool
/// handle is dropped: the arena lives as long as any buffer or ring needs it.
#[test]
fn pool_buffers_after_the_pool_handle_dropped() {
    bounded(Duration::from_secs(60), || {
        let mut fx = Fx::new(Dev::File).unwrap();
        let p = pool(4);
        fx.ring.register_pool(&p);
        let mut b = p.try_get().unwrap();
        b.extend_from_slice(b"outlives the pool handle").unwrap();
        let shared = p.try_get().unwrap();
        let tk = fx
            .ring
            .submit(Op::read(fx.t, BS as u64, p.try_get().unwrap()))
            .ticket();
        drop(p);
        let s = shared.share();
        let s2 = s.clone();
        assert_eq!(b.data(), b"outlives the pool handle");
        assert_eq!(s2.ref_count(), 2);
        let c = fx.ring.wait(tk).unwrap().into_result().unwrap();
        assert!(c.data() == file_bytes(BS as u64, BS));
        // Buffers of the dropped handle still write through the ring.
        let c2 = fx.ring.submit(Op::write(fx.t, 0, c)).wait().unwrap();
        assert_eq!(c2.result(), Ok(BS));
        drop((b, s, s2, c2));
        fx.teardown();
    });
}

/// Buffer rings: a stale or foreign `BufRing`, unregistering twice or while in use.
#[test]
fn stale_buf_rings() {
    bounded(Duration::from_secs(60), || {
        let mut ring = Ring::new().unwrap();
        if common::needs_uring(&ring, "multishot reads, provided-buffer rings").is_none() {
            return;
        }
        if !ring.capabilities().read_multishot || !ring.capabilities().buf_ring {
            common::skip("no multishot reads");
            return;
        }
        let p = pool(4);
        let (rx, tx) = pipe();
        let r = ring.register(rx).unwrap();
        let q = Arc::new(CompletionQueue::new(16));
        let br = ring.register_buf_ring(&p, 4).unwrap();
        let mut other = Ring::new().unwrap();
        let foreign = other.register_buf_ring(&p, 2).err();
        assert!(foreign.is_none() || p.stats().free == 0, "{foreign:?}");
        // In use: refused.
        let id = ring.submit(Op::read_multishot(r, br)).to_queue(&q);
        ring.poll().unwrap();
        let e = ring.unregister_buf_ring(br).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InProgress { .. }), "{e:?}");
        ring.cancel(id);
        drop(tx);
        ring.run_until_idle().unwrap();
        while let Some(c) = q.pop() {
            drop(c);
        }
        ring.unregister_buf_ring(br).unwrap();
        let e = ring.unregister_buf_ring(br).unwrap_err();
        let stale = ErrorKind::WrongRing {
            what: "buffer ring",
        };
        assert_eq!(e.kind(), stale, "{e:?}");
        // A stale BufRing: refused before the kernel.
        let (rx2, _tx2) = pipe();
        let r2 = ring.register(rx2).unwrap();
        let enters = ring.stats().enters;
        ring.submit(Op::read_multishot(r2, br)).to_queue(&q);
        let c = q.pop().expect("refused at once");
        assert_eq!(c.error().map(|e| e.kind()), Some(stale), "{c:?}");
        assert_eq!(ring.stats().enters, enters);
        drop(c);
        drop(other);
        ring.run_until_idle().unwrap();
        check_teardown(&ring, &[&p]);
    });
}

// ---- queues full or closed ---------------------------------------------------------------

/// Reads delivered to a completion queue of capacity 1, drained late, one at a time: each
/// arrives exactly once, with its data, whatever order the queue takes them in.
#[test]
fn full_completion_queue_drained_late() {
    bounded(Duration::from_secs(60), || {
        let mut fx = Fx::new(Dev::File).unwrap();
        let q = Arc::new(CompletionQueue::new(1));
        for b in 0..6u64 {
            fx.ring
                .submit(Op::read(fx.t, b * BS as u64, fx.pool.try_get().unwrap()).tag(b))
                .to_queue(&q);
        }
        for _ in 0..5 {
            fx.ring.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        // One fits; the rest wait in the queue's overflow list, counted in its length.
        assert_eq!(q.capacity(), 1);
        assert_eq!(q.len(), 6);
        let mut seen = Vec::new();
        while seen.len() < 6 {
            match q.pop() {
                Some(c) => {
                    let b = c.tag();
                    assert!(c.into_result().unwrap().data() == file_bytes(b * BS as u64, BS));
                    seen.push(b);
                }
                None => {
                    fx.ring.run_once(Some(Duration::from_millis(5))).unwrap();
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        assert!(q.is_empty());
        fx.teardown();
    });
}

/// Pop everything `q` receives for `window`, on another thread.
fn drain_for(
    q: &Arc<CompletionQueue<Completion>>,
    window: Duration,
) -> std::thread::JoinHandle<Vec<(u64, Result<usize, iocomplete::Error>)>> {
    let q = q.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        while Instant::now() < end {
            if let Some(c) = q.pop_timeout(Duration::from_millis(10)) {
                got.push((c.tag(), c.result()));
            }
        }
        got
    })
}

// finding 3: a ring dropped while its completion queue is full drops the backlog: those
// completions are never delivered.
#[test]
fn ring_dropped_with_a_full_completion_queue_delivers_every_completion() {
    bounded(Duration::from_secs(60), || {
        let mut fx = Fx::new(Dev::File).unwrap();
        let q = Arc::new(CompletionQueue::new(1));
        for b in 0..5u64 {
            fx.ring
                .submit(Op::read(fx.t, b * BS as u64, fx.pool.try_get().unwrap()).tag(b))
                .to_queue(&q);
        }
        for _ in 0..5 {
            fx.ring.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_eq!(
            (q.capacity(), q.len()),
            (1, 5),
            "premise: the queue is full and the rest wait in its overflow list"
        );
        let consumer = drain_for(&q, Duration::from_millis(1500));
        let pool = fx.pool.clone();
        drop(fx);
        let mut tags: Vec<u64> = consumer
            .join()
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        tags.sort_unstable();
        assert_eq!(
            tags,
            [0, 1, 2, 3, 4],
            "completions lost when the ring was dropped"
        );
        assert_eq!(pool.stats().free, pool.stats().total);
    });
}

// finding 3: RingHandle submissions still in the inbox when the ring drops, delivering
// to a full queue, are dropped the same way.
#[test]
fn ring_dropped_with_handle_submissions_in_its_inbox_delivers_them() {
    bounded(Duration::from_secs(60), || {
        let p = pool(4);
        let mut ring = Ring::new().unwrap();
        let h = ring.handle().unwrap();
        let q: Arc<CompletionQueue<Completion>> = Arc::new(CompletionQueue::new(1));
        ring.submit(Op::nop().tag(100)).to_queue(&q);
        ring.run_until_idle().unwrap();
        assert_eq!(q.len(), 1);
        let (rx, _tx) = pipe();
        let r = ring.register(rx).unwrap();
        for i in 0..3 {
            h.submit_to(Op::read(r, 0, p.try_get().unwrap()).tag(i), &q);
        }
        let consumer = drain_for(&q, Duration::from_millis(1500));
        drop(ring);
        let mut got = consumer.join().unwrap();
        got.sort_by_key(|g| g.0);
        let tags: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            tags,
            [0, 1, 2, 100],
            "inbox submissions lost when the ring was dropped"
        );
        for (tag, res) in &got[..3] {
            assert!(res.is_err_and(|e| e.is_cancelled()), "{tag}: {res:?}");
        }
        assert_eq!(p.stats().free, 4);
    });
}

// finding 4: run_until_idle spins forever when completions wait for room in a full
// queue that nobody drains.
#[test]
fn run_until_idle_with_a_full_queue_nobody_drains_returns() {
    if !isolated(
        "run_until_idle_with_a_full_queue_nobody_drains_returns",
        Duration::from_secs(20),
    ) {
        return;
    }
    let mut ring = Ring::new().unwrap();
    let q = Arc::new(CompletionQueue::new(1));
    for i in 0..3 {
        ring.submit(Op::nop().tag(i)).to_queue(&q);
    }
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = ring.run_until_idle();
        let _ = tx.send(r);
        ring
    });
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        r.is_ok(),
        "run_until_idle still spinning after 5 s with a full queue"
    );
    let mut ring = t.join().unwrap();
    // Once room is made, the rest arrive.
    let mut tags = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while tags.len() < 3 && Instant::now() < end {
        while let Some(c) = q.pop() {
            tags.push(c.tag());
        }
        ring.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2]);
}

/// An exhausted pool: typed errors from every non-blocking get, and ops that need buffers
/// can wait for one returned by a completion.
#[test]
fn exhausted_pool() {
    bounded(Duration::from_secs(60), || {
        let mut fx = Fx::new(Dev::File).unwrap();
        let held: Vec<_> = (0..8).map(|_| fx.pool.try_get().unwrap()).collect();
        assert_eq!(
            fx.pool.try_get().unwrap_err().kind(),
            ErrorKind::PoolExhausted
        );
        assert_eq!(
            fx.pool.get_timeout(Duration::ZERO).unwrap_err().kind(),
            ErrorKind::PoolExhausted
        );
        let mut sg = SgList::new();
        assert_eq!(
            sg.push_extent(&fx.pool, 0, 10).unwrap_err().kind(),
            ErrorKind::PoolExhausted
        );
        assert!(sg.is_empty(), "the list changed on error");
        let e = SplitDriver::new(
            &mut fx.ring,
            &fx.pool,
            Job::Read {
                src: fx.t,
                offset: 0,
                len: SIZE,
            },
            SplitConfig::new(),
        )
        .map(drop)
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PoolExhausted);
        // A read holding the last slot returns it through its completion.
        let mut held = held;
        let last = held.pop().unwrap();
        fx.ring.submit(Op::read(fx.t, 0, last)).detach();
        let b = fx.pool.get_timeout(Duration::from_millis(10));
        assert!(b.is_err(), "slot handed out while the kernel owns it");
        fx.ring.run_until_idle().unwrap();
        let b = fx.pool.get_timeout(Duration::from_secs(5)).unwrap();
        drop((b, held));
        fx.teardown();
    });
}

/// A submission queue of one entry: many single ops, and ops with a deadline (two linked
/// SQEs) that can never fit in it.
#[test]
fn tiny_submission_queue() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("SQ of one entry");
        t.row("300 nops queued before any drive", "", || {
            let mut ring = Ring::builder().entries(1).build().unwrap();
            for i in 0..300 {
                ring.submit(Op::nop().tag(i)).to_ring();
            }
            ring.run_until_idle().unwrap();
            let mut n = 0;
            while let Some(c) = ring.pop_completion() {
                assert_eq!(c.result(), Ok(0));
                n += 1;
            }
            assert_eq!(n, 300);
            check_teardown(&ring, &[]);
        });
        // NEW-F: an op with a deadline needs two SQEs at once; with one SQ entry it could
        // never be queued and failed with EBUSY (after 64 enters).
        t.row("nop with a deadline on a one-entry SQ", "NEW-F", || {
            let mut ring = Ring::builder().entries(1).build().unwrap();
            let c = ring
                .submit(Op::nop().deadline(Duration::from_secs(5)))
                .wait()
                .unwrap();
            // The builder raises a one-entry SQ to two: the pair fits.
            assert_eq!(c.result(), Ok(0));
            check_teardown(&ring, &[]);
        });
        t.row("ops(0): the op table grows", "", || {
            let mut ring = Ring::builder().ops(0).build().unwrap();
            for i in 0..5000 {
                ring.submit(Op::nop().tag(i)).detach();
            }
            ring.run_until_idle().unwrap();
            assert_eq!(ring.stats().completed, 5000);
            check_teardown(&ring, &[]);
        });
        t.finish();
    });
}

// finding 6: an SQPOLL ring with a 2-entry SQ fails ops with EBUSY when the SQ is briefly
// full.
#[test]
fn sqpoll_ring_with_a_tiny_sq_completes_every_op() {
    bounded(Duration::from_secs(60), || {
        let mut ring = match Ring::builder().entries(2).sqpoll(10).build() {
            Ok(r) => r,
            Err(e) => {
                common::skip(&format!("no SQPOLL ring: {e:?}"));
                return;
            }
        };
        for i in 0..200 {
            ring.submit(Op::nop().tag(i)).to_ring();
        }
        ring.run_until_idle().unwrap();
        let mut bad = Vec::new();
        let mut n = 0;
        while let Some(c) = ring.pop_completion() {
            n += 1;
            if c.result() != Ok(0) {
                bad.push((c.tag(), c.result()));
            }
        }
        assert_eq!(n, 200);
        assert!(
            bad.is_empty(),
            "{} of 200 nops failed: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        check_teardown(&ring, &[]);
    });
}

// ---- wrong-kind targets ------------------------------------------------------------------

// finding 13: a directory or an eventfd registered as a target: reads reach the kernel
// (EISDIR, or an eventfd's counter) instead of a typed refusal.
#[test]
fn wrong_kind_targets_are_refused_before_the_kernel() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("wrong-kind targets");
        type MkFd = fn(&std::path::Path) -> OwnedFd;
        let kinds: Vec<(&str, MkFd)> = vec![
            ("directory", |d| File::open(d).unwrap().into()),
            ("eventfd", |_| {
                // SAFETY: eventfd takes no pointers; the result is checked.
                let fd = unsafe { libc::eventfd(5, libc::EFD_CLOEXEC) };
                assert!(fd >= 0);
                // SAFETY: a fresh descriptor.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }),
        ];
        type MkOp = fn(Target, &BufferPool) -> Op;
        let ops: Vec<(&str, MkOp)> = vec![
            ("read", |t, p| Op::read(t, 0, p.try_get().unwrap())),
            ("read_len(8)", |t, p| {
                Op::read_len(t, 0, p.try_get().unwrap(), 8)
            }),
            ("readv", |t, p| {
                let mut b = p.try_get().unwrap();
                b.set_len(8).unwrap();
                Op::readv(t, 0, vec![b])
            }),
            ("read nowait", |t, p| {
                Op::read_len(t, 0, p.try_get().unwrap(), 8).nowait()
            }),
        ];
        for &(kname, mk_fd) in &kinds {
            for &(oname, mk_op) in &ops {
                t.row(format!("{oname} on a {kname}"), "finding 13", || {
                    let dir = common::disk_dir();
                    let mut ring = Ring::new().unwrap();
                    let p = pool(2);
                    let tg = ring.register(mk_fd(dir.path())).unwrap();
                    let kind = ring.info(tg).unwrap().kind;
                    let c = ring.submit(mk_op(tg, &p)).wait().unwrap();
                    let e = c.error();
                    assert!(
                        matches!(e.map(|e| e.kind()), Some(ErrorKind::WrongTargetKind { have, .. }) if have == kind),
                        "want WrongTargetKind before the kernel, got {:?} ({} enters)",
                        c.result(),
                        ring.stats().enters
                    );
                    assert_eq!(ring.stats().enters, 0);
                    drop(c);
                    check_teardown(&ring, &[&p]);
                });
            }
            t.row(format!("drivers on a {kname}"), "", || {
                let dir = common::disk_dir();
                let mut ring = Ring::new().unwrap();
                let p = pool(2);
                let tg = ring.register(mk_fd(dir.path())).unwrap();
                let kind = ring.info(tg).unwrap().kind;
                let inv = |e: iocomplete::Error| {
                    assert!(
                        matches!(e.kind(), ErrorKind::WrongTargetKind { have, .. } if have == kind),
                        "{e:?}"
                    )
                };
                inv(FifoReceiver::new(&ring, tg).map(drop).unwrap_err());
                inv(ContinuousReader::builder(tg, &p)
                    .on_read(|_: PoolBuf, _: u64| {})
                    .on_failed(|_: &iocomplete::Error| Restart::No)
                    .build(&mut ring)
                    .map(drop)
                    .unwrap_err());
                inv(SplitDriver::new(
                    &mut ring,
                    &p,
                    Job::Read {
                        src: tg,
                        offset: 0,
                        len: 8,
                    },
                    SplitConfig::new(),
                )
                .map(drop)
                .unwrap_err());
                assert_eq!(ring.stats().enters, 0);
                check_teardown(&ring, &[&p]);
            });
        }
        t.finish();
    });
}

// ---- drivers -----------------------------------------------------------------------------

/// What a driver row must give.
#[derive(Debug, Clone, Copy)]
enum Drv {
    /// A typed refusal at build/start (not an errno), nothing submitted.
    Refused,
    /// Runs and moves exactly this many bytes of the file from this offset.
    Moves(u64, u64),
    /// An offset past the kernel's range: refused at build, or runs and moves nothing
    /// (never an errno from the kernel, never bytes from elsewhere).
    RefusedOrNothing,
}

fn refused_kind(e: &iocomplete::Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Os(_) | ErrorKind::Cancelled | ErrorKind::TimedOut
    )
}

// finding 2: reader ranges / start offsets past i64::MAX (start_at(u64::MAX) reads at the
// file position and delivers those bytes as offset u64::MAX).
// NEW-A: ranges ending past i64::MAX reach the kernel (EINVAL).
#[test]
fn continuous_reader_builder_edges() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("ContinuousReader::builder");
        type B = iocomplete::reader::ContinuousReaderBuilder;
        type Cfg = fn(B) -> B;
        const S: u64 = SIZE;
        const B: u64 = BS as u64;
        #[rustfmt::skip]
        let rows: Vec<(&str, Cfg, Drv, &str)> = vec![
            ("defaults", |b| b, Drv::Moves(0, S), ""),
            ("pending_reads(0)", |b| b.pending_reads(0), Drv::Refused, ""),
            ("pending_reads(1)", |b| b.pending_reads(1), Drv::Moves(0, S), ""),
            ("pending_reads(8 = slots)", |b| b.pending_reads(8), Drv::Moves(0, S), ""),
            ("pending_reads(9 > slots)", |b| b.pending_reads(9), Drv::Refused, ""),
            ("pending_reads(u32::MAX)", |b| b.pending_reads(u32::MAX), Drv::Refused, ""),
            ("transfer_len(0)", |b| b.transfer_len(0), Drv::Refused, ""),
            ("transfer_len(1), range(0, 100)", |b| b.transfer_len(1).range(0, 100), Drv::Moves(0, 100), ""),
            ("transfer_len(cap-1)", |b| b.transfer_len(BS as u32 - 1), Drv::Moves(0, S), ""),
            ("transfer_len(cap+1)", |b| b.transfer_len(BS as u32 + 1), Drv::Refused, ""),
            ("transfer_len(u32::MAX)", |b| b.transfer_len(u32::MAX), Drv::Refused, ""),
            ("range(0, 0)", |b| b.range(0, 0), Drv::Moves(0, 0), ""),
            ("range(1, 0)", |b| b.range(1, 0), Drv::Refused, ""),
            ("range(SIZE-1, SIZE+1)", |b| b.range(S - 1, S + 1), Drv::Moves(S - 1, 1), ""),
            ("range(SIZE, SIZE+BS)", |b| b.range(S, S + B), Drv::Moves(S, 0), ""),
            ("range(0, u64::MAX)", |b| b.range(0, u64::MAX), Drv::Moves(0, S), ""),
            ("range(i64::MAX-BS+2, i64::MAX+2)", |b| b.range(I64MAX - B + 2, I64MAX + 2), Drv::RefusedOrNothing, "NEW-A"),
            ("range(u64::MAX-BS, u64::MAX)", |b| b.range(u64::MAX - B, u64::MAX), Drv::RefusedOrNothing, "finding 2"),
            ("range(u64::MAX, u64::MAX)", |b| b.range(u64::MAX, u64::MAX), Drv::RefusedOrNothing, ""),
            ("start_at(SIZE)", |b| b.start_at(S), Drv::Moves(S, 0), ""),
            ("start_at(i64::MAX)", |b| b.start_at(I64MAX), Drv::RefusedOrNothing, "NEW-A"),
            ("start_at(u64::MAX)", |b| b.start_at(u64::MAX), Drv::RefusedOrNothing, "finding 2"),
            ("ordered", |b| b.ordered(true), Drv::Moves(0, S), ""),
            ("ordered, pending_reads(8 = slots)", |b| b.ordered(true).pending_reads(8), Drv::Refused, ""),
            ("ordered, reorder_window(0)", |b| b.ordered(true).reorder_window(0), Drv::Refused, ""),
            ("ordered, reorder_window(7 = slots-1)", |b| b.ordered(true).reorder_window(7), Drv::Moves(0, S), ""),
            ("ordered, reorder_window(8 = slots)", |b| b.ordered(true).reorder_window(8), Drv::Refused, ""),
            ("ordered, reorder_window(u32::MAX)", |b| b.ordered(true).reorder_window(u32::MAX), Drv::Refused, ""),
            ("max_unacked(0)", |b| b.max_unacked(0), Drv::Refused, ""),
            ("max_unacked(1)", |b| b.max_unacked(1), Drv::Moves(0, S), ""),
            ("max_unacked(65536)", |b| b.max_unacked(65536), Drv::Moves(0, S), ""),
            ("max_unacked(65537)", |b| b.max_unacked(65537), Drv::Refused, ""),
            ("Workers(0)", |b| b.dispatch(Dispatch::Workers(0)), Drv::Refused, ""),
            ("Workers(1)", |b| b.dispatch(Dispatch::Workers(1)), Drv::Moves(0, S), ""),
            ("Workers(1), max_unacked(1)", |b| b.dispatch(Dispatch::Workers(1)).max_unacked(1), Drv::Moves(0, S), ""),
        ];
        for (name, cfg, want, known) in rows {
            t.row(name, known, || reader_row(Dev::File, cfg, want));
        }
        #[rustfmt::skip]
        let direct: Vec<(&str, Cfg, Drv)> = vec![
            ("O_DIRECT defaults", |b| b, Drv::Moves(0, S)),
            ("O_DIRECT transfer_len(100)", |b| b.transfer_len(100), Drv::Refused),
            ("O_DIRECT range(100, SIZE)", |b| b.range(100, S), Drv::Refused),
            ("O_DIRECT start_at(2^63) (aligned)", |b| b.start_at(1 << 63), Drv::RefusedOrNothing),
        ];
        for (name, cfg, want) in direct {
            let known = if name.contains("2^63") {
                "finding 2"
            } else {
                ""
            };
            t.row(name, known, || reader_row(Dev::Direct, cfg, want));
        }
        t.finish();
    });
}

type Deliveries = Mutex<Vec<(u64, Vec<u8>)>>;

fn reader_row(
    dev: Dev,
    cfg: fn(
        iocomplete::reader::ContinuousReaderBuilder,
    ) -> iocomplete::reader::ContinuousReaderBuilder,
    want: Drv,
) {
    let mut fx = Fx::new(dev).unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f2 = failures.clone();
    let got = Arc::new(Deliveries::default());
    let d = got.clone();
    let built = cfg(ContinuousReader::builder(fx.t, &fx.pool))
        .on_read(move |buf: PoolBuf, off: u64| d.lock().unwrap().push((off, buf.data().to_vec())))
        .on_failed(move |e: &iocomplete::Error| {
            f2.lock().unwrap().push(*e);
            Restart::No
        })
        .build(&mut fx.ring);
    let mut reader = match (want, built) {
        (Drv::Refused | Drv::RefusedOrNothing, Err(e)) => {
            assert!(refused_kind(&e), "refused with a kernel error: {e:?}");
            assert_eq!(fx.ring.stats().enters, 0, "reached the kernel");
            fx.teardown();
            return;
        }
        (Drv::Moves(..), Err(e)) => panic!("refused: {e:?}"),
        (Drv::Refused, Ok(_)) => panic!("built; want a typed refusal"),
        (_, Ok(r)) => r,
    };
    let report = reader.run(&mut fx.ring).unwrap();
    drop(reader);
    let mut got = std::mem::take(&mut *got.lock().unwrap());
    got.sort_by_key(|g| g.0);
    let fails = failures.lock().unwrap().clone();
    for (off, bytes) in &got {
        assert!(
            *off < SIZE && bytes[..] == file_bytes(*off, bytes.len())[..],
            "delivered {} bytes as offset {off} that are not the file's",
            bytes.len()
        );
    }
    let total: u64 = got.iter().map(|g| g.1.len() as u64).sum();
    match want {
        Drv::Moves(start, n) => {
            assert!(fails.is_empty(), "on_failed: {fails:?} ({report:?})");
            assert_eq!(total, n, "{report:?}");
            let mut at = start;
            for (off, bytes) in &got {
                assert_eq!(*off, at, "gap or overlap in the deliveries");
                at += bytes.len() as u64;
            }
        }
        Drv::RefusedOrNothing => {
            // A refusal may also come from the ring, typed, when the reader submits.
            assert!(
                fails.iter().all(refused_kind) && total == 0,
                "want a typed refusal or nothing moved; moved {total} bytes, failures {fails:?}, {report:?}"
            );
        }
        Drv::Refused => unreachable!(),
    }
    fx.teardown();
}

/// FifoReceiver entry points at their edges.
#[test]
fn fifo_receiver_edges() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("FifoReceiver");
        let setup = || {
            let (rx, tx) = pipe();
            set_nonblocking(rx.as_raw_fd());
            let pool = pool(2);
            let (ring, r) = ring_with(&pool, rx);
            let fifo = FifoReceiver::new(&ring, r).unwrap();
            (ring, pool, fifo, tx)
        };
        for (len, ok) in [
            (0usize, false),
            (1, true),
            (BS - 1, true),
            (BS, true),
            (BS + 1, false),
            (i32::MAX as usize + 1, false),
            (usize::MAX, false),
        ] {
            t.row(format!("receive({len})"), "", || {
                let (mut ring, pool, mut fifo, tx) = setup();
                let mut b = pool.try_get().unwrap();
                b.extend_from_slice(b"held").unwrap();
                match fifo.receive(&mut ring, b, len) {
                    Ok(_) => {
                        assert!(ok, "accepted");
                        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                        write_fd(tx.as_raw_fd(), &data);
                        let got = fifo.run(&mut ring).unwrap();
                        assert_eq!(got.status(), FifoStatus::Full);
                        assert_eq!(got.buf.data(), &data[..]);
                    }
                    Err(r) => {
                        assert!(!ok, "refused: {}", r.error);
                        assert!(refused_kind(&r.error), "{:?}", r.error);
                        assert_eq!(r.buf.data(), b"held", "the buffer changed");
                        assert_eq!(ring.stats().enters, 0);
                        assert_eq!(fifo.current(), None);
                    }
                }
                ring.run_until_idle().unwrap();
                check_teardown(&ring, &[&pool]);
            });
        }
        t.row("receive while a receive is in progress", "", || {
            let (mut ring, pool, mut fifo, tx) = setup();
            fifo.receive(&mut ring, pool.try_get().unwrap(), 4).unwrap();
            let r = fifo
                .receive(&mut ring, pool.try_get().unwrap(), 4)
                .unwrap_err();
            assert!(matches!(r.error.kind(), ErrorKind::InProgress { .. }));
            drop(r);
            write_fd(tx.as_raw_fd(), b"four");
            assert_eq!(fifo.run(&mut ring).unwrap().buf.data(), b"four");
            ring.run_until_idle().unwrap();
            check_teardown(&ring, &[&pool]);
        });
        t.row("drain an empty source, then one with data", "", || {
            let (mut ring, pool, mut fifo, tx) = setup();
            fifo.drain(&mut ring, pool.try_get().unwrap()).unwrap();
            let got = fifo.run(&mut ring).unwrap();
            assert_eq!((got.status(), got.bytes()), (FifoStatus::Drained, 0));
            drop(got);
            write_fd(tx.as_raw_fd(), b"left over");
            fifo.drain(&mut ring, pool.try_get().unwrap()).unwrap();
            let got = fifo.run(&mut ring).unwrap();
            assert_eq!(got.buf.data(), b"left over");
            drop(got);
            ring.run_until_idle().unwrap();
            check_teardown(&ring, &[&pool]);
        });
        t.row("wait and cancel with no transaction", "", || {
            let (mut ring, pool, mut fifo, _tx) = setup();
            assert!(!fifo.cancel(&mut ring));
            let idle = ErrorKind::NotInProgress {
                what: "driver request",
            };
            assert!(matches!(fifo.run(&mut ring), Err(e) if e.kind() == idle));
            assert!(fifo.process(&mut ring).unwrap().is_none());
            check_teardown(&ring, &[&pool]);
        });
        t.row("new() on a blocking pipe, a write end, a file", "", || {
            let (rx, tx) = pipe();
            let mut ring = Ring::new().unwrap();
            let r = ring.register(rx).unwrap();
            let w = ring.register(tx).unwrap();
            let dir = common::disk_dir();
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            let f = ring
                .register(File::open(dir.path().join("f")).unwrap())
                .unwrap();
            let e = |tg| FifoReceiver::new(&ring, tg).map(drop).unwrap_err().kind();
            // Blocking (no O_NONBLOCK), not readable, not a stream.
            assert!(matches!(e(r), ErrorKind::InvalidInput { .. }), "{:?}", e(r));
            assert_eq!(e(w), ErrorKind::NotReadable);
            assert!(
                matches!(
                    e(f),
                    ErrorKind::WrongTargetKind {
                        have: FdKind::File,
                        ..
                    }
                ),
                "{:?}",
                e(f)
            );
        });
        t.finish();
    });
}

/// A split job, before it has a target.
#[derive(Debug, Clone, Copy)]
enum JobSpec {
    /// Read (offset, len).
    R(u64, u64),
    /// Write (offset, len).
    W(u64, u64),
    /// Copy (src offset, dst offset, len) within the same file.
    C(u64, u64, u64),
}

impl JobSpec {
    fn job(self, t: Target) -> Job {
        match self {
            JobSpec::R(offset, len) => Job::Read {
                src: t,
                offset,
                len,
            },
            JobSpec::W(offset, len) => Job::Write {
                dst: t,
                offset,
                len,
            },
            JobSpec::C(src_offset, dst_offset, len) => Job::Copy {
                src: t,
                src_offset,
                dst: t,
                dst_offset,
                len,
            },
        }
    }
}

/// Callbacks writing a known pattern and checking what they read.
struct Pattern;

fn pattern_byte(off: u64) -> u8 {
    (off.wrapping_mul(31) >> 3) as u8 ^ 0xA5
}

impl Pattern {
    fn on_read(offset: u64, buf: &PoolBuf) -> iocomplete::Result<()> {
        assert!(
            buf.data() == file_bytes(offset, buf.len()),
            "chunk at {offset} differs"
        );
        Ok(())
    }
    fn fill(offset: u64, buf: &mut PoolBuf) -> iocomplete::Result<()> {
        for (i, b) in buf.data_mut().iter_mut().enumerate() {
            *b = pattern_byte(offset + i as u64);
        }
        Ok(())
    }
}

// finding 2: split jobs at offsets past i64::MAX. NEW-A: jobs ending past i64::MAX.
#[test]
fn split_driver_edges() {
    bounded(Duration::from_secs(120), || {
        let mut t = Table::new("SplitDriver");
        use JobSpec::{C, R, W};
        const S: u64 = SIZE;
        const B: u64 = BS as u64;
        let cfg = SplitConfig::new();
        let par = |n| SplitConfig::new().mode(Mode::Parallel { max_in_flight: n });
        #[rustfmt::skip]
        let rows: Vec<(&str, JobSpec, SplitConfig, Drv, &str)> = vec![
            ("read(0, 1)", R(0, 1), cfg, Drv::Moves(0, 1), ""),
            ("read(0, SIZE)", R(0, S), cfg, Drv::Moves(0, S), ""),
            ("read(SIZE-1, 2): EOF ends it early", R(S - 1, 2), cfg, Drv::Moves(S - 1, 1), ""),
            ("read(SIZE, BS)", R(S, B), cfg, Drv::Moves(S, 0), ""),
            ("read(u64::MAX, 1): overflows", R(u64::MAX, 1), cfg, Drv::Refused, ""),
            ("read(1, u64::MAX): overflows", R(1, u64::MAX), cfg, Drv::Refused, ""),
            ("read(i64::MAX-BS+2, BS)", R(I64MAX - B + 2, B), cfg, Drv::RefusedOrNothing, "NEW-A"),
            ("read(i64::MAX+1, BS)", R(I64MAX + 1, B), cfg, Drv::RefusedOrNothing, "finding 2"),
            ("read(u64::MAX-BS, BS)", R(u64::MAX - B, B), cfg, Drv::RefusedOrNothing, "finding 2"),
            ("write(0, BS)", W(0, B), cfg, Drv::Moves(0, B), ""),
            ("write(SIZE+1, 10)", W(S + 1, 10), cfg, Drv::Moves(S + 1, 10), ""),
            ("write(i64::MAX+1, BS)", W(I64MAX + 1, B), cfg, Drv::RefusedOrNothing, "finding 2"),
            ("write(u64::MAX-BS, BS)", W(u64::MAX - B, B), cfg, Drv::RefusedOrNothing, "finding 2"),
            ("write(i64::MAX-BS+2, BS)", W(I64MAX - B + 2, B), cfg, Drv::RefusedOrNothing, "NEW-A"),
            ("copy(0 -> SIZE, BS)", C(0, S, B), cfg, Drv::Moves(S, B), ""),
            ("copy(0 -> u64::MAX-BS, BS)", C(0, u64::MAX - B, B), cfg, Drv::RefusedOrNothing, "finding 2"),
            ("copy(0 -> u64::MAX, BS): overflows", C(0, u64::MAX, B), cfg, Drv::Refused, ""),
            ("max_chunk(0)", R(0, 10), cfg.max_chunk(0), Drv::Refused, ""),
            ("max_chunk(1)", R(5, 10), cfg.max_chunk(1), Drv::Moves(5, 10), ""),
            ("max_chunk(u64::MAX)", R(0, S), cfg.max_chunk(u64::MAX), Drv::Moves(0, S), ""),
            ("boundary(1)", R(3, 10), cfg.boundary(1), Drv::Moves(3, 10), ""),
            ("boundary(u64::MAX)", R(0, S), cfg.boundary(u64::MAX), Drv::Moves(0, S), ""),
            ("Parallel{0}", R(0, S), par(0), Drv::Refused, ""),
            ("Parallel{1}", R(0, S), par(1), Drv::Moves(0, S), ""),
            ("Parallel{4096}", R(0, 3 * B), par(4096), Drv::Moves(0, 3 * B), ""),
            ("Parallel{4097}", R(0, S), par(4097), Drv::Refused, ""),
            ("Serial", R(0, S), cfg.mode(Mode::Serial), Drv::Moves(0, S), ""),
        ];
        for (name, mk, cfg, want, known) in rows {
            t.row(name, known, || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let (before, before_len) = fx.snapshot();
                let job = mk.job(fx.t);
                let d = SplitDriver::new(&mut fx.ring, &fx.pool, job, cfg);
                let d = match (want, d) {
                    (Drv::Refused | Drv::RefusedOrNothing, Err(e)) => {
                        assert!(refused_kind(&e), "refused by the kernel: {e:?}");
                        assert_eq!(fx.ring.stats().enters, 0);
                        assert!(fx.snapshot() == (before, before_len));
                        fx.teardown();
                        return;
                    }
                    (Drv::Moves(..), Err(e)) => panic!("refused: {e:?}"),
                    (_, Ok(d)) => d,
                };
                let mut d = d.on_read(Pattern::on_read).on_fill(Pattern::fill);
                let c = d.run(&mut fx.ring).unwrap();
                match want {
                    Drv::Moves(off, n) => {
                        assert_eq!((c.status, c.bytes), (Ok(()), n), "{c:?}");
                        let got = fx.read_at(off, n as usize);
                        match job {
                            Job::Write { .. } => assert!(got
                                .iter()
                                .enumerate()
                                .all(|(i, &b)| b == pattern_byte(off + i as u64))),
                            Job::Copy { src_offset, .. } => {
                                assert!(got == file_bytes(src_offset, n as usize), "copied bytes")
                            }
                            Job::Read { .. } => {}
                        }
                    }
                    _ => {
                        // A typed refusal may also come from the ring, for the child.
                        assert!(
                            c.bytes == 0
                                && (c.status.is_ok() || c.status.is_err_and(|e| refused_kind(&e))),
                            "want a typed refusal (or nothing moved); got {c:?}"
                        );
                        assert!(fx.snapshot() == (before, before_len), "the file changed");
                    }
                }
                drop(d);
                fx.teardown();
            });
        }
        t.finish();
    });
}

// finding 2: DMA segments past i64::MAX reach the kernel. NEW-A: segments ending past it.
#[test]
fn dma_driver_edges() {
    bounded(Duration::from_secs(120), || {
        use iocomplete::dma::{MAX_IN_FLIGHT, MAX_SEGMENTS};
        use iocomplete::ring::MAX_TRANSFER;
        let mut t = Table::new("SgList / DmaDriver");
        t.row("SgList::push edges", "", || {
            let p = pool(4);
            let mut sg = SgList::new();
            let mut b = p.try_get().unwrap();
            b.set_len(1).unwrap();
            assert_eq!(
                sg.push(b, u64::MAX).unwrap_err().kind(),
                ErrorKind::OffsetOutOfRange {
                    offset: u64::MAX,
                    len: 1
                }
            );
            assert!(sg.is_empty());
            let mut b = p.try_get().unwrap();
            b.set_len(BS).unwrap();
            sg.push(b, u64::MAX - BS as u64).unwrap();
            sg.push(p.try_get().unwrap(), u64::MAX).unwrap(); // zero bytes at the very end
            assert_eq!(sg.total_len(), BS as u64);
            assert!(matches!(
                sg.push_extent(&p, 0, 0).unwrap_err().kind(),
                ErrorKind::ZeroLength { .. }
            ));
            assert_eq!(
                sg.push_extent(&p, u64::MAX - 10, 20).unwrap_err().kind(),
                ErrorKind::OffsetOutOfRange {
                    offset: u64::MAX - 10,
                    len: 20
                }
            );
            assert!(matches!(
                sg.push_extent(&p, 0, u64::MAX).unwrap_err().kind(),
                ErrorKind::PoolExhausted
            ));
            assert_eq!(sg.len(), 2, "a failed push changed the list");
            drop(sg);
            assert_eq!(p.stats().free, 4);
        });
        const S: u64 = SIZE;
        const B: u64 = BS as u64;
        let cfg = DmaConfig::new();
        // Extents (device offset, length); a zero length pushes one empty buffer.
        type Row<'a> = (&'a str, &'a [(u64, u64)], DmaConfig, Drv, &'a str);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("extent(100, 3BS)", &[(100, 3 * B)], cfg, Drv::Moves(100, 3 * B), ""),
            ("empty list", &[], cfg, Drv::Refused, ""),
            ("one zero-length segment", &[(0, 0)], cfg, Drv::Refused, ""),
            ("extent(SIZE-10, 20): EOF", &[(S - 10, 20)], cfg, Drv::Moves(S - 10, 10), ""),
            ("extent(i64::MAX-10, 20)", &[(I64MAX - 10, 20)], cfg, Drv::RefusedOrNothing, "NEW-A"),
            ("extent(i64::MAX+1, 20)", &[(I64MAX + 1, 20)], cfg, Drv::RefusedOrNothing, "finding 2"),
            ("extent(u64::MAX-BS, BS)", &[(u64::MAX - B, B)], cfg, Drv::RefusedOrNothing, "finding 2"),
            ("max_transfer(0)", &[(0, 10)], cfg.max_transfer(0), Drv::Refused, ""),
            ("max_transfer(1)", &[(7, 10)], cfg.max_transfer(1), Drv::Moves(7, 10), ""),
            ("max_transfer(MAX)", &[(0, 2 * B)], cfg.max_transfer(MAX_TRANSFER), Drv::Moves(0, 2 * B), ""),
            ("max_transfer(MAX+1)", &[(0, 10)], cfg.max_transfer(MAX_TRANSFER + 1), Drv::Refused, ""),
            ("max_segments(0)", &[(0, 10)], cfg.max_segments(0), Drv::Refused, ""),
            ("max_segments(1)", &[(0, 3 * B)], cfg.max_segments(1), Drv::Moves(0, 3 * B), ""),
            ("max_segments(MAX)", &[(0, 3 * B)], cfg.max_segments(MAX_SEGMENTS), Drv::Moves(0, 3 * B), ""),
            ("max_segments(MAX+1)", &[(0, 10)], cfg.max_segments(MAX_SEGMENTS + 1), Drv::Refused, ""),
            ("max_in_flight(0)", &[(0, 10)], cfg.max_in_flight(0), Drv::Refused, ""),
            ("max_in_flight(MAX)", &[(0, 3 * B)], cfg.max_in_flight(MAX_IN_FLIGHT).max_transfer(100), Drv::Moves(0, 3 * B), ""),
            ("max_in_flight(MAX+1)", &[(0, 10)], cfg.max_in_flight(MAX_IN_FLIGHT + 1), Drv::Refused, ""),
        ];
        for (name, extents, cfg, want, known) in rows {
            for dir in [Direction::Read, Direction::Write] {
                let known = if matches!(want, Drv::Moves(_, _)) || !known.is_empty() {
                    known
                } else {
                    ""
                };
                t.row(format!("{name} {dir:?}"), known, || {
                    let mut fx = Fx::new(Dev::File).unwrap();
                    let (before, before_len) = fx.snapshot();
                    let mut sg = SgList::new();
                    for &(off, len) in extents {
                        if len == 0 {
                            sg.push(fx.pool.try_get().unwrap(), off).unwrap();
                        } else {
                            sg.push_extent(&fx.pool, off, len).unwrap();
                        }
                    }
                    if dir == Direction::Write {
                        let segs = sg.segments().to_vec();
                        let (_, mut bufs) = sg.into_parts();
                        let mut s2 = SgList::new();
                        for (seg, mut b) in segs.into_iter().zip(bufs.drain(..)) {
                            let n = b.len();
                            for (i, x) in b.data_mut().iter_mut().enumerate() {
                                *x = pattern_byte(seg.device_offset + i as u64);
                            }
                            assert_eq!(b.len(), n);
                            s2.push(b, seg.device_offset).unwrap();
                        }
                        sg = s2;
                    }
                    let d = DmaDriver::builder(fx.t, sg, dir)
                        .config(cfg)
                        .build(&mut fx.ring);
                    let mut d = match (want, d) {
                        (Drv::Refused | Drv::RefusedOrNothing, Err(r)) => {
                            assert!(refused_kind(&r.error()), "{:?}", r.error());
                            drop(r.into_sg());
                            assert_eq!(fx.ring.stats().enters, 0);
                            assert!(fx.snapshot() == (before, before_len));
                            fx.teardown();
                            return;
                        }
                        (Drv::Moves(..), Err(r)) => panic!("refused: {:?}", r.error()),
                        (_, Ok(d)) => d,
                    };
                    let (c, sg) = d.run(&mut fx.ring).unwrap();
                    match want {
                        Drv::Moves(off, n) => {
                            let n = if dir == Direction::Write {
                                sg.total_len()
                            } else {
                                n
                            };
                            assert_eq!((c.status, c.bytes), (Ok(()), n), "{c:?}");
                            if dir == Direction::Read {
                                let got: Vec<u8> =
                                    sg.bufs().iter().flat_map(|b| b.data().to_vec()).collect();
                                assert!(got == file_bytes(off, n as usize));
                            } else {
                                let got = fx.read_at(off, n as usize);
                                assert!(got
                                    .iter()
                                    .enumerate()
                                    .all(|(i, &b)| b == pattern_byte(off + i as u64)));
                            }
                        }
                        _ => {
                            // A typed refusal may also come from the ring, per transfer.
                            assert!(
                                c.bytes == 0
                                    && (c.status.is_ok()
                                        || c.status.is_err_and(|e| refused_kind(&e))),
                                "want a typed refusal (or nothing moved); got {c:?}"
                            );
                            assert!(fx.snapshot() == (before, before_len), "the file changed");
                        }
                    }
                    drop(sg);
                    fx.teardown();
                });
            }
        }
        t.finish();
    });
}

// finding 3 (variant): the backlog was lost at drop even when the queue had room — the
// ring retried its backlog only while it reaped, and a drop with nothing in the kernel
// did not reap. (Completions that find the queue full now wait in its overflow list.)
#[test]
fn ring_dropped_with_a_backlog_and_room_in_the_queue_delivers_it() {
    bounded(Duration::from_secs(30), || {
        let mut ring = Ring::new().unwrap();
        let q = Arc::new(CompletionQueue::new(1));
        for i in 0..3 {
            ring.submit(Op::nop().tag(i)).to_queue(&q);
        }
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
        assert_eq!(ring.in_flight(), 0, "premise: nothing left in the kernel");
        let first = q.pop().expect("one completion fits");
        assert_eq!(q.len(), 2, "premise: the others wait in the overflow list");
        drop(ring);
        let mut tags = vec![first.tag()];
        while let Some(c) = q.pop() {
            tags.push(c.tag());
        }
        tags.sort_unstable();
        assert_eq!(
            tags,
            [0, 1, 2],
            "backlog dropped with the ring although the queue had room"
        );
    });
}

// NEW-G: a multishot ContinuousReader dropped before it finished leaves its
// provided-buffer ring registered; the ring keeps refilling it from the pool, so every
// slot of the pool ends up parked there (in flight) until the Ring itself is dropped, and
// any other user of the pool starves.
#[test]
fn dropped_multishot_reader_gives_its_pool_back() {
    bounded(Duration::from_secs(30), || {
        let mut ring = Ring::new().unwrap();
        if common::needs_uring(&ring, "multishot reads, provided-buffer rings").is_none() {
            return;
        }
        if !ring.capabilities().read_multishot || !ring.capabilities().buf_ring {
            common::skip("no multishot reads");
            return;
        }
        let p = pool(8);
        let (rx, tx) = pipe();
        let r = ring.register(rx).unwrap();
        let got = Arc::new(AtomicU64::new(0));
        let g2 = got.clone();
        let mut reader = ContinuousReader::builder(r, &p)
            .stream_reads(iocomplete::StreamReads::Multishot)
            .on_read(move |b: PoolBuf, _: u64| {
                g2.fetch_add(b.len() as u64, Ordering::Relaxed);
            })
            .on_failed(|_: &iocomplete::Error| Restart::No)
            .build(&mut ring)
            .unwrap();
        assert!(reader.is_multishot());
        write_fd(tx.as_raw_fd(), b"some bytes");
        let end = Instant::now() + Duration::from_secs(5);
        while got.load(Ordering::Relaxed) < 10 {
            assert!(Instant::now() < end, "nothing delivered");
            reader
                .step(&mut ring, Some(Duration::from_millis(10)))
                .unwrap();
        }
        drop(reader);
        // End the stream: the dropped reader's multishot read completes.
        drop(tx);
        run_until_idle(
            &mut ring,
            Duration::from_secs(5),
            "the dropped reader's read",
        );
        for _ in 0..3 {
            ring.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        let st = p.stats();
        assert_eq!(
            st.free, st.total,
            "the dropped reader's buffer ring still holds the pool's slots: {st:?}"
        );
        assert!(p.try_get().is_ok(), "the pool starves while the ring lives");
    });
}

/// Multishot reads, polls, fsync and nowait at their edges: each refused before the kernel
/// with a typed error where the request cannot work, or working.
#[test]
fn other_op_kinds_edges() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("multishot / poll / fsync / nowait");
        let setup = || {
            let mut ring = Ring::new().unwrap();
            let p = pool(4);
            let (rx, tx) = pipe();
            let r = ring.register(rx).unwrap();
            (ring, p, r, tx)
        };
        let refused = |ring: &Ring, c: &Completion, want: fn(&ErrorKind) -> bool| {
            assert!(
                c.error().is_some_and(|e| want(&e.kind())),
                "want a typed refusal, got {:?}",
                c.result()
            );
            assert_eq!(ring.stats().enters, 0, "reached the kernel");
        };
        t.row(
            "read_multishot by wait / ticket / future / then: refused",
            "",
            || {
                let (mut ring, p, r, _tx) = setup();
                if common::needs_uring(&ring, "multishot reads, provided-buffer rings").is_none() {
                    return;
                }
                if !ring.capabilities().read_multishot || !ring.capabilities().buf_ring {
                    return;
                }
                let br = ring.register_buf_ring(&p, 4).unwrap();
                let enters = ring.stats().enters;
                let c = ring.submit(Op::read_multishot(r, br)).wait().unwrap();
                assert!(common::invalid_input(&c));
                let tk = ring.submit(Op::read_multishot(r, br)).ticket();
                let c = ring.wait(tk).unwrap();
                assert!(common::invalid_input(&c));
                let c = common::block_on(ring.submit(Op::read_multishot(r, br)).future());
                assert!(common::invalid_input(&c));
                let (stx, srx) = mpsc::channel();
                ring.submit(Op::read_multishot(r, br))
                    .then(move |c| stx.send(c.result()).unwrap());
                let res = srx.recv_timeout(Duration::from_secs(1)).unwrap();
                assert!(res.is_err_and(|e| matches!(e.kind(), ErrorKind::InvalidInput { .. })));
                assert_eq!(ring.stats().enters, enters);
                ring.unregister_buf_ring(br).unwrap();
                check_teardown(&ring, &[&p]);
            },
        );
        t.row("read_multishot on a regular file: refused", "", || {
            let mut fx = Fx::new(Dev::File).unwrap();
            if !fx.ring.capabilities().read_multishot || !fx.ring.capabilities().buf_ring {
                return;
            }
            let br = fx.ring.register_buf_ring(&fx.pool, 4).unwrap();
            let q = Arc::new(CompletionQueue::new(4));
            let enters = fx.ring.stats().enters;
            fx.ring.submit(Op::read_multishot(fx.t, br)).to_queue(&q);
            let c = q.pop().expect("refused at once");
            assert!(matches!(
                c.error().map(|e| e.kind()),
                Some(ErrorKind::WrongTargetKind {
                    have: FdKind::File,
                    ..
                })
            ));
            assert_eq!(fx.ring.stats().enters, enters);
            drop(c);
            fx.ring.unregister_buf_ring(br).unwrap();
            fx.teardown();
        });
        t.row("read_multishot with a deadline", "", || {
            let (mut ring, p, r, tx) = setup();
            if common::needs_uring(&ring, "multishot reads, provided-buffer rings").is_none() {
                return;
            }
            if !ring.capabilities().read_multishot || !ring.capabilities().buf_ring {
                return;
            }
            let br = ring.register_buf_ring(&p, 4).unwrap();
            let q = Arc::new(CompletionQueue::new(16));
            ring.submit(Op::read_multishot(r, br).deadline(Duration::from_millis(20)))
                .to_queue(&q);
            write_fd(tx.as_raw_fd(), b"abc");
            // Whatever the kernel makes of it: completions until the last, each buffer
            // with the bytes sent, and then the ring is idle with every slot back.
            let end = Instant::now() + Duration::from_secs(5);
            let mut bytes = Vec::new();
            let mut last = false;
            while !last {
                assert!(
                    Instant::now() < end,
                    "multishot read with a deadline never ended"
                );
                ring.run_once(Some(Duration::from_millis(10))).unwrap();
                while let Some(c) = q.pop() {
                    if let Bufs::Pool(b) = c.bufs() {
                        bytes.extend_from_slice(b.data());
                    }
                    last |= !c.has_more();
                }
            }
            assert!(b"abc".starts_with(&bytes), "{bytes:?}");
            ring.run_until_idle().unwrap();
            ring.unregister_buf_ring(br).unwrap();
            check_teardown(&ring, &[&p]);
        });
        t.row("poll with an empty mask: refused", "", || {
            let (mut ring, p, r, _tx) = setup();
            let c = ring.submit(Op::poll(r, 0)).wait().unwrap();
            refused(&ring, &c, |k| matches!(k, ErrorKind::InvalidInput { .. }));
            check_teardown(&ring, &[&p]);
        });
        t.row("poll(u32::MAX) on a pipe with data", "", || {
            let (mut ring, p, r, tx) = setup();
            write_fd(tx.as_raw_fd(), b"x");
            let c = ring.submit(Op::poll(r, u32::MAX)).wait().unwrap();
            match c.result() {
                Ok(m) => assert!(m & libc::POLLIN as usize != 0, "{m:#x}"),
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::InvalidInput { .. }),
                    "want readiness or a typed refusal: {e:?}"
                ),
            }
            check_teardown(&ring, &[&p]);
        });
        t.row("fsync / fdatasync of a pipe: refused", "", || {
            let (mut ring, p, r, _tx) = setup();
            for ds in [false, true] {
                let c = ring.submit(Op::fsync(r, ds)).wait().unwrap();
                refused(&ring, &c, |k| {
                    matches!(
                        k,
                        ErrorKind::WrongTargetKind {
                            have: FdKind::Pipe,
                            ..
                        }
                    )
                });
            }
            check_teardown(&ring, &[&p]);
        });
        t.row(
            "nowait on nop / write / fsync / poll / timeout: refused",
            "",
            || {
                let mut fx = Fx::new(Dev::File).unwrap();
                let (before, _) = fx.snapshot();
                let b = fx.buf_with(8, 1);
                let ops = vec![
                    Op::nop().nowait(),
                    Op::write(fx.t, 0, b).nowait(),
                    Op::fsync(fx.t, false).nowait(),
                    Op::poll(fx.t, libc::POLLIN as u32).nowait(),
                    Op::timeout(Duration::ZERO).nowait(),
                ];
                for op in ops {
                    let c = fx.ring.submit(op).wait().unwrap();
                    assert!(common::invalid_input(&c), "{:?}", c.result());
                }
                assert_eq!(fx.ring.stats().enters, 0);
                assert!(fx.snapshot().0 == before);
                fx.teardown();
            },
        );
        t.row("nowait read on an empty pipe: EAGAIN at once", "", || {
            let (mut ring, p, r, _tx) = setup();
            let c = ring
                .submit(Op::read(r, 0, p.try_get().unwrap()).nowait())
                .wait()
                .unwrap();
            assert_eq!(c.error().and_then(|e| e.raw_os_error()), Some(libc::EAGAIN));
            drop(c);
            check_teardown(&ring, &[&p]);
        });
        t.finish();
    });
}

/// One shared buffer written by several operations at once, its owner handle dropped
/// early; a registered-file table of one entry used by several targets.
#[test]
fn shared_buffers_and_a_one_entry_file_table() {
    bounded(Duration::from_secs(60), || {
        let mut t = Table::new("shared buffers / files(1)");
        t.row("one SharedBuf in three writes at once", "", || {
            let mut fx = Fx::new(Dev::File).unwrap();
            let mut b = fx.pool.try_get().unwrap();
            b.extend_from_slice(&[0xC3; 100]).unwrap();
            let s = b.share();
            let tks: Vec<_> = [0u64, 5000, SIZE]
                .iter()
                .map(|&off| fx.ring.submit(Op::write(fx.t, off, s.clone())).ticket())
                .collect();
            drop(s);
            assert_eq!(
                fx.pool.stats().free,
                7,
                "the slot came back while in flight"
            );
            for tk in tks {
                assert_eq!(fx.ring.wait(tk).unwrap().result(), Ok(100));
            }
            for off in [0u64, 5000, SIZE] {
                assert_eq!(fx.read_at(off, 100), vec![0xC3; 100]);
            }
            fx.teardown();
        });
        t.row(
            "files(1): three targets, one fixed, closed and reopened",
            "",
            || {
                let mut ring = Ring::builder().files(1).build().unwrap();
                let (_dir, path) = verify::disk_file(SIZE, SEED);
                let p = pool(4);
                ring.register_pool(&p);
                let a = ring.register(File::open(&path).unwrap()).unwrap();
                let b = ring.register(File::open(&path).unwrap()).unwrap();
                let (rx, tx) = pipe();
                let r = ring.register(rx).unwrap();
                write_fd(tx.as_raw_fd(), b"pipe");
                for (tg, off) in [(a, 0u64), (b, BS as u64)] {
                    let buf = ring
                        .submit(Op::read(tg, off, p.try_get().unwrap()))
                        .wait()
                        .unwrap()
                        .into_result()
                        .unwrap();
                    assert!(buf.data() == file_bytes(off, BS));
                }
                let c = ring
                    .submit(Op::read(r, 0, p.try_get().unwrap()))
                    .wait()
                    .unwrap();
                assert_eq!(c.into_result().unwrap().data(), b"pipe");
                ring.close(a).unwrap();
                let a2 = ring.register(File::open(&path).unwrap()).unwrap();
                let buf = ring
                    .submit(Op::read(a2, 2 * BS as u64, p.try_get().unwrap()))
                    .wait()
                    .unwrap()
                    .into_result()
                    .unwrap();
                assert!(buf.data() == file_bytes(2 * BS as u64, BS));
                drop(buf);
                let c = ring
                    .submit(Op::read(a, 0, p.try_get().unwrap()))
                    .wait()
                    .unwrap();
                assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::StaleTarget));
                drop(c);
                check_teardown(&ring, &[&p]);
            },
        );
        t.finish();
    });
}
