//! The job table: live operations, the queues and timers, and the completion queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rustc_hash::FxHashMap as HashMap;

use super::sqe::Work;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned lock still holds a consistent
    // state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A job in a queue.
pub(super) struct Job {
    pub(super) ud: u64,
    pub(super) seq: u64,
    pub(super) work: Work,
    /// The ring did not describe the descriptor (no `FdClass`): a stream thread checks
    /// whether it is a file after all (see `run_stream`).
    pub(super) unknown: bool,
}

// SAFETY: a job's pointers name memory the ring parks for the operation until its
// completion is routed (see `Rw::call`); only the one thread that claims the job uses
// them, and it posts the completion after its last use.
unsafe impl Send for Job {}

/// Why an operation stops waiting.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Cancel,
    Deadline,
}

/// Where a live operation is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// In a queue, not started.
    Queued,
    /// In a system call (or between two).
    Running,
    /// Waiting in `poll` on a stream thread, woken through this eventfd.
    Blocked(RawFd),
    /// A `TIMEOUT`, waiting for the manager thread.
    Timer,
}

/// A live operation, by `user_data`.
pub(super) struct Live {
    pub(super) seq: u64,
    pub(super) phase: Phase,
    pub(super) cancel: Option<Why>,
    pub(super) deadline: Option<Instant>,
    /// When its entry in `State::timers` fires, while one is armed.
    pub(super) timer: Option<Instant>,
    /// The `user_data` of its linked timeout, until that has completed.
    pub(super) link: Option<u64>,
    pub(super) fd: Option<RawFd>,
    pub(super) stream: bool,
    /// A multishot poll may post again (the ring routed its last completion).
    pub(super) rearmed: bool,
}

/// A timer: `TIMEOUT`s and the deadlines of jobs waiting for an I/O worker. Entries of
/// operations that completed first stay in the heap until they come up or the heap is
/// compacted (no allocation per timer once the heap has grown).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerEntry {
    pub(super) when: Instant,
    pub(super) seq: u64,
    pub(super) ud: u64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) jobs: HashMap<u64, Live>,
    pub(super) file_q: VecDeque<Job>,
    pub(super) stream_q: VecDeque<Job>,
    pub(super) timers: BinaryHeap<Reverse<TimerEntry>>,
    /// Entries of `timers` whose operation still waits for them.
    pub(super) armed_timers: usize,
    /// Live jobs per descriptor.
    pub(super) fd_users: HashMap<RawFd, u32>,
    /// Descriptors the ring closed while jobs still used them.
    pub(super) deferred: Vec<OwnedFd>,
    pub(super) seq: u64,
    pub(super) workers: usize,
    pub(super) idle_workers: usize,
    pub(super) starting_workers: usize,
    pub(super) streamers: usize,
    pub(super) idle_streamers: usize,
    pub(super) starting_streamers: usize,
    /// Threads the manager is asked to start.
    pub(super) spawn_workers: usize,
    pub(super) spawn_streamers: usize,
    pub(super) shutdown: bool,
}

impl State {
    /// Remove a live job (its timer, its hold on its descriptor): it completes now.
    pub(super) fn retire(&mut self, ud: u64) -> Option<Live> {
        let live = self.jobs.remove(&ud)?;
        if live.timer.is_some() {
            self.armed_timers -= 1;
        }
        if let Some(fd) = live.fd {
            if let Some(n) = self.fd_users.get_mut(&fd) {
                *n -= 1;
                if *n == 0 {
                    self.fd_users.remove(&fd);
                    if let Some(i) = self.deferred.iter().position(|f| f.as_raw_fd() == fd) {
                        // Closed now: the last job using it is done.
                        drop(self.deferred.swap_remove(i));
                    }
                }
            }
        }
        Some(live)
    }

    /// Move a queued job to `Running`, if it is still that job and still queued.
    pub(super) fn claim(&mut self, job: &Job) -> bool {
        match self.jobs.get_mut(&job.ud) {
            Some(l) if l.seq == job.seq && l.phase == Phase::Queued => {
                l.phase = Phase::Running;
                true
            }
            _ => false,
        }
    }

    /// Arm a timer for job `ud`.
    pub(super) fn arm_timer(&mut self, when: Instant, seq: u64, ud: u64) {
        // Entries of completed operations left behind: dropped in place once they
        // outnumber the armed ones (amortised; `retain` does not allocate).
        if self.timers.len() > 2 * self.armed_timers + 64 {
            let jobs = &self.jobs;
            self.timers.retain(|Reverse(t)| {
                jobs.get(&t.ud)
                    .is_some_and(|l| l.seq == t.seq && l.timer == Some(t.when))
            });
        }
        self.timers.push(Reverse(TimerEntry { when, seq, ud }));
        self.armed_timers += 1;
    }

    /// One more thread for the queue just pushed to, if those there cannot take it:
    /// counted now, started by the manager.
    pub(super) fn grow(&mut self, stream: bool, max_workers: usize) -> bool {
        if stream {
            if self.stream_q.len() <= self.idle_streamers + self.starting_streamers {
                return false;
            }
            self.streamers += 1;
            self.starting_streamers += 1;
            self.spawn_streamers += 1;
        } else {
            if self.file_q.len() <= self.idle_workers + self.starting_workers
                || self.workers >= max_workers
            {
                return false;
            }
            self.workers += 1;
            self.starting_workers += 1;
            self.spawn_workers += 1;
        }
        true
    }
}

/// Completions waiting for the ring.
pub(super) struct Cq {
    pub(super) items: VecDeque<(u64, i32, u32)>,
    /// The eventfd holds a count (set on the first completion after a drain).
    pub(super) signalled: bool,
    /// The ring waits for this many completions (0: it does not wait).
    pub(super) want: usize,
}
