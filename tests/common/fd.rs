//! Descriptors for stream tests: pipes, socket pairs, named FIFOs, raw-mode ptys.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// A pipe: (read end, write end), both blocking and close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A connected pair of Unix stream sockets.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (a.into(), b.into())
}

/// Make a named FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A named FIFO called `fifo` in `dir`; its path.
pub fn fifo_in(dir: &Path) -> PathBuf {
    let path = dir.join("fifo");
    mkfifo(&path);
    path
}

/// A pty pair (master, slave) in the default mode (canonical, echoing).
pub fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; null name, termios and winsize are allowed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned these descriptors; each is owned once.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// A pty pair (master, slave) with the slave in raw mode (`cfmakeraw`: every byte value
/// passes unchanged, no echo, no output processing).
pub fn raw_pty() -> (OwnedFd, OwnedFd) {
    let (master, slave) = pty();
    // SAFETY: `termios` is plain old data, filled by tcgetattr from a valid tty before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    (master, slave)
}

/// Set `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this test owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
    }
}

/// Write all of `bytes` to `fd` (a raw `write(2)` loop: no allocation, no buffering).
pub fn write_fd(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer of `bytes.len()` bytes and a descriptor this test owns.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert!(
            n > 0,
            "write to fd {fd}: {}",
            std::io::Error::last_os_error()
        );
        bytes = &bytes[n as usize..];
    }
}

/// `len` bytes of a deterministic stream (the tests' PRNG seeded with `seed`).
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = super::rng(seed);
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

/// Write `data` to `tx` on a thread, in bursts of 1..=`max_burst` bytes with pauses of
/// 0..`max_pause_us` µs (chosen by the PRNG seeded with `seed`); the thread returns the
/// writer (to keep it open) and the number of bursts.
pub fn trickle(
    tx: std::fs::File,
    data: Vec<u8>,
    seed: u64,
    max_burst: u64,
    max_pause_us: u64,
) -> std::thread::JoinHandle<(std::fs::File, u64)> {
    std::thread::spawn(move || {
        let mut rng = super::rng(seed);
        let mut tx = tx;
        let mut at = 0;
        let mut bursts = 0;
        while at < data.len() {
            let n = (1 + rng.u64(..max_burst) as usize).min(data.len() - at);
            std::io::Write::write_all(&mut tx, &data[at..at + n]).unwrap();
            at += n;
            bursts += 1;
            std::thread::sleep(std::time::Duration::from_micros(rng.u64(..max_pause_us)));
        }
        (tx, bursts)
    })
}

/// Write `data` to `fd` on a thread in uneven pieces, pausing after every `pause_every`
/// pieces, then close it.
pub fn slow_writer(fd: OwnedFd, data: Vec<u8>, pause_every: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut at = 0;
        let mut k = 0usize;
        while at < data.len() {
            let n = (1 + (k * 7919) % 9000).min(data.len() - at);
            std::io::Write::write_all(&mut f, &data[at..at + n]).unwrap();
            at += n;
            k += 1;
            if k % pause_every == 0 {
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
        }
    })
}

/// Clear `O_NONBLOCK` on `fd`.
pub fn set_blocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this test owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK), 0);
    }
}
