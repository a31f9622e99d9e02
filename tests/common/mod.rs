//! Shared test helpers: verify-mode block patterns, loop devices, teardown invariants, a
//! fault-injecting FUSE filesystem, and child processes for tests that must change
//! process-wide state (seccomp filters, capabilities, rlimits).
#![allow(dead_code, unreachable_pub)]

/// The value of an `Option` from a helper that skips (it printed why), or return from the
/// test: `let dev = or_skip!(LoopDev::new(size, None));`.
#[allow(unused_macros)]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use or_skip;

pub mod alloc;
pub mod bin;
pub mod bounds;
pub mod drivers;
pub mod fd;
pub mod fuse;
pub mod maps;
pub mod rings;

mod skip;
pub use skip::skip;

pub mod verify {
    //! Blocks that carry their own identity, like fio's `verify=crc32c`: each block starts
    //! with a 24-byte header (magic, offset, seed, crc32c of the rest) followed by bytes
    //! generated from (seed, offset). A block read from the wrong place, a stale block, a
    //! torn block or a flipped bit all fail `check_block`.

    pub const HDR: usize = 24;
    const MAGIC: u32 = 0x10C0_4B1C;

    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fill `block` (one whole block, at file offset `offset`) with its verify pattern.
    pub fn fill_block(block: &mut [u8], offset: u64, seed: u64) {
        assert!(block.len() > HDR);
        let mut s = splitmix(seed ^ offset.rotate_left(17));
        for chunk in block[HDR..].chunks_mut(8) {
            s = splitmix(s);
            let b = s.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let crc = crc32c::crc32c(&block[HDR..]);
        block[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        block[4..8].copy_from_slice(&crc.to_le_bytes());
        block[8..16].copy_from_slice(&offset.to_le_bytes());
        block[16..24].copy_from_slice(&seed.to_le_bytes());
    }

    /// Check one whole block read from `offset`.
    pub fn check_block(block: &[u8], offset: u64, seed: u64) -> Result<(), String> {
        if block.len() <= HDR {
            return Err(format!("block at {offset} too short: {}", block.len()));
        }
        let magic = u32::from_le_bytes(block[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(block[4..8].try_into().unwrap());
        let off = u64::from_le_bytes(block[8..16].try_into().unwrap());
        let sd = u64::from_le_bytes(block[16..24].try_into().unwrap());
        if magic != MAGIC {
            return Err(format!("block at {offset}: bad magic {magic:#x}"));
        }
        if off != offset {
            return Err(format!("block at {offset}: header says offset {off}"));
        }
        if sd != seed {
            return Err(format!(
                "block at {offset}: header says seed {sd}, want {seed}"
            ));
        }
        let got = crc32c::crc32c(&block[HDR..]);
        if got != crc {
            return Err(format!("block at {offset}: crc {got:#x} != {crc:#x}"));
        }
        Ok(())
    }

    /// The expected bytes of `[start, start+len)` of a file made of `bs`-byte blocks.
    pub fn expected(bs: usize, seed: u64, start: u64, len: usize) -> Vec<u8> {
        let first = start / bs as u64;
        let last = (start + len as u64).div_ceil(bs as u64);
        let mut out = Vec::with_capacity(((last - first) as usize) * bs);
        let mut block = vec![0u8; bs];
        for b in first..last {
            fill_block(&mut block, b * bs as u64, seed);
            out.extend_from_slice(&block);
        }
        let skip = (start - first * bs as u64) as usize;
        out[skip..skip + len].to_vec()
    }

    /// Check a range read from a file written with `bs`-byte verify blocks. Whole blocks
    /// are checked by header and crc; partial ones byte for byte against `expected`.
    pub fn check_range(data: &[u8], bs: usize, seed: u64, start: u64) -> Result<(), String> {
        let mut pos = 0usize;
        while pos < data.len() {
            let off = start + pos as u64;
            let in_block = (off % bs as u64) as usize;
            let n = (bs - in_block).min(data.len() - pos);
            if in_block == 0 && n == bs {
                check_block(&data[pos..pos + n], off, seed)?;
            } else if data[pos..pos + n] != expected(bs, seed, off, n)[..] {
                return Err(format!("partial block at {off} (+{n}) differs"));
            }
            pos += n;
        }
        Ok(())
    }

    /// Write a verify file of `size` bytes (a whole number of blocks, or a tail).
    pub fn make_file(path: &std::path::Path, size: u64, bs: usize, seed: u64) {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap();
        let mut block = vec![0u8; bs];
        let mut off = 0u64;
        while off < size {
            fill_block(&mut block, off, seed);
            let n = (size - off).min(bs as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            off += n as u64;
        }
        f.sync_all().unwrap();
    }

    /// A verify file `name` in `dir`: `size` bytes of 4 KiB blocks of `seed`; its path.
    pub fn file_in(dir: &std::path::Path, name: &str, size: u64, seed: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        make_file(&p, size, 4096, seed);
        p
    }

    /// Check that `path` holds at least `len` bytes and that they are 4 KiB verify blocks
    /// of `seed` from offset 0.
    pub fn check_file_prefix(path: &std::path::Path, len: u64, seed: u64) {
        let data = std::fs::read(path).unwrap();
        assert!(
            data.len() as u64 >= len,
            "{} has {} bytes",
            path.display(),
            data.len()
        );
        check_range(&data[..len as usize], 4096, seed, 0).unwrap();
    }

    /// A verify file of `size` bytes of 4 KiB blocks of `seed` in a new directory on disk
    /// (removed when the returned guard drops); its path.
    pub fn disk_file(size: u64, seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, path) = super::disk_path("f");
        make_file(&path, size, 4096, seed);
        (dir, path)
    }

    #[test]
    fn checker_catches_corruption() {
        let mut b = vec![0u8; 512];
        fill_block(&mut b, 4096, 7);
        check_block(&b, 4096, 7).unwrap();
        assert!(check_block(&b, 4608, 7).is_err(), "wrong offset not caught");
        assert!(check_block(&b, 4096, 8).is_err(), "wrong seed not caught");
        for i in [0, 5, 9, 17, 30, 511] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(check_block(&c, 4096, 7).is_err(), "flip at {i} not caught");
        }
        let e = expected(512, 7, 4096 + 100, 50);
        assert_eq!(&e[..], &b[100..150]);
    }
}

/// A loop block device over a file, with direct I/O on; detached on drop.
pub struct LoopDev {
    pub path: String,
    _backing: Option<tempfile::TempDir>,
}

impl LoopDev {
    /// A loop device over a new file of `size` bytes, zeros or (`fill`: block size, seed)
    /// verify blocks. `None` (with the reason printed) only where loop devices are truly
    /// unavailable.
    pub fn new(size: u64, fill: Option<(usize, u64)>) -> Option<LoopDev> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let file = dir.path().join("backing.img");
        match fill {
            Some((bs, seed)) => verify::make_file(&file, size, bs, seed),
            None => std::fs::File::create(&file).unwrap().set_len(size).unwrap(),
        }
        let mut dev = LoopDev::attach(&file)?;
        dev._backing = Some(dir);
        Some(dev)
    }

    /// Two loop devices of `size` bytes: 4 KiB verify blocks of `seed`, and zeros.
    pub fn pair(size: u64, seed: u64) -> Option<(LoopDev, LoopDev)> {
        Some((
            LoopDev::new(size, Some((4096, seed)))?,
            LoopDev::new(size, None)?,
        ))
    }

    /// A loop device over an existing file (e.g. a FUSE file from [`fuse`]), with direct
    /// I/O on when the backing file allows it. `None` (with the reason printed) only where
    /// loop devices are truly unavailable.
    pub fn attach(file: &std::path::Path) -> Option<LoopDev> {
        if unsafe_geteuid() != 0 {
            skip("loop device tests need root");
            return None;
        }
        if !std::path::Path::new("/dev/loop-control").exists() {
            skip("/dev/loop-control is absent");
            return None;
        }
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .expect("losetup not installed (util-linux)");
        assert!(
            out.status.success(),
            "losetup {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Some(LoopDev {
            path,
            _backing: None,
        })
    }

    /// The device opened with `O_DIRECT`, for reading, and writing when `write`.
    pub fn open(&self, write: bool) -> std::fs::File {
        open(std::path::Path::new(&self.path), write, true)
    }

    /// Whether the kernel runs this loop device with direct I/O to its backing file.
    pub fn direct_io(&self) -> bool {
        let name = self.path.trim_start_matches("/dev/");
        std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.path])
            .status();
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Teardown invariants: every operation completed exactly once, nothing in flight, every
/// slot back in its pool.
pub fn check_teardown(ring: &iocomplete::Ring, pools: &[&iocomplete::BufferPool]) {
    let s = ring.stats();
    assert_eq!(
        s.submitted, s.completed,
        "operations not completed exactly once: {s:?}"
    );
    assert_eq!(ring.in_flight(), 0, "operations still in flight");
    assert_eq!(
        ring.pending(),
        0,
        "completions left uncollected in the op table"
    );
    assert_eq!(s.stale_cqes, 0, "stale CQEs seen");
    for p in pools {
        let st = p.stats();
        assert_eq!(st.free, st.total, "pool slots leaked: {st:?}");
        assert_eq!(st.in_flight, 0, "pool slots still in flight: {st:?}");
    }
}

/// A pool of `slots` slots of `len` bytes, no header room.
pub fn pool(slots: usize, len: usize) -> iocomplete::BufferPool {
    pool_hdr(slots, len, 0)
}

/// A pool of `slots` slots of `len` bytes with `header` bytes of header room each.
pub fn pool_hdr(slots: usize, len: usize, header: usize) -> iocomplete::BufferPool {
    iocomplete::BufferPool::builder()
        .slots(slots)
        .slot_len(len)
        .header_len(header)
        .build()
        .unwrap()
}

/// Open `path` for reading, and writing (created if missing) when `write`, with
/// `O_DIRECT` when `direct`.
pub fn open(path: &std::path::Path, write: bool, direct: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).unwrap()
}

/// A new ring with `pool` registered and `fd` registered as its target.
pub fn ring_with(
    pool: &iocomplete::BufferPool,
    fd: impl Into<std::os::fd::OwnedFd>,
) -> (iocomplete::Ring, iocomplete::Target) {
    // Workers for the thread-pool backend (ignored by io_uring): the device tests hold up
    // to 32 reads at the server at once, as io_uring's own workers would take them.
    let mut ring = iocomplete::Ring::builder().threads(64).build().unwrap();
    ring.register_pool(pool);
    let t = ring.register(fd).unwrap();
    (ring, t)
}

/// `path` opened `O_PATH`: a descriptor that allows no I/O.
pub fn open_o_path(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap()
}

/// Whether `c` failed with `InvalidInput` (refused as bad input).
pub fn invalid_input(c: &iocomplete::Completion) -> bool {
    c.error()
        .is_some_and(|e| matches!(e.kind(), iocomplete::ErrorKind::InvalidInput { .. }))
}

/// Submit reads of the 4 KiB blocks `blocks` of `t` (each tagged with its block number,
/// buffers from `pool`); their tickets.
pub fn read_tickets(
    ring: &mut iocomplete::Ring,
    t: iocomplete::Target,
    pool: &iocomplete::BufferPool,
    blocks: std::ops::Range<u64>,
) -> Vec<iocomplete::Ticket> {
    let read = |b: u64| iocomplete::Op::read_len(t, b * 4096, pool.try_get().unwrap(), 4096);
    blocks
        .map(|b| ring.submit(read(b).tag(b)).ticket())
        .collect()
}

/// `Some(())` when `present`, else `None` after a skip saying `missing`: a kernel feature a
/// test needs (`or_skip!(needs(..))`).
pub fn needs(present: bool, missing: &str) -> Option<()> {
    if !present {
        skip(missing);
    }
    present.then_some(())
}

/// `Some(())` when `ring` runs on io_uring, else `None` after a skip saying the test needs
/// `what` of io_uring. In a run that forces the thread-pool backend
/// (`IOCOMPLETE_BACKEND=threads`, as CI's second pass does) or on a host with
/// `kernel.io_uring_disabled` set (CI's third pass) that is the point of the run,
/// not a broken environment: the skip does not panic under `CI=true`; it is appended to
/// the file `IOCOMPLETE_SKIP_LOG` names (CI prints them). A threads ring chosen because
/// io_uring is missing is an ordinary skip.
pub fn needs_uring(ring: &iocomplete::Ring, what: &str) -> Option<()> {
    if ring.backend() == iocomplete::BackendKind::Uring {
        return Some(());
    }
    let reason = format!("needs io_uring: {what}");
    if uring_absent_on_purpose() {
        eprintln!("SKIP (threads backend): {reason}");
        if let Ok(path) = std::env::var("IOCOMPLETE_SKIP_LOG") {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(f, "{test}: {reason}").unwrap();
        }
        return None;
    }
    skip(&reason);
    None
}

/// Whether this run goes without io_uring on purpose: the thread-pool backend forced
/// (`IOCOMPLETE_BACKEND=threads`), or `kernel.io_uring_disabled` set (CI's third pass sets it
/// system-wide, then restores it).
pub fn uring_absent_on_purpose() -> bool {
    std::env::var("IOCOMPLETE_BACKEND").is_ok_and(|v| v == "threads")
        || std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .is_ok_and(|v| v.trim() != "0")
}

/// [`needs`] multishot reads of `ring`'s kernel.
pub fn needs_multishot(ring: &iocomplete::Ring) -> Option<()> {
    needs_uring(ring, "multishot reads")?;
    needs(
        ring.capabilities().read_multishot,
        "kernel lacks IORING_OP_READ_MULTISHOT",
    )
}

/// A new ring whose kernel has multishot reads ([`needs_multishot`]).
pub fn multishot_ring() -> Option<iocomplete::Ring> {
    let ring = iocomplete::Ring::new().unwrap();
    needs_multishot(&ring)?;
    Some(ring)
}

/// The one PRNG of the tests: `fastrand`'s, seeded, so every run makes the same choices.
pub fn rng(seed: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed)
}

/// A directory on a disk filesystem (O_DIRECT works there, unlike some tmpfs setups).
pub fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A path `name` in a new directory on disk (removed when the returned guard drops).
pub fn disk_path(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = disk_dir();
    let path = dir.path().join(name);
    (dir, path)
}

/// Close `targets`, then check the teardown invariants ([`check_teardown`]).
pub fn close_and_check(
    ring: &mut iocomplete::Ring,
    targets: &[iocomplete::Target],
    pools: &[&iocomplete::BufferPool],
) {
    for &t in targets {
        ring.close(t).unwrap();
    }
    check_teardown(ring, pools);
}

/// A minimal executor for one future: parks the thread until woken.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    /// Wakes the blocked thread.
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    loop {
        match f.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Child processes: re-run this test binary on one test, for work that changes
/// process-wide or thread-wide state the other tests must not see (seccomp filters,
/// dropped capabilities, rlimits, descriptors closed behind the ring's back).
pub mod child {
    use std::process::{Command, Output, Stdio};

    /// Set in the child to the role it plays.
    pub const ROLE_ENV: &str = "IOCOMPLETE_TEST_CHILD_ROLE";

    /// The role this process was started for, if it is a child.
    pub fn role() -> Option<String> {
        std::env::var(ROLE_ENV).ok()
    }

    /// Run test `entry` of this binary alone, in a child process playing `role`; panics
    /// unless it passes and printed `CHILD-OK <role>` (proof that the role really ran).
    pub fn run(entry: &str, role: &str) -> Output {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([entry, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(&format!("CHILD-OK {role}")),
            "child {role} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        out
    }

    /// Called by the child when its role passed.
    pub fn ok(role: &str) {
        println!("CHILD-OK {role}");
    }
}
