//! The thread-pool backend: an interpreter of io_uring submission entries, for hosts where
//! io_uring is refused (seccomp profiles, `kernel.io_uring_disabled`, gVisor, old kernels).
//!
//! The ring builds its SQEs exactly as for io_uring and hands them here. Each 64-byte
//! `struct io_uring_sqe` (a stable kernel ABI) is decoded and executed with ordinary
//! system calls; its completion is queued as `(user_data, result, flags)`, the shape of a
//! CQE, so the ring routes it exactly as it routes the kernel's.
//!
//! | opcode | executed as |
//! |---|---|
//! | `READ`, `READ_FIXED`, `READV`, `READV_FIXED` | `preadv2` at the offset (`-1`: the file's position) with the SQE's `rw_flags` |
//! | `WRITE`, `WRITE_FIXED`, `WRITEV`, `WRITEV_FIXED` | `pwritev2`, likewise (`RWF_NOAPPEND`, `RWF_NOWAIT` pass through) |
//! | `FSYNC` | `fsync`, or `fdatasync` with `IORING_FSYNC_DATASYNC` |
//! | `POLL_ADD` | `poll`; the result is the ready mask. Multishot: one completion with `IORING_CQE_F_MORE`, then armed again once the ring has routed it ([`Threads::rearm`]) |
//! | `NOP` | completes at once with 0 |
//! | `TIMEOUT` (relative, no count) | a timer thread completes it with `-ETIME` |
//! | `ASYNC_CANCEL` | by `user_data`, or every operation with `IORING_ASYNC_CANCEL_ANY` (see below) |
//! | `LINK_TIMEOUT` after an `IOSQE_IO_LINK` entry | a deadline on that operation (see below) |
//! | anything else | `-EINVAL` |
//!
//! As with io_uring, submitted entries start at the ring's next enter, in order, and what
//! can be done without blocking is done right there, on the ring's thread: a stream
//! transfer that finds data (or room), a positional transfer of a buffered file the page
//! cache serves whole, a poll whose events are there (all with `RWF_NOWAIT` or a zero
//! timeout). Their completions go straight to the ring's list of copied-out CQEs (no lock,
//! no eventfd). The rest is queued for the threads below. A ring that then waits with no
//! time limit for the only operation it has, a file job not started yet, runs it on its
//! own thread: nothing else could end that wait, and a fast device's read takes less time
//! than waking a worker and being woken by it.
//!
//! ## Threads
//!
//! * **I/O workers** (at most [`RingBuilder::threads`](crate::RingBuilder::threads): by
//!   default 4 per CPU, at most the SQ entries; started as work arrives and kept until
//!   the ring is dropped) run what does not wait for another party: positional reads and
//!   writes of files and block devices, `fsync`, and reads or writes with `RWF_NOWAIT`.
//! * **Stream threads** run what may wait for another party indefinitely: reads and writes
//!   of pipes, sockets, ttys and other streams (SQE offset `-1`), and `POLL_ADD`. Each such
//!   operation gets a thread of its own for as long as it waits — an idle one if there is
//!   one, else a new one (idle ones retire after 10 s) — so any number of reads blocked on
//!   idle pipes never delays file I/O, nor each other. A stream thread waits in
//!   `poll(2)` on the descriptor *and* an eventfd of its own, so a cancel, a deadline or
//!   the ring's drop always ends the wait; then it transfers with `RWF_NOWAIT` (one
//!   attempt, as io_uring does: a write to a pipe may be short), polling again if another
//!   reader took the data first. A stream that refuses `RWF_NOWAIT` (`EOPNOTSUPP`: ttys,
//!   a FIFO opened by path) is read plainly once `poll` says it is ready.
//! * **One manager thread**, started with the ring, starts the others when they are
//!   needed (so the ring's own thread never allocates for one) and fires `TIMEOUT`s and
//!   the deadlines of operations waiting for an I/O worker.
//!
//! ## Cancel and deadlines
//!
//! A cancel (or a passed deadline) completes an operation still queued with `-ECANCELED`
//! without running it, and wakes one waiting in `poll` (a stream transfer, a `POLL_ADD`),
//! which then completes with `-ECANCELED`. A positional read or write already in its
//! system call cannot be interrupted: the cancel's own completion is `-EALREADY` and the
//! operation completes normally. The linked timeout's own completion is what io_uring
//! posts: `-ETIME` when it cancelled the operation, `-EALREADY` when the operation was
//! running, `-ECANCELED` when the operation completed first.
//!
//! ## Buffers
//!
//! The kernel-owns-the-buffer rule becomes "the worker owns the buffer until it has posted
//! the completion": a worker touches an operation's memory (buffers, iovec array) only
//! before posting, and the ring parks that memory in its op table until it routes the
//! completion. Descriptors too: a target the ring closes while operations on it are in
//! flight is closed only after the last of them completes
//! ([`release_fd`](Threads::release_fd)), so its number cannot be reused under a worker.

mod sqe;
mod state;
mod workers;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue};
use rustc_hash::FxHashMap as HashMap;

use crate::error::{Error, Result};
use crate::waiters::deadline_after;

pub(crate) use sqe::FdClass;
use sqe::{efd_clear, efd_write, eventfd, inline, inline_candidate, Decoded, Sqe, IOSQE_IO_LINK};
use state::{lock, Cq, Phase, State, Why};
use workers::{execute, Shared, FILE, STACK, STREAM};

/// Most I/O workers a ring may ask for.
pub(crate) const MAX_WORKERS: usize = 1024;

/// The thread-pool backend of one ring (see the module docs).
pub(crate) struct Threads {
    sh: Arc<Shared>,
    /// The ring's targets, by descriptor (only the ring's thread uses this).
    classes: HashMap<RawFd, FdClass>,
    /// SQEs submitted since the last enter, in order: io_uring starts what was submitted
    /// at the next `io_uring_enter`, and so does this backend ([`start`](Threads::start)).
    /// Starting at submission instead would let a read overtake a write made between
    /// the two, or take the data a pipe read submitted earlier was due.
    pending: Vec<squeue::Entry>,
    /// Idle threads to wake, per queue, for jobs queued since the last
    /// [`flush`](Threads::flush) — unless a ring that then waits for the one job it
    /// queued runs it itself (see [`wait`](Threads::wait)).
    unwoken: [usize; 2],
}

impl Threads {
    /// A backend of at most `workers` I/O workers, with room for `ops` operations in
    /// flight and `cq_entries` completions before its tables grow. Its manager thread
    /// starts now; the others as work arrives.
    pub(crate) fn new(workers: usize, ops: usize, cq_entries: usize) -> Result<Threads> {
        let ops = ops.min(1 << 16);
        let mut st = State::default();
        // Twice the room: a table kept at most half full never reallocates to clear the
        // tombstones that removals leave (it rehashes in place).
        st.jobs.reserve(ops * 2);
        st.file_q.reserve(ops.min(1024));
        st.stream_q.reserve(ops.min(64));
        st.timers.reserve(ops.min(64));
        st.fd_users.reserve(64);
        let sh = Arc::new(Shared {
            st: Mutex::new(st),
            file_cv: Condvar::new(),
            stream_cv: Condvar::new(),
            manager_cv: Condvar::new(),
            cq: Mutex::new(Cq {
                items: VecDeque::with_capacity(cq_entries),
                signalled: false,
                want: 0,
            }),
            cq_cv: Condvar::new(),
            cq_len: AtomicUsize::new(0),
            signal: eventfd()?,
            max_workers: workers.clamp(1, MAX_WORKERS),
        });
        let m = sh.clone();
        std::thread::Builder::new()
            .name("iocomplete-mgr".into())
            .stack_size(STACK)
            .spawn(move || m.manager())
            .map_err(|e| Error::from_io(&e))?;
        Ok(Threads {
            sh,
            classes: HashMap::with_capacity_and_hasher(64, Default::default()),
            pending: Vec::with_capacity(ops.min(4096)),
            unwoken: [0; 2],
        })
    }

    /// Queue these SQEs (a linked pair stays together); they start at the next enter
    /// ([`flush`](Threads::flush), [`wait`](Threads::wait)). Never fails: a bad entry
    /// completes with an error then, as the kernel's would.
    pub(crate) fn submit(&mut self, sqes: &[squeue::Entry]) {
        self.pending.extend_from_slice(sqes);
    }

    /// Start the SQEs submitted since the last enter, in order. A `LINK_TIMEOUT` right
    /// after an `IOSQE_IO_LINK` entry becomes that operation's deadline.
    ///
    /// What completes here, on the ring's thread (`NOP`, a malformed entry, a transfer
    /// done at once), goes straight to `done`, the ring's copied-out completions: no
    /// lock, no eventfd. The rest is queued for the threads, woken by
    /// [`flush`](Threads::flush).
    fn start(&mut self, done: &mut VecDeque<(u64, i32, u32)>) {
        if self.pending.is_empty() {
            return;
        }
        // Taken out (an empty `Vec` does not allocate) and put back cleared: the capacity
        // stays for the next batch.
        let mut sqes = std::mem::take(&mut self.pending);
        self.start_all(&sqes, done);
        sqes.clear();
        self.pending = sqes;
    }

    fn start_all(&mut self, sqes: &[squeue::Entry], done: &mut VecDeque<(u64, i32, u32)>) {
        let sh = &self.sh;
        let complete = |done: &mut VecDeque<(u64, i32, u32)>, ud, res, link: Option<u64>| {
            done.push_back((ud, res, 0));
            if let Some(l) = link {
                done.push_back((l, -libc::ECANCELED, 0));
            }
        };
        // Taken when a job is queued; released around the attempts at submission, so
        // workers finishing meanwhile never wait for a copy out of the page cache.
        let mut st: Option<MutexGuard<'_, State>> = None;
        let mut i = 0;
        while i < sqes.len() {
            let s = Sqe::read(&sqes[i]);
            i += 1;
            let mut link = None;
            if s.flags & IOSQE_IO_LINK != 0 {
                if let Some(t) = sqes.get(i).map(Sqe::read) {
                    if t.opcode == opcode::LinkTimeout::CODE {
                        i += 1;
                        // A malformed timespec: the timeout fails, the operation has no
                        // deadline. (The ring only sends well-formed ones.)
                        let d = t.timespec();
                        if let Err(e) = d {
                            done.push_back((t.user_data, e, 0));
                        }
                        link = d.ok().map(|d| (t.user_data, Some(d)));
                    }
                }
            }
            let ud = s.user_data;
            let link_ud = link.map(|l| l.0);
            match s.decode() {
                Decoded::Done(res) => complete(done, ud, res, link_ud),
                Decoded::Cancel => {
                    // Through the shared queue, like the completions it causes: the
                    // target's completes no later than the cancel's own.
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    let r = sh.cancel_req(st, &s);
                    sh.post_done(ud, r, 0, link_ud, -libc::ECANCELED);
                }
                Decoded::Timeout => {
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    sh.start_timeout(st, &s);
                }
                Decoded::Work(work) => {
                    let class = self.classes.get(&work.fd()).copied();
                    if inline_candidate(&work, class) {
                        st = None;
                        if let Some(res) = inline(&work, class) {
                            complete(done, ud, res, link_ud);
                            continue;
                        }
                    }
                    let st = st.get_or_insert_with(|| lock(&sh.st));
                    if let Some(kind) = sh.enqueue(st, ud, work, class, link) {
                        // At most one wake-up per idle thread (a spare one costs a
                        // system call).
                        let idle = [st.idle_workers, st.idle_streamers][kind];
                        if self.unwoken[kind] < idle {
                            self.unwoken[kind] += 1;
                        }
                    }
                }
            }
        }
    }

    /// SQEs not started and jobs whose threads are not woken yet: the work the next
    /// enter ([`flush`](Threads::flush)) has to do.
    pub(crate) fn unsubmitted(&self) -> usize {
        self.pending.len() + self.unwoken.iter().sum::<usize>()
    }

    /// The ring's `io_uring_enter` without waiting: start what was submitted, and wake the
    /// idle threads the jobs queued need. (Woken without the state lock: a thread checks
    /// its queue under the lock before it sleeps, so a wake-up that finds it busy is not
    /// needed.)
    pub(crate) fn flush(&mut self, done: &mut VecDeque<(u64, i32, u32)>) {
        self.start(done);
        self.wake();
    }

    fn wake(&mut self) {
        for _ in 0..std::mem::take(&mut self.unwoken[FILE]) {
            self.sh.file_cv.notify_one();
        }
        for _ in 0..std::mem::take(&mut self.unwoken[STREAM]) {
            self.sh.stream_cv.notify_one();
        }
    }

    /// Whether completions are waiting (cheap; may lag a completion just posted).
    pub(crate) fn has_completions(&self) -> bool {
        // Acquire: see `Shared::post`.
        self.sh.cq_len.load(Ordering::Acquire) > 0
    }

    /// Move up to `max` completions, oldest first, to `out`. The descriptor stops polling
    /// readable once none is left.
    pub(crate) fn fill(&self, out: &mut VecDeque<(u64, i32, u32)>, max: usize) -> usize {
        if !self.has_completions() {
            // Nothing posted (the count is stored under the lock after each change, so a
            // completion this misses is found by the ring's next reap).
            return 0;
        }
        let mut cq = lock(&self.sh.cq);
        let n = cq.items.len().min(max);
        out.extend(cq.items.drain(..n));
        if cq.items.is_empty() && cq.signalled {
            // Under the lock, like the write in `post`: the eventfd holds a count exactly
            // while completions wait.
            cq.signalled = false;
            efd_clear(self.sh.signal.as_raw_fd());
        }
        // Under the lock; Release as in `Shared::post`.
        self.sh.cq_len.store(cq.items.len(), Ordering::Release);
        n
    }

    /// Wait until `want` completions are queued, or `timeout` passes (`None`: no limit;
    /// one past what an `Instant` holds: no limit either). Returns at once if `done` (the
    /// ring's copied-out completions) holds any.
    ///
    /// A ring that waits with no time limit for the only operation it has in flight, a
    /// file job nobody has started, runs it on its own thread and puts its completion in
    /// `done`: what a worker would do, without the two thread hand-offs (wake a worker,
    /// wake the ring) that would otherwise cost more than a fast device's read. Nothing
    /// else can complete meanwhile — no other operation is live, no handle can wake the
    /// ring (its wake-up poll would be live), no deadline is set — so the wait ends no
    /// later than it would have.
    pub(crate) fn wait(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
        done: &mut VecDeque<(u64, i32, u32)>,
    ) {
        self.start(done);
        if !done.is_empty() {
            self.wake();
            return;
        }
        if timeout.is_none() && self.run_only_job(done) {
            return;
        }
        self.wake();
        let deadline = timeout.map(deadline_after);
        let mut cq = lock(&self.sh.cq);
        while cq.items.len() < want {
            cq.want = want;
            cq = match deadline {
                Some(Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    self.sh
                        .cq_cv
                        .wait_timeout(cq, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                _ => self
                    .sh
                    .cq_cv
                    .wait(cq)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        cq.want = 0;
    }

    /// The caller-runs case of [`wait`](Threads::wait): whether it ran a job.
    fn run_only_job(&mut self, done: &mut VecDeque<(u64, i32, u32)>) -> bool {
        let sh = &self.sh;
        let mut st = lock(&sh.st);
        if st.jobs.len() != 1 || st.file_q.len() != 1 || sh.cq_len.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Some(job) = st.file_q.pop_front() else {
            return false;
        };
        let alone = st.jobs.get(&job.ud).is_some_and(|l| l.deadline.is_none());
        if !alone || !st.claim(&job) {
            st.file_q.push_front(job);
            return false;
        }
        drop(st);
        // The worker that would have been woken for it is not needed.
        self.unwoken = [0; 2];
        let res = execute(&job);
        let mut st = lock(&sh.st);
        // Still this job: nothing but this thread (busy here) could complete it.
        if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
            if let Some(live) = st.retire(job.ud) {
                done.push_back((job.ud, res, 0));
                if let Some(l) = live.link {
                    done.push_back((l, -libc::ECANCELED, 0));
                }
            }
        }
        true
    }

    /// The ring has routed the last completion of multishot poll `ud` (after clearing
    /// whatever it signalled): it may post again.
    pub(crate) fn rearm(&self, ud: u64) {
        let mut st = lock(&self.sh.st);
        if let Some(live) = st.jobs.get_mut(&ud) {
            live.rearmed = true;
            if let Phase::Blocked(wake) = live.phase {
                efd_write(wake);
            }
        }
    }

    /// The ring registered a target.
    pub(crate) fn add_fd(&mut self, fd: RawFd, class: FdClass) {
        self.classes.insert(fd, class);
    }

    /// The ring closed a target: close its descriptor now, or when the last operation
    /// using it completes (until then its number cannot be reused under a worker).
    pub(crate) fn release_fd(&mut self, fd: OwnedFd) {
        self.classes.remove(&fd.as_raw_fd());
        let mut st = lock(&self.sh.st);
        if st.fd_users.contains_key(&fd.as_raw_fd()) {
            st.deferred.push(fd);
        } else {
            drop(st);
            drop(fd);
        }
    }
}

impl AsFd for Threads {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sh.signal.as_fd()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // The ring has cancelled and drained everything it could (`shutdown_drain`; its
        // own wake-up poll is not waited for, and its cancel may never have started).
        // Threads exit once their current system call returns; anything still waiting is
        // woken, and a stream job between two waits stops at the next (`Shared::block`
        // sees `shutdown`). Their completions go nowhere: the ring gave up on them and
        // leaked their buffers.
        let mut st = lock(&self.sh.st);
        st.shutdown = true;
        for live in st.jobs.values_mut() {
            if let Phase::Blocked(wake) = live.phase {
                live.cancel.get_or_insert(Why::Cancel);
                efd_write(wake);
            }
        }
        drop(st);
        self.sh.file_cv.notify_all();
        self.sh.stream_cv.notify_all();
        self.sh.manager_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::types;
    use std::sync::Weak;

    /// Whether every thread of a dropped backend has exited within `within`: each holds
    /// the shared state, so it is freed once the last one has.
    fn threads_gone(sh: &Weak<Shared>, within: Duration) -> bool {
        let end = Instant::now() + within;
        while sh.strong_count() > 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// A backend dropped while its stream thread is between two waits of a multishot
    /// poll (re-armed, about to wait again) must still end that thread: nothing would
    /// ever wake it once the ring is gone. The ring's wake-up poll is such a poll.
    #[test]
    fn drop_ends_a_stream_thread_between_two_waits_of_a_multishot_poll() {
        // Always readable: the poll fires again as soon as it is re-armed.
        let ready = eventfd().unwrap();
        efd_write(ready.as_raw_fd());
        let poll = opcode::PollAdd::new(types::Fd(ready.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(1);
        let started = Instant::now();
        for round in 0..300u32 {
            let mut th = Threads::new(1, 8, 8).unwrap();
            let sh = Arc::downgrade(&th.sh);
            let mut done = VecDeque::new();
            th.submit(std::slice::from_ref(&poll));
            th.wait(1, Some(Duration::from_secs(10)), &mut done);
            assert_eq!(
                th.fill(&mut done, 8),
                1,
                "round {round}: the poll never fired"
            );
            // Re-arm for a while (the thread cycles through post, wait for re-arm, wait
            // for the descriptor), then drop at some point of that cycle.
            let spin = Duration::from_micros(u64::from(round % 50));
            let t = Instant::now();
            loop {
                th.rearm(1);
                if t.elapsed() >= spin {
                    break;
                }
            }
            drop(th);
            assert!(
                threads_gone(&sh, Duration::from_secs(5)),
                "round {round}: a stream thread outlived its backend"
            );
            // A bound on the whole test on a slow or loaded machine (every round checked
            // its outcome).
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
    }
}
