//! The threads: what they share with the ring, and how they run, cancel and time out jobs.

use std::cmp::Reverse;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::waiters::deadline_after;

use super::sqe::{
    efd_clear, efd_write, errno, eventfd, nonblocking_twin, seekable, wait_ready, FdClass, Rw, Sqe,
    Work, CANCEL_ALL, CANCEL_ANY, CQE_F_MORE,
};
use super::state::{lock, Cq, Job, Live, Phase, State, TimerEntry, Why};

/// How long an idle stream thread waits for work before it exits.
const STREAM_IDLE: Duration = Duration::from_secs(10);
/// Stack of each backend thread: they only make system calls.
pub(super) const STACK: usize = 256 * 1024;
/// Transfers in a row that `poll` called ready and then found nothing (`EAGAIN`) before a
/// stream thread starts pausing between attempts (a device whose poll lies must not make
/// it spin).
const SPURIOUS: u32 = 16;

/// Index in [`Threads::unwoken`](super::Threads::unwoken) of jobs for the I/O workers.
pub(super) const FILE: usize = 0;
/// Index in [`Threads::unwoken`](super::Threads::unwoken) of jobs for the stream threads.
pub(super) const STREAM: usize = 1;

pub(super) struct Shared {
    pub(super) st: Mutex<State>,
    pub(super) file_cv: Condvar,
    pub(super) stream_cv: Condvar,
    /// Wakes the manager: a timer armed, threads to start, shutdown.
    pub(super) manager_cv: Condvar,
    pub(super) cq: Mutex<Cq>,
    pub(super) cq_cv: Condvar,
    /// `cq.items.len()`, readable without the lock (see `has_completions`).
    pub(super) cq_len: AtomicUsize,
    /// Readable while completions wait: the ring's descriptor for event loops.
    pub(super) signal: OwnedFd,
    pub(super) max_workers: usize,
}

/// The system call of an I/O worker's job (a positional transfer, `fsync`): its result.
pub(super) fn execute(job: &Job) -> i32 {
    match job.work {
        Work::Rw(rw) => rw.call(rw.off(), rw.flags),
        Work::Fsync { fd, datasync } => loop {
            // SAFETY: plain syscalls on a descriptor the ring keeps open while the
            // job lives (see `release_fd`).
            let r = unsafe {
                if datasync {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            };
            if r == 0 {
                break 0;
            }
            match errno() {
                libc::EINTR => continue,
                e => break -e,
            }
        },
        // Never queued for an I/O worker.
        Work::Poll { .. } => -libc::EINVAL,
    }
}

impl Shared {
    /// Queue a completion for the ring. Lock order: `st` (if held) before `cq`.
    fn post(&self, ud: u64, res: i32, flags: u32) {
        let mut cq = lock(&self.cq);
        cq.items.push_back((ud, res, flags));
        // Release, paired with the Acquire in `has_completions`: a ring woken by the
        // eventfd (signalled after this store) or by the condvar finds the count, so its
        // fast path does not skip this completion. The items themselves travel under the
        // lock.
        self.cq_len.store(cq.items.len(), Ordering::Release);
        if !cq.signalled {
            cq.signalled = true;
            efd_write(self.signal.as_raw_fd());
        }
        let wake = cq.want > 0 && cq.items.len() >= cq.want;
        drop(cq);
        // After unlocking: the ring, woken, takes the lock at once (notified under it, it
        // would wake only to sleep on the mutex). It checks the count under the lock, so a
        // notify that comes late is never lost.
        if wake {
            self.cq_cv.notify_one();
        }
    }

    /// Complete a retired job and its linked timeout.
    pub(super) fn post_done(
        &self,
        ud: u64,
        res: i32,
        flags: u32,
        link: Option<u64>,
        link_res: i32,
    ) {
        self.post(ud, res, flags);
        if let Some(l) = link {
            self.post(l, link_res, 0);
        }
    }

    /// A thread's job is done: retire it and post its completion (nothing if it was
    /// retired meanwhile — impossible for a claimed job, checked all the same). Returns
    /// the state, still locked, to the thread's loop: it takes its next job (or counts
    /// itself idle) before the ring, which needs the lock to queue one, can think it
    /// busy and ask for another thread.
    fn finish(&self, job: &Job, res: i32, link_res: i32) -> MutexGuard<'_, State> {
        let mut st = lock(&self.st);
        if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
            if let Some(live) = st.retire(job.ud) {
                self.post_done(job.ud, res, 0, live.link, link_res);
            }
        }
        st
    }

    fn finish_cancelled(&self, job: &Job, why: Why) -> MutexGuard<'_, State> {
        let link_res = match why {
            Why::Cancel => -libc::ECANCELED,
            Why::Deadline => -libc::ETIME,
        };
        self.finish(job, -libc::ECANCELED, link_res)
    }

    /// Queue the job of one SQE (and its linked timeout) for a thread. Returns the queue
    /// it joined (`STREAM` or `FILE`) if a thread of that kind idles there: one to wake
    /// ([`Threads::flush`]), unless the ring runs the job itself ([`Threads::wait`]).
    ///
    /// [`Threads::flush`]: super::Threads::flush
    /// [`Threads::wait`]: super::Threads::wait
    pub(super) fn enqueue(
        &self,
        st: &mut State,
        ud: u64,
        work: Work,
        class: Option<FdClass>,
        link: Option<(u64, Option<Duration>)>,
    ) -> Option<usize> {
        let link_ud = link.map(|l| l.0);
        let stream = work.is_stream(class);
        // Past what an `Instant` holds: no deadline.
        let deadline = link.and_then(|(_, d)| d).and_then(deadline_after);
        st.seq += 1;
        let seq = st.seq;
        // Stream threads enforce their own deadlines (their `poll` times out); the
        // manager enforces those of jobs waiting for an I/O worker.
        let timer = deadline.filter(|_| !stream);
        let live = Live {
            seq,
            phase: Phase::Queued,
            cancel: None,
            deadline,
            timer,
            link: link_ud,
            fd: Some(work.fd()),
            stream,
            rearmed: true,
        };
        match st.jobs.entry(ud) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(live);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                // The ring never has two operations with one `user_data` in flight;
                // posting for this one would complete the other while it runs. Refuse it
                // silently.
                debug_assert!(false, "user_data {ud:#x} submitted twice");
                return None;
            }
        }
        if let Some(when) = timer {
            st.arm_timer(when, seq, ud);
            self.manager_cv.notify_one();
        }
        *st.fd_users.entry(work.fd()).or_insert(0) += 1;
        let job = Job {
            ud,
            seq,
            work,
            unknown: class.is_none(),
        };
        let queue = if stream {
            &mut st.stream_q
        } else {
            &mut st.file_q
        };
        queue.push_back(job);
        if st.grow(stream, self.max_workers) {
            self.manager_cv.notify_one();
        }
        let (kind, idle) = if stream {
            (STREAM, st.idle_streamers)
        } else {
            (FILE, st.idle_workers)
        };
        (idle > 0).then_some(kind)
    }

    pub(super) fn start_timeout(&self, st: &mut State, s: &Sqe) {
        let ud = s.user_data;
        // Only what the ring sends: a relative timer with no completion count.
        if s.off != 0 || s.op_flags != 0 {
            return self.post(ud, -libc::EINVAL, 0);
        }
        let after = match s.timespec() {
            Ok(d) => d,
            Err(e) => return self.post(ud, e, 0),
        };
        if st.jobs.contains_key(&ud) {
            debug_assert!(false, "user_data {ud:#x} submitted twice");
            return;
        }
        st.seq += 1;
        let seq = st.seq;
        // Past what an `Instant` holds: a timer that never fires (only a cancel ends it).
        let when = deadline_after(after);
        if let Some(w) = when {
            st.arm_timer(w, seq, ud);
            self.manager_cv.notify_one();
        }
        st.jobs.insert(
            ud,
            Live {
                seq,
                phase: Phase::Timer,
                cancel: None,
                deadline: None,
                timer: when,
                link: None,
                fd: None,
                stream: false,
                rearmed: true,
            },
        );
    }

    /// An `ASYNC_CANCEL`: its own result.
    pub(super) fn cancel_req(&self, st: &mut State, s: &Sqe) -> i32 {
        if s.op_flags & CANCEL_ANY != 0 {
            let all: Vec<u64> = st.jobs.keys().copied().collect();
            let found = all
                .iter()
                .filter(|&&ud| self.cancel_one(st, ud) != -libc::ENOENT);
            return match found.count() {
                0 => -libc::ENOENT,
                n => i32::try_from(n).unwrap_or(i32::MAX),
            };
        }
        if s.op_flags & !CANCEL_ALL != 0 {
            return -libc::EINVAL;
        }
        self.cancel_one(st, s.addr)
    }

    /// Cancel one operation: 0 when it is (or will be at once) cancelled, `-EALREADY` when
    /// it is in a system call that cannot be interrupted, `-ENOENT` when there is none.
    fn cancel_one(&self, st: &mut State, ud: u64) -> i32 {
        let Some(live) = st.jobs.get_mut(&ud) else {
            return -libc::ENOENT;
        };
        match live.phase {
            Phase::Queued | Phase::Timer => {
                if let Some(live) = st.retire(ud) {
                    self.post_done(ud, -libc::ECANCELED, 0, live.link, -libc::ECANCELED);
                }
                0
            }
            Phase::Blocked(wake) => {
                live.cancel.get_or_insert(Why::Cancel);
                efd_write(wake);
                0
            }
            Phase::Running => {
                // A stream transfer that finds nothing after this goes back to wait:
                // it sees the cancel then.
                if live.stream {
                    live.cancel.get_or_insert(Why::Cancel);
                }
                -libc::EALREADY
            }
        }
    }

    /// A timer came up: a `TIMEOUT` completes, a queued job's deadline cancels it.
    fn fire(&self, st: &mut State, t: TimerEntry) {
        let phase = match st.jobs.get_mut(&t.ud) {
            Some(l) if l.seq == t.seq && l.timer == Some(t.when) => {
                l.timer = None;
                l.phase
            }
            _ => return, // completed first
        };
        st.armed_timers -= 1;
        match phase {
            Phase::Timer => {
                st.retire(t.ud);
                self.post(t.ud, -libc::ETIME, 0);
            }
            Phase::Queued => {
                if let Some(live) = st.retire(t.ud) {
                    self.post_done(t.ud, -libc::ECANCELED, 0, live.link, -libc::ETIME);
                }
            }
            Phase::Running => {
                // In a system call that cannot be interrupted: it completes normally.
                if let Some(l) = st.jobs.get_mut(&t.ud).and_then(|l| l.link.take()) {
                    self.post(l, -libc::EALREADY, 0);
                }
            }
            Phase::Blocked(wake) => {
                if let Some(l) = st.jobs.get_mut(&t.ud) {
                    l.cancel.get_or_insert(Why::Deadline);
                }
                efd_write(wake);
            }
        }
    }

    /// Before a stream thread waits: `Err` if the job was cancelled, the backend is shut
    /// down, or (after its first wait) its deadline has passed; else mark it blocked on
    /// `wake` and return its deadline and whether a multishot poll may post again.
    fn block(
        &self,
        job: &Job,
        wake: RawFd,
        first: bool,
    ) -> std::result::Result<(Option<Instant>, bool), Why> {
        let mut st = lock(&self.st);
        // The drop wakes only the jobs blocked when it sets `shutdown` (both under this
        // lock); one between two waits then (a multishot poll re-armed, a transfer that
        // found nothing) must not wait again: nobody is left to wake it.
        if st.shutdown {
            return Err(Why::Cancel);
        }
        let Some(live) = st.jobs.get_mut(&job.ud) else {
            return Err(Why::Cancel);
        };
        if let Some(why) = live.cancel {
            return Err(why);
        }
        if !first && live.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Why::Deadline);
        }
        live.phase = Phase::Blocked(wake);
        Ok((live.deadline, live.rearmed))
    }

    /// After a stream thread's wait: back to `Running`; why it must stop, if it must.
    fn unblock(&self, job: &Job) -> Option<Why> {
        let mut st = lock(&self.st);
        let live = st.jobs.get_mut(&job.ud)?;
        live.phase = Phase::Running;
        live.cancel
    }

    /// An I/O worker's job.
    fn run_file(&self, job: &Job) -> MutexGuard<'_, State> {
        self.finish(job, execute(job), -libc::ECANCELED)
    }

    /// A stream thread's job.
    fn run_stream(&self, job: &Job, wake: RawFd) -> MutexGuard<'_, State> {
        match job.work {
            // (Registered descriptors are classified once, at registration: no `fstat` per
            // job for them.)
            Work::Rw(rw) if job.unknown && seekable(rw.fd) => {
                // A file at its position (`write_cursor`) the ring did not describe:
                // always ready, never polled.
                let r = rw.call(-1, rw.flags);
                self.finish(job, r, -libc::ECANCELED)
            }
            Work::Rw(rw) => self.stream_rw(job, rw, wake),
            Work::Poll { fd, events, multi } => self.stream_poll(job, fd, events, multi, wake),
            Work::Fsync { .. } => self.run_file(job),
        }
    }

    fn stream_rw(&self, job: &Job, rw: Rw, wake: RawFd) -> MutexGuard<'_, State> {
        let events = if rw.write {
            libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let mut first = true;
        let mut nowait = true;
        // The descriptor to call when `RWF_NOWAIT` is refused (see below).
        let mut twin: Option<OwnedFd> = None;
        let mut misses = 0u32;
        loop {
            let deadline = match self.block(job, wake, first) {
                Ok((d, _)) => d,
                Err(why) => return self.finish_cancelled(job, why),
            };
            // A deadline already passed still gets one look (`poll` with no wait): a
            // zero deadline takes what is there, as io_uring's zero linked timeout does.
            let ready = wait_ready(rw.fd, events, wake, deadline);
            first = false;
            if let Some(why) = self.unblock(job) {
                return self.finish_cancelled(job, why);
            }
            match ready {
                Err(e) => return self.finish(job, -e, -libc::ECANCELED),
                Ok(0) => continue,
                Ok(_) => {}
            }
            let mut r = if nowait {
                rw.call(-1, rw.flags | libc::RWF_NOWAIT)
            } else {
                rw.call_on(twin.as_ref().map_or(rw.fd, |t| t.as_raw_fd()), -1, rw.flags)
            };
            if r == -libc::EOPNOTSUPP && nowait {
                // Not a file that transfers without blocking on request (a tty, a FIFO
                // opened by path). A plain call could block for good — another reader took
                // the data `poll` saw, a write wants more room than there is — out of reach
                // of cancel, deadline and drop. So call a non-blocking twin: the same FIFO
                // or tty opened again, with `O_NONBLOCK` on its own open file description
                // (the caller's descriptor is untouched); it answers `EAGAIN` instead.
                // Where there is none (a pty master: opening it again makes a new pty), the
                // plain call it is.
                nowait = false;
                twin = nonblocking_twin(rw.fd);
                r = rw.call_on(twin.as_ref().map_or(rw.fd, |t| t.as_raw_fd()), -1, rw.flags);
            }
            if r == -libc::EAGAIN {
                // Someone else took the data (or the room): wait again.
                misses += 1;
                if misses > SPURIOUS {
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            return self.finish(job, r, -libc::ECANCELED);
        }
    }

    fn stream_poll(
        &self,
        job: &Job,
        fd: RawFd,
        events: i16,
        multi: bool,
        wake: RawFd,
    ) -> MutexGuard<'_, State> {
        let mut first = true;
        loop {
            let (deadline, armed) = match self.block(job, wake, first) {
                Ok(b) => b,
                Err(why) => return self.finish_cancelled(job, why),
            };
            // A multishot poll whose last completion the ring has not routed yet waits
            // for that (its own eventfd) rather than post again for the same readiness.
            let ready = wait_ready(if armed { fd } else { -1 }, events, wake, deadline);
            first = false;
            if let Some(why) = self.unblock(job) {
                return self.finish_cancelled(job, why);
            }
            let rev = match ready {
                Err(e) => return self.finish(job, -e, -libc::ECANCELED),
                Ok(0) => continue,
                Ok(rev) => i32::from(rev as u16),
            };
            if !multi {
                return self.finish(job, rev, -libc::ECANCELED);
            }
            let mut st = lock(&self.st);
            if let Some(live) = st.jobs.get_mut(&job.ud) {
                live.rearmed = false;
                self.post(job.ud, rev, CQE_F_MORE);
            }
        }
    }

    /// A thread could not be started: give its place back; if no thread of its kind is
    /// left to run the queue, fail what waits there with `-EAGAIN`.
    fn spawn_failed(&self, st: &mut State, stream: bool) {
        let (total, queue) = if stream {
            st.starting_streamers -= 1;
            st.streamers -= 1;
            (st.streamers, &mut st.stream_q)
        } else {
            st.starting_workers -= 1;
            st.workers -= 1;
            (st.workers, &mut st.file_q)
        };
        if total > 0 {
            return;
        }
        let jobs: Vec<Job> = queue.drain(..).collect();
        for job in jobs {
            if st.jobs.get(&job.ud).is_some_and(|l| l.seq == job.seq) {
                if let Some(live) = st.retire(job.ud) {
                    self.post_done(job.ud, -libc::EAGAIN, 0, live.link, -libc::ECANCELED);
                }
            }
        }
    }

    /// Start the threads asked for (the manager, without the state lock).
    fn spawn(self: &Arc<Self>, workers: usize, streamers: usize) {
        let builder = |name: &str| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(STACK)
        };
        for _ in 0..workers {
            let sh = self.clone();
            if builder("iocomplete-io")
                .spawn(move || sh.file_worker())
                .is_err()
            {
                self.spawn_failed(&mut lock(&self.st), false);
            }
        }
        for _ in 0..streamers {
            let sh = self.clone();
            let started = eventfd().and_then(|wake| {
                builder("iocomplete-stream")
                    .spawn(move || sh.stream_worker(wake))
                    .map_err(|e| Error::from_io(&e))
            });
            if started.is_err() {
                self.spawn_failed(&mut lock(&self.st), true);
            }
        }
    }

    fn file_worker(&self) {
        let mut st = lock(&self.st);
        st.starting_workers -= 1;
        loop {
            if st.shutdown {
                st.workers -= 1;
                return;
            }
            if let Some(job) = st.file_q.pop_front() {
                if !st.claim(&job) {
                    continue; // cancelled or timed out while queued
                }
                drop(st);
                st = self.run_file(&job);
                continue;
            }
            st.idle_workers += 1;
            st = self
                .file_cv
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            st.idle_workers -= 1;
        }
    }

    fn stream_worker(&self, wake: OwnedFd) {
        let mut st = lock(&self.st);
        st.starting_streamers -= 1;
        loop {
            if st.shutdown {
                st.streamers -= 1;
                return;
            }
            if let Some(job) = st.stream_q.pop_front() {
                if !st.claim(&job) {
                    continue;
                }
                drop(st);
                // Wake-ups meant for this thread's previous job were all written while
                // that job was blocked (under the lock), so they are in the counter now.
                efd_clear(wake.as_raw_fd());
                st = self.run_stream(&job, wake.as_raw_fd());
                continue;
            }
            st.idle_streamers += 1;
            let (g, t) = self
                .stream_cv
                .wait_timeout(st, STREAM_IDLE)
                .unwrap_or_else(PoisonError::into_inner);
            st = g;
            st.idle_streamers -= 1;
            if t.timed_out() && st.stream_q.is_empty() {
                st.streamers -= 1;
                return;
            }
        }
    }

    /// The manager thread: starts the threads the others ask for (so the ring's thread
    /// never allocates for one) and fires timers.
    pub(super) fn manager(self: &Arc<Self>) {
        let mut st = lock(&self.st);
        loop {
            if st.shutdown {
                return;
            }
            if st.spawn_workers + st.spawn_streamers > 0 {
                let workers = std::mem::take(&mut st.spawn_workers);
                let streamers = std::mem::take(&mut st.spawn_streamers);
                drop(st);
                self.spawn(workers, streamers);
                st = lock(&self.st);
                continue;
            }
            let now = Instant::now();
            let next = st.timers.peek().map(|Reverse(t)| t.when);
            st = match next {
                Some(when) if when <= now => {
                    if let Some(Reverse(t)) = st.timers.pop() {
                        self.fire(&mut st, t);
                    }
                    st
                }
                Some(when) => {
                    self.manager_cv
                        .wait_timeout(st, when - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .manager_cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}
