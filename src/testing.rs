//! Helpers shared by the unit tests of several modules (test builds only).

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{BufferPool, Ring};

/// A pool of `slots` slots of 4096 bytes.
pub(crate) fn pool(slots: usize) -> BufferPool {
    BufferPool::builder()
        .slots(slots)
        .slot_len(4096)
        .build()
        .unwrap()
}

/// A non-blocking pipe: (read end, write end). The read end never gets data while the
/// write end lives and nothing is written.
pub(crate) fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: pipe2 succeeded: both are open descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Drive `ring` until `done` holds, failing with `what` after 10 s rather than hanging.
pub(crate) fn run_until(ring: &mut Ring, what: &str, mut done: impl FnMut(&mut Ring) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done(ring) {
        assert!(Instant::now() < until, "{what}");
        ring.run_once(Some(Duration::from_millis(50))).unwrap();
    }
}
