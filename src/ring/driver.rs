//! Entering the kernel, reaping completions, and routing each one exactly once.

use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use crate::error::{Error, ErrorKind, Result};

use super::completion::{Bufs, Completion, Delivery};
use super::handle::{complete_unsent, Cmd};
use super::op::{sentinel, OpId};
use super::{Backend, EntryState, Ring, CQE_BATCH};

/// How long dropping a ring waits for the kernel to return the operations in flight
/// (after cancelling them) before it gives up on them.
pub(crate) const DROP_GRACE: Duration = Duration::from_secs(10);

/// Times one turn's CQEs may send the ring to its inbox (see `Ring::inbox_from_cqe`).
const INBOX_VISITS: u32 = 4;

/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;
/// `IORING_ENTER_SQ_WAKEUP`: wake the SQPOLL thread.
const ENTER_SQ_WAKEUP: u32 = 2;
/// `IORING_ENTER_SQ_WAIT`: wait until the SQPOLL thread has made room in the SQ.
const ENTER_SQ_WAIT: u32 = 4;

/// A number that identifies the calling thread among the live ones (the address of a
/// thread-local; cheaper than `thread::current()`, which clones an `Arc`). A thread
/// started after another ended may get the same number: the kernel's own check still
/// stands behind this one.
pub(super) fn thread_token() -> usize {
    std::thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}

/// Record that the kernel owns (or no longer owns) these buffers: pool statistics, and
/// in debug builds the slot state machine `CheckedOut -> InFlight -> CheckedOut`.
pub(super) fn mark_in_flight(bufs: &Bufs, on: bool) {
    let one = |p: &crate::buf::PoolInner, slot: u32, unique: bool| {
        p.set_in_flight(slot, on, unique);
    };
    match bufs {
        Bufs::None => {}
        Bufs::Pool(b) => one(b.pool(), b.slot(), true),
        Bufs::Shared(b) => one(b.pool(), b.slot(), false),
        Bufs::PoolList(v) => v.iter().for_each(|b| one(b.pool(), b.slot(), true)),
        Bufs::List(v) => v
            .iter()
            .for_each(|b| one(b.pool(), b.slot(), matches!(b, crate::IoBuf::Pool(_)))),
    }
}

impl Ring {
    /// Queue SQEs, making room first if the SQ is full. The entries are pushed together,
    /// so a linked pair is never split across two submissions.
    ///
    /// Without SQPOLL, submitting empties the SQ at once (the kernel takes every entry it
    /// can); if it refuses some (`EBUSY`/`EAGAIN` while completions back up), reaping and
    /// then waiting for a completion make room. With SQPOLL only the kernel thread empties
    /// the SQ: wake it and sleep until it has (`IORING_ENTER_SQ_WAIT`) — a full SQ is a
    /// reason to wait, never to fail the operation.
    ///
    /// The thread-pool backend keeps SQEs until the next enter (its queue grows as needed).
    pub(super) fn push_sqes(&mut self, sqes: &[squeue::Entry]) -> Result<()> {
        for attempt in 0u32.. {
            let uring = match &mut self.backend {
                Backend::Uring(uring) => uring,
                Backend::Threads(th) => {
                    // Started at the next enter, as io_uring would. The same memory rule as
                    // below: the workers use it only until they post the completion.
                    th.submit(sqes);
                    return Ok(());
                }
            };
            // SAFETY: every SQE refers to memory that outlives its operation: buffers and
            // iovec arrays parked in the op table until the CQE, timespecs boxed in the
            // entry (read by the kernel at submission). `push_multiple` pushes all of them
            // or none (it checks the room first).
            if unsafe { uring.submission().push_multiple(sqes) }.is_ok() {
                return Ok(());
            }
            if attempt == 0 && sqes.len() > uring.submission().capacity() {
                // Cannot happen with the builder's minimum of 2 entries; never wait for it.
                return Err(Error::invalid("more linked SQEs than the SQ holds"));
            }
            if self.caps.sqpoll {
                self.sq_wait()?;
                // Completions the SQ thread posted meanwhile (a full CQ can hold it up).
                self.reap();
                continue;
            }
            self.enter(0, None)?;
            if attempt == 0 {
                continue;
            }
            // The kernel did not take our SQEs: reap to make progress, and from then on
            // wait for a completion (bounded) so the loop sleeps instead of spinning.
            self.reap();
            if attempt > 2 {
                if self.in_kernel == 0 && attempt > 64 {
                    return Err(Error::from_errno(libc::EBUSY));
                }
                self.enter(1, Some(Duration::from_millis(1)))?;
                self.reap();
            }
        }
        unreachable!("the loop above only exits by returning")
    }

    /// SQPOLL: wake the kernel's submission thread and wait until the SQ has room.
    pub(super) fn sq_wait(&mut self) -> Result<()> {
        self.enable()?;
        let Backend::Uring(uring) = &self.backend else {
            return Ok(()); // no SQPOLL without io_uring
        };
        self.stats.enters += 1;
        // SAFETY: no argument is passed; flags are valid enter flags.
        let r = unsafe {
            uring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, ENTER_SQ_WAKEUP | ENTER_SQ_WAIT, None)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::from_io(&e)),
        }
    }

    /// Before entering the kernel: a single-issuer ring is enabled by its first driving
    /// thread, and refuses any other with a typed error (the kernel would answer every
    /// call with `EEXIST`).
    pub(super) fn enable(&mut self) -> Result<()> {
        if !self.enabled {
            // Only io_uring rings start disabled (single issuer).
            if let Backend::Uring(uring) = &self.backend {
                uring
                    .submitter()
                    .register_enable_rings()
                    .map_err(|e| Error::from_io(&e))?;
            }
            self.enabled = true;
            self.issuer = thread_token();
        } else if self.issuer != 0 && self.issuer != thread_token() {
            return Err(Error::invalid(
                "single-issuer ring driven by a thread other than the one that first drove it",
            ));
        }
        Ok(())
    }

    /// SQEs queued and not yet submitted.
    pub(super) fn sq_len(&mut self) -> usize {
        match &mut self.backend {
            Backend::Uring(uring) => {
                let mut sq = uring.submission();
                sq.sync();
                sq.len()
            }
            // SQEs and jobs the next enter starts.
            Backend::Threads(th) => th.unsubmitted(),
        }
    }

    /// One `io_uring_enter`: submit everything queued, and if `want > 0` wait for that
    /// many completions (up to `timeout`).
    ///
    /// With the thread-pool backend, this starts what `push_sqes` queued (completing what
    /// can be done at once, handing the rest to the threads), and waits.
    pub(super) fn enter(&mut self, mut want: usize, timeout: Option<Duration>) -> Result<()> {
        self.enable()?;
        if want > 0 && self.shared.signal.end_awake() && self.has_requests() {
            // The driver loop was spinning (a message it runs is driving the ring): a
            // request may have skipped its wake-up. Submit, do not sleep.
            want = 0;
        }
        if let Backend::Threads(th) = &mut self.backend {
            if want > 0 {
                self.stats.enters += 1;
                th.wait(want, timeout, &mut self.cqes);
            } else {
                th.flush(&mut self.cqes);
            }
            return Ok(());
        }
        let queued = self.sq_len();
        if want == 0 && queued == 0 && !self.caps.defer_taskrun && !self.caps.sqpoll {
            return Ok(());
        }
        let Backend::Uring(uring) = &mut self.backend else {
            return Ok(());
        };
        self.stats.enters += 1;
        let r = match (want, timeout) {
            (0, _) if self.caps.defer_taskrun => {
                // SAFETY: no argument is passed; flags are valid enter flags.
                unsafe {
                    uring.submitter().enter::<libc::sigset_t>(
                        queued as u32,
                        0,
                        ENTER_GETEVENTS,
                        None,
                    )
                }
            }
            (0, _) => uring.submit(),
            (w, Some(t)) if self.caps.ext_arg => {
                let ts = super::op::kernel_timespec(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                uring.submitter().submit_with_args(w, &args)
            }
            (w, _) => uring.submit_and_wait(w),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::ETIME) => Ok(()),
                Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    self.reap();
                    Ok(())
                }
                _ => Err(Error::from_io(&e)),
            },
        }
    }

    /// Process every available CQE, in the kernel's order, flushing the kernel's overflow
    /// list as needed. Returns the number of CQEs seen.
    ///
    /// CQEs are copied out in batches into [`Ring::cqes`] and routed from there. A
    /// completion handler may reap again (starting a handle's operations on its wake-up
    /// CQE, or cancelling, can wait for SQ room and reap meanwhile): that nested call first
    /// routes what is left of the batch, so no CQE is ever routed before an earlier one — a
    /// multishot read's buffers stay in stream order and its final CQE comes last.
    pub(super) fn reap(&mut self) -> usize {
        self.reap_up_to(usize::MAX)
    }

    /// [`reap`](Self::reap), routing at most `limit` CQEs; the rest stay copied out (or in
    /// the CQ) for the next call.
    pub(super) fn reap_up_to(&mut self, limit: usize) -> usize {
        // Fast path (taken on most calls of a busy loop): nothing copied out and waiting,
        // nothing posted, nothing in the kernel's overflow list.
        if self.cqes.is_empty() && self.backend_idle() {
            return 0;
        }
        let mut total = 0;
        let mut flushes = 0;
        loop {
            // Older CQEs first: those an outer call copied out and has not routed yet.
            while total < limit {
                let Some((ud, res, flags)) = self.cqes.pop_front() else {
                    break;
                };
                self.on_cqe(ud, res, flags);
                total += 1;
            }
            if total >= limit {
                return total;
            }
            // Uninitialised storage: copying the CQEs out is the only write (no memset of
            // the whole batch on every call).
            let uring = match &mut self.backend {
                Backend::Uring(uring) => uring,
                Backend::Threads(th) => {
                    // At most CQE_BATCH: within the capacity reserved at build.
                    if th.fill(&mut self.cqes, CQE_BATCH) > 0 {
                        continue;
                    }
                    break;
                }
            };
            let mut batch = [const { std::mem::MaybeUninit::<cqueue::Entry>::uninit() }; CQE_BATCH];
            let cqes = uring.completion().fill(&mut batch);
            if !cqes.is_empty() {
                // At most CQE_BATCH: within the capacity reserved at build (no allocation).
                self.cqes
                    .extend(cqes.iter().map(|c| (c.user_data(), c.result(), c.flags())));
                continue;
            }
            // Completions beyond the CQ size wait in the kernel's overflow list
            // (IORING_FEAT_NODROP); an enter with GETEVENTS moves them into the CQ.
            if uring.submission().cq_overflow() && flushes < 1_000_000 {
                flushes += 1;
                self.stats.overflow_flushes += 1;
                // SAFETY: no argument is passed; flags are valid enter flags.
                let _ = unsafe {
                    uring
                        .submitter()
                        .enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None)
                };
                continue;
            }
            break;
        }
        total
    }

    /// Nothing posted and waiting in the backend (the kernel's CQ and overflow list, or
    /// the thread pool's queue).
    pub(super) fn backend_idle(&mut self) -> bool {
        match &mut self.backend {
            Backend::Uring(uring) => {
                uring.completion().is_empty() && !uring.submission().cq_overflow()
            }
            Backend::Threads(th) => !th.has_completions(),
        }
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        if sentinel::is_sentinel(ud) {
            if ud == sentinel::WAKE {
                self.on_wake(cqueue::more(flags));
            } else if ud == sentinel::DOORBELL {
                self.inbox_from_cqe();
            } else if let Some(index) = sentinel::doorbell_index(ud) {
                self.doorbell_done(index, res);
            }
            // CANCEL and TIMEOUT CQEs only report on the helper request itself; the
            // target operation's own CQE carries its outcome.
            return;
        }
        let id = OpId::from_cqe(self.id, ud);
        let key = id.index();
        let live = matches!(self.entry(id), Some(e) if matches!(e.state, EntryState::InKernel(_)));
        if !live {
            self.stats.stale_cqes += 1;
            debug_assert!(false, "stale CQE user_data={ud:#x} res={res}");
            return;
        }
        if let Some(bgid) = self.ops[key].multishot {
            // The buffer ring already handed the consumed buffer over (and marked it back
            // from the kernel); it only needs its length.
            let mut bufs = Bufs::None;
            let buf = cqueue::buffer_select(flags)
                .and_then(|bid| self.buf_ring_mut(bgid).and_then(|r| r.take(bid)));
            if let Some(mut b) = buf {
                b.set_transferred(res.max(0) as usize);
                bufs = Bufs::Pool(b);
            }
            if cqueue::more(flags) {
                self.deliver_more(key, id, res, bufs);
                return;
            }
            self.in_kernel -= 1;
            let result = self.cqe_result(key, res);
            self.ops[key].bufs = bufs;
            self.finish(key, result);
            self.multishot_ended(bgid);
            return;
        }
        self.in_kernel -= 1;
        let e = &mut self.ops[key];
        mark_in_flight(&e.bufs, false);
        if res >= 0 && e.is_read {
            let n = res as usize;
            match &mut e.bufs {
                Bufs::Pool(b) => b.set_transferred(e.read_base + n),
                Bufs::PoolList(v) => {
                    let mut left = n;
                    for (b, want) in v.iter_mut().zip(e.iov.iter().map(|i| i.iov_len)) {
                        let got = left.min(want);
                        b.set_transferred(got);
                        left -= got;
                    }
                }
                _ => {}
            }
        }
        let result = self.cqe_result(key, res);
        self.finish(key, result);
    }

    /// The result of a CQE for op-table entry `key`. A cancellation the caller did not
    /// ask for, on an op with a deadline, was the linked timeout firing: `TimedOut`.
    fn cqe_result(&self, key: usize, res: i32) -> Result<usize> {
        if res >= 0 {
            return Ok(res as usize);
        }
        let errno = crate::error::errno_of(res);
        let e = &self.ops[key];
        let interrupted = errno == libc::ECANCELED || errno == libc::EINTR;
        Err(if interrupted && !e.cancel_requested && e.has_deadline {
            Error::new(crate::ErrorKind::TimedOut)
        } else if errno == libc::EINTR && e.cancel_requested {
            Error::new(crate::ErrorKind::Cancelled)
        } else {
            Error::from_errno(errno)
        })
    }

    /// Produce the operation's one completion and route it. The entry leaves the table
    /// here (unless kept for `wait`), so a second completion for it is impossible.
    pub(super) fn finish(&mut self, key: usize, result: Result<usize>) {
        self.stats.completed += 1;
        let keep = match &self.ops[key].state {
            EntryState::InKernel(d) => matches!(d, Delivery::Keep),
            EntryState::Kept(_) => unreachable!("operation at slot {key} completed twice"),
        };
        let c = {
            let e = &mut self.ops[key];
            self.spare_iovs.give(std::mem::take(&mut e.iov));
            Completion {
                id: OpId::new(self.id, key as u32, e.gen),
                tag: e.tag,
                result,
                bufs: std::mem::take(&mut e.bufs),
                more: false,
            }
        };
        if keep {
            // Kept in the table until `Ring::wait` collects it.
            self.ops[key].state = EntryState::Kept(c);
            return;
        }
        match self.ops.remove(key).state {
            EntryState::InKernel(d) => self.deliver(d, c),
            EntryState::Kept(_) => unreachable!(),
        }
    }

    /// Hand a completion to its consumer (never `Keep`: the caller handles that).
    fn deliver(&mut self, delivery: Delivery, c: Completion) {
        match delivery {
            Delivery::Keep => unreachable!("kept completions stay in the op table"),
            Delivery::Routine(f) => f(c),
            Delivery::WithRing(f) => f(c, Some(self as &mut dyn std::any::Any)),
            Delivery::Queue(q) => q.push_overflow(c),
            Delivery::Local => self.ready.push_back(c),
            Delivery::Future(slot) => slot.complete(c),
            Delivery::Detach => drop(c),
        }
    }

    /// One of several completions of a multishot operation; the entry stays armed.
    fn deliver_more(&mut self, key: usize, id: OpId, res: i32, bufs: Bufs) {
        let c = Completion {
            id,
            tag: self.ops[key].tag,
            result: self.cqe_result(key, res),
            bufs,
            more: true,
        };
        match &self.ops[key].state {
            EntryState::InKernel(Delivery::Queue(q)) => q.push_overflow(c),
            EntryState::InKernel(Delivery::Local) => self.ready.push_back(c),
            // Detached (or abandoned): the buffer goes straight back to the pool.
            _ => drop(c),
        }
    }

    /// Carry out what other threads sent through a `RingHandle`: registrations, then
    /// commands in order, then cancels. After `shutdown_now`, cancel everything in flight
    /// (once) and complete new operations with `Cancelled` without starting them.
    fn start_inbox(&mut self) {
        // Before looking at anything handles send: a wake-up after this writes again.
        self.shared.signal.take_wake();
        self.install_registrations();
        if !self.cancelling_all && self.shared.is_cancelling_all() {
            self.cancelling_all = true;
            let ids: Vec<OpId> = self
                .ops
                .iter()
                .filter(|(_, e)| matches!(e.state, EntryState::InKernel(_)) && !e.cancel_requested)
                .map(|(k, e)| OpId::new(self.id, k as u32, e.gen))
                .collect();
            for id in ids {
                self.cancel(id);
            }
        }
        // What is there now, and no more: a message that posts to its own ring (or two
        // rings' handles bouncing work) must not keep this loop from returning. What
        // arrives meanwhile runs at the next turn, which `inbox_again` makes come at once.
        for _ in 0..self.shared.inbox_len() {
            let Some(cmd) = self.shared.pop() else {
                break;
            };
            match cmd {
                Cmd::Op(op, d) if self.cancelling_all => complete_unsent(op, d),
                // A ring shutting down (dropped, or `shutdown_now`) runs no more messages.
                Cmd::Post(m) if self.cancelling_all || self.shared.signal.is_closed() => m(None),
                Cmd::Post(m) => {
                    self.stats.messages += 1;
                    m(Some(self as &mut dyn std::any::Any));
                }
                Cmd::Op(op, Delivery::Future(slot)) => {
                    self.start_future(op, slot);
                }
                Cmd::Op(op, d) => {
                    self.start(op, d);
                }
                Cmd::Close(t) => {
                    let _ = self.close(t);
                }
            }
        }
        self.inbox_again = !self.shared.inbox_is_empty();
        while let Some(id) = self.shared.signal.pop_cancel() {
            self.cancel(id);
        }
    }

    /// Anything handles or other rings asked of this ring that it has not taken: a command,
    /// a cancel, a registration, a `shutdown_now`.
    pub(super) fn has_requests(&self) -> bool {
        !self.shared.inbox_is_empty()
            || self.shared.signal.has_cancels()
            || self.shared.has_registrations()
            || (self.shared.is_cancelling_all() && !self.cancelling_all)
    }

    /// A wake-up or doorbell CQE: take the inbox, at most `INBOX_VISITS` times a turn. A
    /// message that posts to its own ring through a handle writes the eventfd, whose poll
    /// posts the next CQE at once: without the bound, one reap would never end. Past it,
    /// the next turn takes the inbox, without waiting (`inbox_again`).
    fn inbox_from_cqe(&mut self) {
        if self.inbox_visits < INBOX_VISITS {
            self.inbox_visits += 1;
            self.start_inbox();
        } else {
            self.inbox_again = true;
        }
    }

    /// Apply dropped tickets and pick up work sent by handles.
    pub(super) fn housekeeping(&mut self) {
        self.inbox_visits = 0;
        self.replenish_buf_rings();
        while let Some(id) = self.abandoned.pop() {
            let Some(e) = self.entry_mut(id) else {
                continue;
            };
            match &mut e.state {
                // Completed and unclaimed: free it now (its buffers return to the pool).
                EntryState::Kept(_) => drop(self.ops.remove(id.index())),
                // Still owned by the kernel: the buffers stay parked until the CQE.
                EntryState::InKernel(d) => *d = Delivery::Detach,
            }
        }
        self.start_inbox();
    }

    pub(crate) fn wait_id(&mut self, id: OpId) -> Result<Completion> {
        loop {
            match self.entry(id) {
                Some(e) => {
                    if let EntryState::Kept(_) = e.state {
                        return match self.ops.remove(id.index()).state {
                            EntryState::Kept(c) => Ok(c),
                            EntryState::InKernel(_) => unreachable!(),
                        };
                    }
                }
                _ => return Err(Error::not_in_progress("operation kept by this ring")),
            }
            self.run_once(None)?;
        }
    }

    pub(super) fn arm_wake(&mut self) -> Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let sqe =
            opcode::PollAdd::new(types::Fd(self.shared.signal.wake_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(sentinel::WAKE);
        self.push_sqes(&[sqe])?;
        self.wake_armed = true;
        Ok(())
    }

    fn on_wake(&mut self, more: bool) {
        self.shared.signal.clear_wake();
        self.wake_armed = more;
        if let (true, Backend::Threads(th)) = (more, &self.backend) {
            // The wake-up was cleared: the thread pool's multishot poll may report the
            // next one. Before the inbox runs: a message may wait in a nested `run_once`
            // for a request only this poll can announce.
            th.rearm(sentinel::WAKE);
        }
        self.inbox_from_cqe();
        if !more && !self.shared.signal.is_closed() {
            let _ = self.arm_wake();
        }
    }

    /// Teardown: cancel everything in flight and wait (up to [`DROP_GRACE`]) for the kernel
    /// to hand every buffer back. If it never does, leak the parked buffers rather than let
    /// memory the kernel may still write be reused, and complete those operations with
    /// [`ErrorKind::Abandoned`].
    pub(super) fn shutdown_drain(&mut self) {
        self.shared.signal.close();
        self.housekeeping();
        if self.in_kernel > 0 || self.wake_armed {
            let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(sentinel::CANCEL);
            if self.push_sqes(&[any]).is_err() {
                // Fall back to cancelling one by one.
                let ids: Vec<u64> = self
                    .ops
                    .iter()
                    .filter(|(_, e)| matches!(e.state, EntryState::InKernel(_)))
                    .map(|(k, e)| OpId::new(self.id, k as u32, e.gen).user_data())
                    .collect();
                for ud in ids {
                    let sqe = opcode::AsyncCancel::new(ud)
                        .build()
                        .user_data(sentinel::CANCEL);
                    let _ = self.push_sqes(&[sqe]);
                }
            }
            for e in self.ops.iter_mut() {
                e.1.cancel_requested = true;
            }
            let deadline = Instant::now() + DROP_GRACE;
            while self.in_kernel > 0 && Instant::now() < deadline {
                if self.run_once(Some(Duration::from_millis(50))).is_err() {
                    break;
                }
            }
        }
        if self.in_kernel > 0 {
            // The kernel kept these past the grace period (a device that never answers).
            // Their buffers are leaked — the kernel may still write them — and each route
            // learns the outcome is unknown: one completion, `Abandoned`, no buffers.
            let stuck: Vec<usize> = self
                .ops
                .iter()
                .filter(|(_, e)| matches!(e.state, EntryState::InKernel(_)))
                .map(|(k, _)| k)
                .collect();
            for key in stuck {
                std::mem::forget(std::mem::take(&mut self.ops[key].bufs));
                // A vectored op's iovec array too: a backend thread may still read it.
                std::mem::forget(std::mem::take(&mut self.ops[key].iov));
                self.in_kernel -= 1;
                self.finish(key, Err(Error::new(ErrorKind::Abandoned)));
            }
            // A stuck multishot read may still take any provided buffer.
            for st in &mut self.buf_rings {
                st.leak_offered();
            }
        }
        // Items a handle pushed concurrently with `close` (see `Signal::close`).
        self.shared.drain_cancelled();
    }
}
