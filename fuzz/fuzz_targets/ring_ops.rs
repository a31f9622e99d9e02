//! Arbitrary sequences of operations on a real ring over a memfd, checked against a
//! pread/pwrite model of the file: reads (plain, fixed-buffer and not, vectored, with
//! deadlines, cancelled), writes (plain and vectored), fsync, nops, truncation, closing
//! and re-registering the target, and invalid requests. Many operations are in flight at
//! once; those whose outcome would depend on kernel ordering (overlapping ranges, writes
//! that extend the file) are separated by waiting. At the end: every operation completed
//! exactly once, nothing in flight, every slot back in its pool.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use iocomplete::{BufferPool, Completion, ErrorKind, IoBuf, Op, PoolBuf, Ring, Target, Ticket};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// Largest offset the model uses (bounded memory).
const SPAN: u64 = 256 * 1024;
/// Slot capacity.
const CAP: usize = 16 * 1024;
const SLOTS: usize = 24;

#[derive(Debug, Arbitrary)]
enum RingOp {
    Write {
        off: u32,
        len: u16,
        byte: u8,
        fixed: bool,
    },
    Writev {
        off: u32,
        lens: [u16; 3],
        byte: u8,
    },
    Read {
        off: u32,
        len: u16,
        fixed: bool,
    },
    ReadFull {
        off: u32,
    },
    Readv {
        off: u32,
        lens: [u16; 3],
    },
    ReadDeadline {
        off: u32,
        len: u16,
        micros: u16,
    },
    CancelLast,
    Fsync {
        datasync: bool,
    },
    Nop,
    Truncate {
        size: u32,
    },
    Reopen,
    Invalid {
        which: u8,
    },
    /// A read at a raw 64-bit offset: past the file it reads 0 bytes; with
    /// `offset + len` past `i64::MAX` it is refused before the kernel.
    EdgeRead {
        off: u64,
        len: u16,
    },
    /// A write whose `offset + len` passes `i64::MAX` (forced): refused, file unchanged.
    EdgeWrite {
        off: u64,
        len: u16,
    },
    /// `readv_parts` with a raw part: refused unless `start + len` fits the capacity
    /// (overflow included); otherwise the part receives the file's first bytes.
    EdgePart {
        start: u64,
        len: u64,
    },
    Wait,
}

#[derive(Debug)]
enum Expect {
    /// Bytes a read must return (exactly), maybe `Cancelled`/`TimedOut` instead.
    Read {
        want: Vec<u8>,
        may_cancel: bool,
        may_time_out: bool,
    },
    /// A vectored read: the buffers' lengths and contents in order.
    Readv { want: Vec<Vec<u8>> },
    /// A write of this many bytes.
    Write(usize),
    /// Ok(0) (nop) or Ok(_) (fsync).
    Done,
}

struct Pending {
    ticket: Ticket,
    range: (u64, u64),
    expect: Expect,
}

struct Harness {
    ring: Ring,
    fixed: BufferPool,
    plain: BufferPool,
    memfd: OwnedFd,
    target: Target,
    model: Vec<u8>,
    pending: Vec<Pending>,
    ops: u64,
}

fn memfd() -> OwnedFd {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"iocomplete-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl Harness {
    fn new() -> Harness {
        let mut ring = Ring::builder().entries(16).cq_entries(32).build().unwrap();
        let fixed = BufferPool::builder()
            .slots(SLOTS)
            .slot_len(CAP)
            .header_len(8)
            .build()
            .unwrap();
        let plain = BufferPool::builder()
            .slots(SLOTS)
            .slot_len(CAP)
            .build()
            .unwrap();
        ring.register_pool(&fixed);
        let memfd = memfd();
        let target = ring.register_dup(&memfd).unwrap();
        Harness {
            ring,
            fixed,
            plain,
            memfd,
            target,
            model: Vec::new(),
            pending: Vec::new(),
            ops: 0,
        }
    }

    fn buf(&mut self, fixed: bool) -> PoolBuf {
        loop {
            let p = if fixed { &self.fixed } else { &self.plain };
            if let Ok(b) = p.try_get() {
                return b;
            }
            // Every slot is in flight: let operations land.
            self.wait_all();
        }
    }

    fn model_read(&self, off: u64, len: usize) -> Vec<u8> {
        let size = self.model.len() as u64;
        let start = off.min(size) as usize;
        let end = (off + len as u64).min(size) as usize;
        self.model[start..end].to_vec()
    }

    fn model_write(&mut self, off: u64, bytes: &[u8]) {
        let end = off as usize + bytes.len();
        if self.model.len() < end {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(bytes);
    }

    /// Wait before an operation on `range` if it must not overlap what is in flight.
    fn barrier_for(&mut self, range: (u64, u64), writes: bool) {
        let conflict = self.pending.iter().any(|p| {
            let p_writes = matches!(p.expect, Expect::Write(_));
            (writes || p_writes) && overlaps(p.range, range)
        });
        // A write that grows the file changes what reads past the old end return.
        if conflict || (writes && range.1 > self.model.len() as u64) {
            self.wait_all();
        }
    }

    fn push(&mut self, op: Op, range: (u64, u64), expect: Expect) {
        self.ops += 1;
        let ticket = self.ring.submit(op.tag(self.ops)).ticket();
        self.pending.push(Pending {
            ticket,
            range,
            expect,
        });
        if self.pending.len() >= 16 {
            self.wait_all();
        }
    }

    /// Push a write of `bytes` at `off` (and update the model); a write that grows the
    /// file is waited for, so reads past the old end do not race it.
    fn push_write(&mut self, op: Op, off: u64, bytes: &[u8]) {
        let end = off + bytes.len() as u64;
        let grows = end > self.model.len() as u64;
        self.model_write(off, bytes);
        self.push(op, (off, end), Expect::Write(bytes.len()));
        if grows {
            self.wait_all();
        }
    }

    /// Push a read of the raw `len` bytes at the raw `off` (folded into the file's range),
    /// with a deadline if one is given.
    fn push_read(
        &mut self,
        off: u32,
        len: u16,
        fixed: bool,
        deadline: Option<std::time::Duration>,
    ) {
        let off = u64::from(off) % (SPAN + 4096);
        let len = 1 + usize::from(len) % CAP;
        self.barrier_for((off, off + len as u64), false);
        let b = self.buf(fixed);
        let want = self.model_read(off, len);
        let mut op = Op::read_len(self.target, off, b, len);
        if let Some(d) = deadline {
            op = op.deadline(d);
        }
        let expect = Expect::Read {
            want,
            may_cancel: false,
            may_time_out: deadline.is_some(),
        };
        self.push(op, (off, off + len as u64), expect);
    }

    /// `c` (of `what`) was refused with an error `kind` accepts, before the kernel (no
    /// enter since `enters`).
    fn check_refused(
        &self,
        c: &Completion,
        enters: u64,
        what: &str,
        kind: impl Fn(&ErrorKind) -> bool,
    ) {
        assert!(c.error().is_some_and(|e| kind(&e.kind())), "{what}: {c:?}");
        assert_eq!(self.ring.stats().enters, enters, "reached the kernel");
    }

    fn wait_all(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            let mut c = self.ring.wait(p.ticket).unwrap();
            match p.expect {
                Expect::Read {
                    want,
                    may_cancel,
                    may_time_out,
                } => match c.result() {
                    Ok(n) => {
                        assert_eq!(n, want.len(), "read length at {:?}", p.range);
                        let b = c.into_buf().unwrap();
                        assert_eq!(b.data(), &want[..], "read content at {:?}", p.range);
                    }
                    Err(e) if may_cancel && e.is_cancelled() => {}
                    Err(e) if may_time_out && e.is_timed_out() => {}
                    Err(e) => panic!("read at {:?} failed: {e:?}", p.range),
                },
                Expect::Readv { want } => {
                    let total: usize = want.iter().map(Vec::len).sum();
                    assert_eq!(c.result(), Ok(total), "readv at {:?}", p.range);
                    match c.take_bufs() {
                        iocomplete::Bufs::PoolList(v) => {
                            assert_eq!(v.len(), want.len());
                            for (b, w) in v.iter().zip(&want) {
                                assert_eq!(b.data(), &w[..], "readv content at {:?}", p.range);
                            }
                        }
                        other => panic!("readv gave back {other:?}"),
                    }
                }
                Expect::Write(n) => assert_eq!(c.result(), Ok(n), "write at {:?}", p.range),
                Expect::Done => assert!(c.is_ok(), "{c:?}"),
            }
        }
    }

    fn run(&mut self, op: &RingOp) {
        let t = self.target;
        match *op {
            RingOp::Write {
                off,
                len,
                byte,
                fixed,
            } => {
                let off = u64::from(off) % SPAN;
                let len = 1 + usize::from(len) % CAP;
                self.barrier_for((off, off + len as u64), true);
                let mut b = self.buf(fixed);
                let bytes: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                b.extend_from_slice(&bytes).unwrap();
                self.push_write(Op::write(t, off, b), off, &bytes);
            }
            RingOp::Writev { off, lens, byte } => {
                let off = u64::from(off) % SPAN;
                let lens: Vec<usize> = lens.iter().map(|l| 1 + usize::from(*l) % 4096).collect();
                let total: usize = lens.iter().sum();
                self.barrier_for((off, off + total as u64), true);
                let mut bufs = Vec::new();
                let mut all = Vec::new();
                for (k, l) in lens.iter().enumerate() {
                    let mut b = self.buf(k % 2 == 0);
                    let bytes: Vec<u8> = (0..*l).map(|i| byte ^ (i as u8) ^ (k as u8)).collect();
                    b.extend_from_slice(&bytes).unwrap();
                    all.extend_from_slice(&bytes);
                    bufs.push(IoBuf::from(b));
                }
                self.push_write(Op::writev(t, off, bufs), off, &all);
            }
            RingOp::Read { off, len, fixed } => self.push_read(off, len, fixed, None),
            RingOp::ReadFull { off } => {
                let off = u64::from(off) % (SPAN + 4096);
                self.barrier_for((off, off + CAP as u64), false);
                let b = self.buf(true);
                let want = self.model_read(off, CAP);
                self.push(
                    Op::read(t, off, b),
                    (off, off + CAP as u64),
                    Expect::Read {
                        want,
                        may_cancel: false,
                        may_time_out: false,
                    },
                );
            }
            RingOp::Readv { off, lens } => {
                let off = u64::from(off) % (SPAN + 4096);
                let lens: Vec<usize> = lens.iter().map(|l| 1 + usize::from(*l) % 4096).collect();
                let total: usize = lens.iter().sum();
                self.barrier_for((off, off + total as u64), false);
                let mut bufs = Vec::new();
                let mut want = Vec::new();
                let mut at = off;
                for l in &lens {
                    let mut b = self.buf(true);
                    b.set_len(*l).unwrap();
                    bufs.push(b);
                    want.push(self.model_read(at, *l));
                    at += *l as u64;
                }
                // A short vectored read fills the buffers in order and stops.
                self.push(
                    Op::readv(t, off, bufs),
                    (off, off + total as u64),
                    Expect::Readv { want },
                );
            }
            RingOp::ReadDeadline { off, len, micros } => {
                let d = std::time::Duration::from_micros(u64::from(micros));
                self.push_read(off, len, false, Some(d));
            }
            RingOp::CancelLast => {
                if let Some(p) = self.pending.last_mut() {
                    if let Expect::Read { may_cancel, .. } = &mut p.expect {
                        *may_cancel = true;
                        self.ring.cancel(p.ticket.id());
                    }
                }
            }
            RingOp::Fsync { datasync } => {
                self.push(Op::fsync(t, datasync), (0, 0), Expect::Done);
            }
            RingOp::Nop => self.push(Op::nop(), (0, 0), Expect::Done),
            RingOp::Truncate { size } => {
                self.wait_all();
                let size = u64::from(size) % SPAN;
                // SAFETY: a valid descriptor; ftruncate has no memory arguments.
                let r = unsafe { libc::ftruncate(self.memfd.as_raw_fd(), size as i64) };
                assert_eq!(r, 0);
                self.model.resize(size as usize, 0);
            }
            RingOp::Reopen => {
                self.wait_all();
                self.ring.close(t).unwrap();
                let b = self.buf(true);
                let c = self.ring.submit(Op::read(t, 0, b)).wait().unwrap();
                assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::StaleTarget));
                self.target = self.ring.register_dup(&self.memfd).unwrap();
            }
            RingOp::Invalid { which } => {
                self.wait_all();
                let enters = self.ring.stats().enters;
                let b = self.buf(which % 2 == 0);
                let op = match which % 3 {
                    0 => Op::read_len(t, 0, b, 0),
                    1 => Op::read_len(t, 0, b, CAP + 1 + usize::from(which)),
                    _ => Op::write(t, 0, b), // zero-length write
                };
                let c = self.ring.submit(op).wait().unwrap();
                assert!(
                    matches!(
                        c.error().map(|e| e.kind()),
                        Some(ErrorKind::ZeroLength { .. } | ErrorKind::BufferTooSmall { .. })
                    ),
                    "{c:?}"
                );
                assert_eq!(
                    self.ring.stats().enters,
                    enters,
                    "invalid op reached the kernel"
                );
            }
            RingOp::EdgeRead { off, len } => {
                self.wait_all();
                let len = 1 + usize::from(len) % CAP;
                let enters = self.ring.stats().enters;
                let b = self.buf(off % 2 == 0);
                let c = self
                    .ring
                    .submit(Op::read_len(t, off, b, len))
                    .wait()
                    .unwrap();
                let fits = off
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= i64::MAX as u64);
                if fits {
                    let want = self.model_read(off, len);
                    assert_eq!(c.result(), Ok(want.len()), "read at {off:#x}");
                    assert_eq!(c.into_buf().unwrap().data(), &want[..]);
                } else {
                    let what = format!("read at {off:#x}+{len}");
                    self.check_refused(&c, enters, &what, |k| {
                        matches!(k, ErrorKind::OffsetOutOfRange { .. })
                    });
                }
            }
            RingOp::EdgeWrite { off, len } => {
                self.wait_all();
                let len = 1 + usize::from(len) % CAP;
                // Into the refused domain: the end passes i64::MAX.
                let off = (i64::MAX as u64 - len as u64 + 1).saturating_add(off % (1 << 62));
                let enters = self.ring.stats().enters;
                let mut b = self.buf(true);
                b.set_len(len).unwrap();
                b.data_mut().fill(0xEE);
                let c = self.ring.submit(Op::write(t, off, b)).wait().unwrap();
                let what = format!("write at {off:#x}+{len}");
                self.check_refused(&c, enters, &what, |k| {
                    matches!(k, ErrorKind::OffsetOutOfRange { .. })
                });
            }
            RingOp::EdgePart { start, len } => {
                self.wait_all();
                let (start, len) = (start as usize, len as usize);
                let enters = self.ring.stats().enters;
                let b = self.buf(start % 2 == 0);
                let part = iocomplete::ring::BufPart { start, len };
                let c = self
                    .ring
                    .submit(Op::readv_parts(t, 0, vec![b], vec![part]))
                    .wait()
                    .unwrap();
                let ok = len > 0 && start.checked_add(len).is_some_and(|end| end <= CAP);
                if ok {
                    let want = self.model_read(0, len);
                    let mut c = c;
                    assert_eq!(c.result(), Ok(want.len()), "part {part:?}");
                    match c.take_bufs() {
                        iocomplete::Bufs::PoolList(v) => {
                            // The part received the bytes; its length is the caller's.
                            let mut b = v.into_iter().next().unwrap();
                            b.set_len(start + want.len()).unwrap();
                            assert_eq!(&b.data()[start..], &want[..], "part {part:?}");
                        }
                        other => panic!("readv_parts gave back {other:?}"),
                    }
                } else {
                    // An empty part within the buffer is a zero-length iovec; any other a
                    // bad part.
                    let empty = len == 0 && start <= CAP;
                    let what = format!("part {part:?}");
                    self.check_refused(&c, enters, &what, |k| match k {
                        ErrorKind::ZeroLength { .. } => empty,
                        ErrorKind::InvalidInput { .. } => !empty,
                        _ => false,
                    });
                }
            }
            RingOp::Wait => self.wait_all(),
        }
    }

    fn finish(mut self) {
        self.wait_all();
        self.ring.run_until_idle().unwrap();
        // The file on "disk" is the model.
        let mut got = vec![0u8; self.model.len() + 1];
        // SAFETY: `got` is a valid buffer of its length.
        let n = unsafe {
            libc::pread(
                self.memfd.as_raw_fd(),
                got.as_mut_ptr().cast(),
                got.len(),
                0,
            )
        };
        assert_eq!(
            n as usize,
            self.model.len(),
            "file size differs from the model"
        );
        assert_eq!(
            &got[..self.model.len()],
            &self.model[..],
            "file differs from the model"
        );
        let s = self.ring.stats();
        assert_eq!(
            s.submitted, s.completed,
            "not every op completed once: {s:?}"
        );
        assert_eq!(s.stale_cqes, 0);
        assert_eq!((self.ring.in_flight(), self.ring.pending()), (0, 0));
        drop(self.ring);
        for p in [&self.fixed, &self.plain] {
            let st = p.stats();
            assert_eq!((st.free, st.in_flight), (st.total, 0), "slots leaked");
        }
    }
}

fuzz_target!(|ops: Vec<RingOp>| {
    let mut h = Harness::new();
    for op in ops.iter().take(96) {
        h.run(op);
    }
    h.finish();
});
