//! Turning an [`Op`] into SQEs: validation (without a syscall), buffer parking, and the
//! opcode choice (fixed buffers, fixed files, vectored fixed ops).

use io_uring::{opcode, squeue, types};

use crate::error::{Error, ErrorKind, Result};

use super::completion::{Bufs, Delivery};
use super::op::{kernel_timespec, next_gen, sentinel, Op, OpId, OpKind, Pos};
use super::probe::{OP_READV_FIXED, OP_WRITEV_FIXED};
use super::target::{FdInfo, Target};
use super::{Entry, EntryState, Ring};

/// io_uring's offset for "the file's current position" (`-1`); only [`Pos::Cursor`] sends it.
const CURSOR: u64 = u64::MAX;

/// Kernel limit on iovecs per vectored operation (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A descriptor as the opcode builders want it.
#[derive(Clone, Copy)]
enum Fd {
    Fixed(u32),
    Raw(i32),
}

/// The direction of a transfer, for the target's access-mode check.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// Build an SQE with a fixed or raw fd (the builders take distinct types).
macro_rules! with_fd {
    ($fd:expr, |$f:ident| $build:expr) => {
        match $fd {
            Fd::Fixed(i) => {
                let $f = types::Fixed(i);
                $build
            }
            Fd::Raw(r) => {
                let $f = types::Fd(r);
                $build
            }
        }
    };
}

// The SQE is patched in place for the vectored fixed opcodes the io-uring crate does not
// name yet; pin the layout it relies on.
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
/// Offset of `opcode` in `struct io_uring_sqe`.
const SQE_OPCODE: usize = 0;
/// Offset of `buf_index` in `struct io_uring_sqe`.
const SQE_BUF_INDEX: usize = 40;

fn io_len(len: usize) -> Result<u32> {
    if len == 0 {
        return Err(Error::zero_length("transfer"));
    }
    u32::try_from(len).map_err(|_| Error::out_of_range("transfer length", 1, u32::MAX.into()))
}

impl Ring {
    /// Accept an operation: park its buffers in a new op-table entry, validate it, and
    /// queue its SQE(s). An invalid operation completes at once, through its delivery,
    /// without a syscall. Every accepted operation completes exactly once.
    pub(crate) fn start(&mut self, op: Op, delivery: Delivery) -> OpId {
        self.stats.submitted += 1;
        // A target registered through a handle may be used before the ring has otherwise
        // looked at its inbox.
        self.install_registrations();
        self.next_gen = next_gen(self.next_gen);
        let gen = self.next_gen;
        let Op {
            kind,
            deadline,
            tag,
            nowait,
        } = op;
        let key = self.ops.insert(Entry {
            gen,
            tag,
            state: EntryState::InKernel(delivery),
            bufs: Bufs::None,
            iov: Vec::new(),
            timespec: None,
            cancel_requested: false,
            has_deadline: deadline.is_some(),
            is_read: false,
            read_base: 0,
            multishot: None,
        });
        let id = OpId::new(self.id, key as u32, gen);
        let multi_ok = matches!(
            self.ops[key].state,
            EntryState::InKernel(Delivery::Queue(_) | Delivery::Local | Delivery::Detach)
        );
        let prepared = match kind {
            // A single-issuer ring on a thread the kernel refuses: nothing this thread
            // queues could ever be submitted.
            _ if self.issuer != 0 && self.issuer != super::driver::thread_token() => Err(
                Error::invalid("single-issuer ring used by a thread other than its issuer"),
            ),
            OpKind::ReadMulti { .. } if !multi_ok => Err(Error::invalid(
                "multishot operations deliver to a CompletionQueue, the ring's FIFO (or detach)",
            )),
            kind => self.prepare(key, kind, nowait),
        };
        let prepared = prepared.and_then(|sqe| {
            let sqe = sqe.user_data(id.user_data());
            match deadline {
                None => self.push_sqes(&[sqe]),
                Some(d) => {
                    let ts = Box::new(kernel_timespec(d));
                    let link = opcode::LinkTimeout::new(&*ts)
                        .build()
                        .user_data(sentinel::TIMEOUT);
                    self.ops[key].timespec = Some(ts);
                    self.push_sqes(&[sqe.flags(squeue::Flags::IO_LINK), link])
                }
            }
        });
        match prepared {
            Ok(()) => {
                self.in_kernel += 1;
                super::driver::mark_in_flight(&self.ops[key].bufs, true);
            }
            Err(e) => {
                self.stats.rejected += 1;
                self.finish(key, Err(e));
            }
        }
        id
    }

    fn fd_of(&self, t: Target) -> Result<(Fd, FdInfo)> {
        let e = self.target(t)?;
        let fd = match e.fixed {
            Some(i) => Fd::Fixed(i),
            None => Fd::Raw(e.raw()),
        };
        Ok((fd, e.info))
    }

    /// [`fd_of`](Self::fd_of), refusing a target that cannot transfer data (a directory,
    /// an eventfd, ...) or is not open for `access`.
    fn fd_for(&self, t: Target, access: Access) -> Result<(Fd, FdInfo)> {
        let (fd, info) = self.fd_of(t)?;
        if !info.kind.is_transferable() {
            return Err(Error::wrong_kind(
                "a file, a block device or a stream",
                info.kind,
            ));
        }
        match access {
            Access::Read if !info.readable => Err(Error::new(ErrorKind::NotReadable)),
            Access::Write if !info.writable => Err(Error::new(ErrorKind::NotWritable)),
            _ => Ok((fd, info)),
        }
    }

    /// [`fd_of`](Self::fd_of), refusing a target open for neither reading nor writing (an
    /// `O_PATH` descriptor: the kernel fails every operation on it with `EBADF`).
    fn fd_open(&self, t: Target) -> Result<(Fd, FdInfo)> {
        let (fd, info) = self.fd_of(t)?;
        if !info.readable && !info.writable {
            return Err(Error::invalid(
                "target is open for neither reading nor writing (O_PATH)",
            ));
        }
        Ok((fd, info))
    }

    /// Index in the kernel's buffer table of the region holding `slot` of `pool`, if that
    /// pool is registered with this ring.
    fn buf_index(&self, pool: &crate::buf::PoolInner, slot: u32) -> Option<u16> {
        let p = self.pools.iter().find(|p| p.pool.id() == pool.id())?;
        u16::try_from(p.base + pool.region_of(slot)).ok()
    }

    /// Validate and build the SQE (without `user_data`). Buffers are parked in the entry
    /// before anything can fail, so an error still hands them back.
    fn prepare(&mut self, key: usize, kind: OpKind, nowait: bool) -> Result<squeue::Entry> {
        let is_read = matches!(kind, OpKind::Read { .. });
        let rw_flags = if nowait { libc::RWF_NOWAIT } else { 0 };
        let sqe: Result<squeue::Entry> = match kind {
            OpKind::Nop => Ok(opcode::Nop::new().build()),
            OpKind::Read {
                target,
                offset,
                mut buf,
                at,
                len,
            } => {
                // `wrapping_add` keeps this safe to compute; it is only handed to the
                // kernel once `at + len <= cap` is checked below.
                let ptr = buf.data_mut_ptr().wrapping_add(at);
                let cap = buf.capacity();
                let fixed = self.buf_index(buf.pool(), buf.slot());
                self.ops[key].bufs = Bufs::Pool(buf);
                self.ops[key].is_read = true;
                self.ops[key].read_base = at;
                let (fd, info) = self.fd_for(target, Access::Read)?;
                let n = io_len(len)?;
                if len.saturating_add(at) > cap {
                    return Err(Error::new(ErrorKind::BufferTooSmall {
                        need: len.saturating_add(at) as u64,
                        have: cap as u64,
                    }));
                }
                info.check_direct(offset, len as u64, ptr as u64)?;
                let off = info.sqe_offset(offset, len as u64)?;
                Ok(match fixed {
                    Some(ix) => with_fd!(fd, |f| opcode::ReadFixed::new(f, ptr, n, ix)
                        .offset(off)
                        .rw_flags(rw_flags)
                        .build()),
                    None => with_fd!(fd, |f| opcode::Read::new(f, ptr, n)
                        .offset(off)
                        .rw_flags(rw_flags)
                        .build()),
                })
            }
            OpKind::Write {
                target,
                pos,
                buf,
                frame,
            } => {
                let bytes = if frame { buf.frame() } else { buf.data() };
                let (ptr, len) = (bytes.as_ptr(), bytes.len());
                let fixed = self.buf_index(buf.pool(), buf.slot());
                self.ops[key].bufs = Bufs::from_io(buf);
                let (fd, info) = self.fd_for(target, Access::Write)?;
                let n = io_len(len)?;
                let off = match pos {
                    Pos::At(offset) => {
                        info.check_positional_write()?;
                        info.check_direct(offset, len as u64, ptr as u64)?;
                        info.sqe_offset(offset, len as u64)?
                    }
                    Pos::Cursor => {
                        if info.direct {
                            // The file position is not known here, so its alignment is not.
                            return Err(Error::invalid(
                                "write_cursor on an O_DIRECT target (use positional writes)",
                            ));
                        }
                        CURSOR
                    }
                };
                let flags = match pos {
                    Pos::At(_) => self.noappend(&info),
                    Pos::Cursor => 0,
                };
                Ok(match fixed {
                    Some(ix) => with_fd!(fd, |f| opcode::WriteFixed::new(f, ptr, n, ix)
                        .offset(off)
                        .rw_flags(flags)
                        .build()),
                    None => with_fd!(fd, |f| opcode::Write::new(f, ptr, n)
                        .offset(off)
                        .rw_flags(flags)
                        .build()),
                })
            }
            OpKind::Readv {
                target,
                offset,
                mut bufs,
                parts,
            } => {
                let mut iov = self.spare_iovs.take(bufs.len());
                let mut fixed = OneRegion::default();
                let mut bad_part = false;
                for (i, b) in bufs.iter_mut().enumerate() {
                    fixed.see(self.buf_index(b.pool(), b.slot()));
                    let (start, len) = match &parts {
                        None => (0, b.len()),
                        Some(p) => match p.get(i) {
                            // Fails closed: an overflowing `start + len` is no end at all.
                            Some(p)
                                if p.start
                                    .checked_add(p.len)
                                    .is_some_and(|end| end <= b.capacity()) =>
                            {
                                (p.start, p.len)
                            }
                            _ => {
                                bad_part = true;
                                (0, 0)
                            }
                        },
                    };
                    iov.push(libc::iovec {
                        // `start + len <= capacity` (checked above), so this stays inside
                        // the slot's data area.
                        iov_base: b.data_mut_ptr().wrapping_add(start).cast(),
                        iov_len: len,
                    });
                }
                let counted = parts.as_ref().is_none_or(|p| p.len() == bufs.len());
                self.ops[key].bufs = Bufs::PoolList(bufs);
                // With explicit parts the caller tracks lengths; the ring leaves them alone.
                self.ops[key].is_read = parts.is_none();
                if bad_part || !counted {
                    return Err(Error::invalid(
                        "readv_parts: one part per buffer, each within its capacity",
                    ));
                }
                self.vectored(key, target, offset, iov, fixed.index(), false)
            }
            OpKind::Writev {
                target,
                offset,
                bufs,
                parts,
            } => {
                let mut iov = self.spare_iovs.take(bufs.len());
                let mut fixed = OneRegion::default();
                let mut bad_part = false;
                for (i, b) in bufs.iter().enumerate() {
                    fixed.see(self.buf_index(b.pool(), b.slot()));
                    let data = b.data();
                    let bytes = match &parts {
                        None => data,
                        Some(p) => match p
                            .get(i)
                            .and_then(|p| data.get(p.start..p.start.checked_add(p.len)?))
                        {
                            Some(d) => d,
                            None => {
                                bad_part = true;
                                &data[..0]
                            }
                        },
                    };
                    iov.push(libc::iovec {
                        iov_base: bytes.as_ptr() as *mut libc::c_void,
                        iov_len: bytes.len(),
                    });
                }
                let counted = parts.as_ref().is_none_or(|p| p.len() == bufs.len());
                self.ops[key].bufs = Bufs::List(bufs);
                if bad_part || !counted {
                    return Err(Error::invalid(
                        "writev_parts: one part per buffer, each within its data",
                    ));
                }
                self.vectored(key, target, offset, iov, fixed.index(), true)
            }
            OpKind::Fsync { target, datasync } => {
                let (fd, info) = self.fd_open(target)?;
                if !(info.kind.is_seekable() || info.kind == super::FdKind::Directory) {
                    return Err(Error::wrong_kind(
                        "a file, a block device or a directory (fsync)",
                        info.kind,
                    ));
                }
                let flags = if datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                Ok(with_fd!(fd, |f| opcode::Fsync::new(f).flags(flags).build()))
            }
            OpKind::ReadMulti { target, group } => {
                let (_, info) = self.fd_for(target, Access::Read)?;
                if !self.caps.read_multishot {
                    return Err(Error::unsupported("IORING_OP_READ_MULTISHOT (Linux 6.7)"));
                }
                if !info.kind.is_stream() {
                    return Err(Error::wrong_kind(
                        "a pollable stream (multishot read)",
                        info.kind,
                    ));
                }
                if self.buf_ring_pos(group).is_none() {
                    return Err(Error::new(ErrorKind::WrongRing {
                        what: "buffer ring",
                    }));
                }
                self.ops[key].multishot = Some(group.bgid);
                // The raw descriptor, not the fixed one: Linux 6.18 answers EBADFD to a
                // multishot read on a registered pipe (it cannot see it is pollable).
                let raw = self.target(target)?.raw();
                Ok(opcode::ReadMulti::new(types::Fd(raw), 0, group.bgid).build())
            }
            OpKind::Timeout { after } => {
                // The entry's `timespec` box is this op's own; a linked deadline would need
                // a second one.
                if self.ops[key].has_deadline {
                    return Err(Error::invalid("a timeout operation takes no deadline"));
                }
                let ts = Box::new(kernel_timespec(after));
                let sqe = opcode::Timeout::new(&*ts).build();
                // The kernel reads the timespec when it takes the SQE; the box lives in
                // the entry until the CQE, which is later.
                self.ops[key].timespec = Some(ts);
                Ok(sqe)
            }
            OpKind::Poll { target, events } => {
                let (fd, _) = self.fd_open(target)?;
                if events == 0 {
                    return Err(Error::invalid("poll with an empty event mask"));
                }
                Ok(with_fd!(fd, |f| opcode::PollAdd::new(f, events).build()))
            }
        };
        let sqe = sqe?;
        if nowait && !is_read {
            return Err(Error::invalid("nowait applies to reads only"));
        }
        Ok(sqe)
    }

    /// The common tail of `readv`/`writev`: check the target and the iovecs, park the
    /// iovec array in the entry (the kernel reads it), and build the SQE — the `*_FIXED`
    /// twin when every buffer lies in one registered region and the kernel has it.
    fn vectored(
        &mut self,
        key: usize,
        target: Target,
        offset: u64,
        iov: Vec<libc::iovec>,
        region: Option<u16>,
        write: bool,
    ) -> Result<squeue::Entry> {
        let access = if write { Access::Write } else { Access::Read };
        let (fd, info) = self.fd_for(target, access)?;
        if write {
            info.check_positional_write()?;
        }
        let total = self.check_iov(&iov, &info, offset)?;
        let off = info.sqe_offset(offset, total)?;
        let entry = &mut self.ops[key];
        entry.iov = iov;
        let (p, n) = (entry.iov.as_ptr(), entry.iov.len() as u32);
        let (sqe, fixed_op) = if write {
            let flags = self.noappend(&info);
            let sqe = with_fd!(fd, |f| opcode::Writev::new(f, p, n)
                .offset(off)
                .rw_flags(flags)
                .build());
            (sqe, OP_WRITEV_FIXED)
        } else {
            let sqe = with_fd!(fd, |f| opcode::Readv::new(f, p, n).offset(off).build());
            (sqe, OP_READV_FIXED)
        };
        Ok(match region {
            Some(ix) if self.caps.readv_fixed => patch_fixed(sqe, fixed_op, ix),
            _ => sqe,
        })
    }

    /// The `rw_flags` of a positional write: `RWF_NOAPPEND` (Linux 6.9) on files and block
    /// devices, so the write lands at its offset even if `O_APPEND` was set on the open
    /// file after registration (through a shared descriptor: `register_dup`) — the
    /// registration-time check cannot see that.
    fn noappend(&self, info: &FdInfo) -> i32 {
        if self.caps.rwf_noappend && info.kind.is_seekable() {
            libc::RWF_NOAPPEND
        } else {
            0
        }
    }

    /// Check a vectored transfer's iovecs; returns its total length.
    fn check_iov(&self, iov: &[libc::iovec], info: &FdInfo, offset: u64) -> Result<u64> {
        if iov.is_empty() {
            return Err(Error::zero_length("vectored transfer (no buffers)"));
        }
        if iov.len() > IOV_MAX {
            return Err(Error::out_of_range(
                "buffers in one vectored transfer",
                1,
                IOV_MAX as u64,
            ));
        }
        let mut total: u64 = 0;
        for (i, v) in iov.iter().enumerate() {
            if v.iov_len == 0 {
                return Err(Error::zero_length("buffer in a vectored transfer"));
            }
            // Direct I/O: each segment's address and length aligned; the offset only for
            // the first (the others follow contiguously).
            let off = if i == 0 { offset } else { 0 };
            info.check_direct(off, v.iov_len as u64, v.iov_base as u64)?;
            total = total.saturating_add(v.iov_len as u64);
        }
        if total > i32::MAX as u64 {
            return Err(Error::out_of_range(
                "vectored transfer length",
                1,
                i32::MAX as u64,
            ));
        }
        Ok(total)
    }
}

/// Tracks whether every buffer of a vectored op lies in the same registered region.
#[derive(Default)]
struct OneRegion {
    region: Option<u16>,
    mixed: bool,
}

impl OneRegion {
    fn see(&mut self, ix: Option<u16>) {
        match (ix, self.region) {
            (None, _) => self.mixed = true,
            (Some(i), Some(r)) if i != r => self.mixed = true,
            _ => self.region = ix,
        }
    }

    /// The shared region's index, if there is one.
    fn index(&self) -> Option<u16> {
        if self.mixed {
            None
        } else {
            self.region
        }
    }
}

/// Turn a `READV`/`WRITEV` SQE into its `*_FIXED` twin (Linux 6.15): same layout, a
/// different opcode and the registered buffer's index in `buf_index`.
fn patch_fixed(sqe: squeue::Entry, opcode: u8, buf_index: u16) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `repr(C)` around `struct io_uring_sqe`, 64 bytes (asserted
    // above), and every bit pattern is a valid SQE value; we only write the `opcode` byte
    // and the `buf_index` field at their ABI offsets.
    unsafe {
        let mut raw: [u8; 64] = std::mem::transmute(sqe);
        raw[SQE_OPCODE] = opcode;
        raw[SQE_BUF_INDEX..SQE_BUF_INDEX + 2].copy_from_slice(&buf_index.to_ne_bytes());
        std::mem::transmute::<[u8; 64], squeue::Entry>(raw)
    }
}
