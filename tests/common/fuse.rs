//! A fault-injecting FUSE filesystem, mounted with mount(2) as root (the `fuser` crate's
//! pure-Rust path: no libfuse, no fusermount).
//!
//! It serves one regular file, [`FILE_NAME`], held in memory and filled with verify blocks
//! (see [`super::verify`]). The file is opened with `FOPEN_DIRECT_IO`, so every read and
//! write reaches the server as one request (no page cache in between), and faults land
//! exactly where they are armed, at any time, through the mount's [`Control`]:
//!
//! * `EIO` for every request touching chosen byte ranges ([`Control::fail_range`]), or at
//!   random with a seeded generator ([`Control::random_eio`]);
//! * replies delayed by a random time in a range ([`Control::delay`]), or held until
//!   released ([`Control::hold`], [`Control::release`]) — a slow or stuck device;
//! * the device vanishing mid-read: the connection aborted by a forced unmount
//!   ([`FuseMount::abort`], what the kernel does when a server dies), or the server
//!   process really killed ([`ChildFuse::kill`]);
//! * silent corruption: a byte of the backing store flipped ([`Control::corrupt`]);
//! * the file truncated or written behind the reader's back (plain `set_len`/writes on the
//!   mount reach the same store).
//!
//! A loop block device stacks on the file with [`super::LoopDev::attach`]. Guards tear
//! everything down in `Drop` — answering held requests, unmounting (forcing it if busy),
//! joining the server — so a failing test leaves nothing mounted and nothing hung.
//!
//! Reader, split and DMA fault tests use the same pieces: mount, arm faults, point the
//! driver at [`FuseMount::path`] (or a loop device on it), verify what comes back.

use std::ffi::{CString, OsStr};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

use super::verify;

/// Name of the served file, in the mount's root directory.
pub const FILE_NAME: &str = "data";
const FILE_INO: u64 = 2;
/// Held requests are answered after this long even if never released, so a failing test
/// cannot hang on a stuck server.
/// (Longer than a ring's 10 s drop grace period, which a test outlasts on purpose.)
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The served file: `size` bytes of `bs`-byte verify blocks made with `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// File size in bytes.
    pub size: u64,
    /// Verify block size.
    pub bs: usize,
    /// Verify seed.
    pub seed: u64,
}

impl FileSpec {
    /// A file of `size` bytes of `bs`-byte verify blocks made with `seed`.
    pub fn new(size: u64, bs: usize, seed: u64) -> FileSpec {
        FileSpec { size, bs, seed }
    }

    /// A file of `blocks` 4 KiB verify blocks of `seed`.
    pub fn blocks(blocks: u64, seed: u64) -> FileSpec {
        FileSpec::new(blocks * 4096, 4096, seed)
    }

    /// The file's initial content.
    pub fn content(&self) -> Vec<u8> {
        let mut data = vec![0u8; self.size as usize];
        let mut block = vec![0u8; self.bs];
        for (i, chunk) in data.chunks_mut(self.bs).enumerate() {
            verify::fill_block(&mut block, (i * self.bs) as u64, self.seed);
            let n = chunk.len();
            chunk.copy_from_slice(&block[..n]);
        }
        data
    }
}

/// Why FUSE tests cannot run here, if they cannot (printed by the tests that skip).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("FUSE fault tests mount with mount(2) and need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    None
}

/// Counters kept by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseStats {
    /// Read requests received.
    pub reads: u64,
    /// Read requests answered with data (possibly short).
    pub reads_ok: u64,
    /// Bytes returned by reads.
    pub read_bytes: u64,
    /// Write requests received.
    pub writes: u64,
    /// Requests failed with an injected `EIO`.
    pub eio_injected: u64,
    /// Requests whose reply was delayed.
    pub delayed: u64,
    /// Requests held until released.
    pub held: u64,
    /// Truncations (setattr with a size).
    pub truncates: u64,
    /// Most read requests ever outstanding at once at the server.
    pub max_outstanding: usize,
}

#[derive(Debug)]
struct Plan {
    eio: Vec<Range<u64>>,
    eio_writes: bool,
    random_eio_permille: u32,
    rng: fastrand::Rng,
    delay: (Duration, Duration),
    hold: Option<Range<u64>>,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            eio: Vec::new(),
            eio_writes: false,
            random_eio_permille: 0,
            rng: super::rng(0),
            delay: (Duration::ZERO, Duration::ZERO),
            hold: None,
        }
    }
}

fn overlaps(r: &Range<u64>, start: u64, len: u64) -> bool {
    let end = start.saturating_add(len.max(1));
    r.start < end && start < r.end
}

/// The live state of a mounted file: its bytes, the armed faults, the counters.
#[derive(Debug)]
pub struct Control {
    spec: FileSpec,
    data: RwLock<Vec<u8>>,
    plan: Mutex<Plan>,
    reads: AtomicU64,
    reads_ok: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    eio_injected: AtomicU64,
    delayed: AtomicU64,
    held: AtomicU64,
    truncates: AtomicU64,
    outstanding: AtomicUsize,
    max_outstanding: AtomicUsize,
    timer: Timer,
}

impl Control {
    fn new(spec: FileSpec) -> Arc<Control> {
        Arc::new(Control {
            spec,
            data: RwLock::new(spec.content()),
            plan: Mutex::new(Plan::default()),
            reads: AtomicU64::new(0),
            reads_ok: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            eio_injected: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            held: AtomicU64::new(0),
            truncates: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            max_outstanding: AtomicUsize::new(0),
            timer: Timer::start(),
        })
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file as created.
    pub fn spec(&self) -> FileSpec {
        self.spec
    }

    /// Fail every request touching `[start, start + len)` with `EIO` (reads; writes too
    /// after [`fail_writes`](Control::fail_writes)).
    pub fn fail_range(&self, start: u64, len: u64) {
        self.plan().eio.push(start..start + len);
    }

    /// Fail block `index` (of the spec's block size) with `EIO`.
    pub fn fail_block(&self, index: u64) {
        let bs = self.spec.bs as u64;
        self.fail_range(index * bs, bs);
    }

    /// Apply the `EIO` ranges to writes as well.
    pub fn fail_writes(&self, on: bool) {
        self.plan().eio_writes = on;
    }

    /// Fail each read with `EIO` with probability `permille`/1000 (seeded, repeatable for
    /// one request order).
    pub fn random_eio(&self, permille: u32, seed: u64) {
        let mut p = self.plan();
        p.random_eio_permille = permille;
        p.rng = super::rng(seed);
    }

    /// Disarm every fault, delay and hold (held requests are released).
    pub fn clear(&self) {
        *self.plan() = Plan::default();
        self.timer.release();
    }

    /// Delay each reply by a uniformly random time in `min..=max`.
    pub fn delay(&self, min: Duration, max: Duration) {
        self.plan().delay = (min, max.max(min));
    }

    /// Hold the replies to reads touching `range` until [`release`](Control::release)
    /// (or 30 s). `0..u64::MAX` holds everything: a stuck device.
    pub fn hold(&self, range: Range<u64>) {
        self.plan().hold = Some(range);
    }

    /// Stop holding, and answer every held request now.
    pub fn release(&self) {
        self.plan().hold = None;
        self.timer.release();
    }

    /// Flip bits of the byte at `offset` in the backing store (silent corruption).
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        d[offset as usize] ^= xor;
    }

    /// Current file size.
    pub fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Read requests received and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` read requests are outstanding at the server (they are
    /// really in flight). False on timeout.
    pub fn wait_outstanding(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.outstanding() < n {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The counters.
    pub fn stats(&self) -> FuseStats {
        FuseStats {
            reads: self.reads.load(Ordering::SeqCst),
            reads_ok: self.reads_ok.load(Ordering::SeqCst),
            read_bytes: self.read_bytes.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
            eio_injected: self.eio_injected.load(Ordering::SeqCst),
            delayed: self.delayed.load(Ordering::SeqCst),
            held: self.held.load(Ordering::SeqCst),
            truncates: self.truncates.load(Ordering::SeqCst),
            max_outstanding: self.max_outstanding.load(Ordering::SeqCst),
        }
    }

    fn attr(&self) -> FileAttr {
        let size = self.size();
        file_attr(INodeNo(FILE_INO), FileType::RegularFile, size, 0o644)
    }

    /// Decide a read's fate when it is answered (so a truncation or a fault armed while
    /// it waited applies to it, as on a device servicing its queue).
    fn answer_read(&self, offset: u64, size: u32, reply: ReplyData) {
        let fail = {
            let mut p = self.plan();
            let ranged = p.eio.iter().any(|r| overlaps(r, offset, u64::from(size)));
            let random = p.random_eio_permille > 0 && p.rng.u32(..1000) < p.random_eio_permille;
            ranged || random
        };
        if fail {
            self.eio_injected.fetch_add(1, Ordering::SeqCst);
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            reply.error(Errno::EIO);
            return;
        }
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = (offset as usize).min(d.len());
        let end = (start + size as usize).min(d.len());
        self.reads_ok.fetch_add(1, Ordering::SeqCst);
        self.read_bytes
            .fetch_add((end - start) as u64, Ordering::SeqCst);
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        reply.data(&d[start..end]);
    }
}

fn file_attr(ino: INodeNo, kind: FileType, size: u64, perm: u16) -> FileAttr {
    let t = SystemTime::now();
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        // SAFETY: getuid/getgid have no preconditions.
        uid: unsafe { libc::getuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getgid() },
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

// ---- delayed replies -------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

struct Pending {
    due: Instant,
    /// Held until released (or until this instant).
    held_until: Option<Instant>,
    job: Job,
}

#[derive(Default)]
struct TimerQueue {
    jobs: Vec<Pending>,
    stop: bool,
}

struct TimerShared {
    q: Mutex<TimerQueue>,
    cv: Condvar,
}

/// One thread answering delayed and held requests when they are due, so the FUSE session
/// thread never blocks and any number of requests can be in flight.
struct Timer {
    shared: Arc<TimerShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timer")
    }
}

impl Timer {
    fn start() -> Timer {
        let shared = Arc::new(TimerShared {
            q: Mutex::new(TimerQueue::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fuse-timer".into())
            .spawn(move || Timer::run(&s))
            .unwrap();
        Timer {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimerQueue> {
        self.shared.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self, due: Instant, held: bool, job: Job) {
        let mut q = self.lock();
        if q.stop {
            drop(q);
            job();
            return;
        }
        q.jobs.push(Pending {
            due,
            held_until: held.then(|| Instant::now() + HOLD_LIMIT),
            job,
        });
        self.shared.cv.notify_all();
    }

    fn release(&self) {
        let mut q = self.lock();
        for p in &mut q.jobs {
            p.held_until = None;
        }
        self.shared.cv.notify_all();
    }

    /// Answer everything still pending and stop the thread.
    fn stop(&self) {
        self.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn run(s: &TimerShared) {
        let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let stop = q.stop;
            let mut ready = Vec::new();
            let mut next: Option<Instant> = None;
            let mut i = 0;
            while i < q.jobs.len() {
                let wake = q.jobs[i].held_until.unwrap_or(q.jobs[i].due);
                if stop || wake <= now {
                    ready.push(q.jobs.swap_remove(i).job);
                } else {
                    next = Some(next.map_or(wake, |n| n.min(wake)));
                    i += 1;
                }
            }
            if !ready.is_empty() {
                drop(q);
                for job in ready {
                    job();
                }
                q = s.q.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if stop {
                return;
            }
            q = match next {
                Some(t) => {
                    s.cv.wait_timeout(q, t.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => s.cv.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

// ---- the filesystem ----------------------------------------------------------------------

struct FaultyFs {
    ctl: Arc<Control>,
    async_dio: bool,
}

const TTL: Duration = Duration::ZERO;

impl Filesystem for FaultyFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Asynchronous direct I/O, as libfuse servers negotiate by default: the kernel
        // sends an io_uring read as a background request and returns, so many reads are in
        // flight at once. Without it, FUSE ignores IOCB_NOWAIT and io_uring_enter blocks
        // in each read, one after the other (seen on Linux 6.18).
        if self.async_dio {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
            let _ = config.set_max_background(64);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name.as_bytes() == FILE_NAME.as_bytes() {
            reply.entry(&TTL, &self.ctl.attr(), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 => reply.attr(
                &TTL,
                &file_attr(INodeNo::ROOT, FileType::Directory, 0, 0o755),
            ),
            FILE_INO => reply.attr(&TTL, &self.ctl.attr()),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EACCES);
            return;
        }
        if let Some(size) = size {
            let mut d = self.ctl.data.write().unwrap_or_else(|e| e.into_inner());
            d.resize(size as usize, 0);
            self.ctl.truncates.fetch_add(1, Ordering::SeqCst);
        }
        reply.attr(&TTL, &self.ctl.attr());
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == FILE_INO {
            // Every read and write reaches the server: faults land where they are armed.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let ctl = &self.ctl;
        ctl.reads.fetch_add(1, Ordering::SeqCst);
        let now = ctl.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        ctl.max_outstanding.fetch_max(now, Ordering::SeqCst);
        let (delay, held) = {
            let mut p = ctl.plan();
            let (min, max) = p.delay;
            let span = (max - min).as_micros() as u64;
            let jitter = p.rng.u64(..=span);
            let held = p
                .hold
                .as_ref()
                .is_some_and(|r| overlaps(r, offset, u64::from(size)));
            (min + Duration::from_micros(jitter), held)
        };
        if delay.is_zero() && !held {
            ctl.answer_read(offset, size, reply);
            return;
        }
        if held {
            ctl.held.fetch_add(1, Ordering::SeqCst);
        } else {
            ctl.delayed.fetch_add(1, Ordering::SeqCst);
        }
        let c = ctl.clone();
        ctl.timer.schedule(
            Instant::now() + delay,
            held,
            Box::new(move || c.answer_read(offset, size, reply)),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        self.ctl.writes.fetch_add(1, Ordering::SeqCst);
        let fail = {
            let p = self.ctl.plan();
            p.eio_writes && p.eio.iter().any(|r| overlaps(r, offset, data.len() as u64))
        };
        if fail {
            self.ctl.eio_injected.fetch_add(1, Ordering::SeqCst);
            reply.error(Errno::EIO);
            return;
        }
        let mut d = self.ctl.data.write().unwrap_or_else(|e| e.into_inner());
        let end = offset as usize + data.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(data);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn config() -> fuser::Config {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("iocomplete-faulty".into()),
        fuser::MountOption::Subtype("faulty".into()),
    ];
    cfg
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn umount2(p: &Path, flags: libc::c_int) -> Result<(), i32> {
    let c = cstr(p);
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Unmount `mountpoint`: cleanly if it can within about a second, otherwise abort the
/// connection (`MNT_FORCE`) and detach it lazily. Never hangs, never panics.
fn teardown_mount(mountpoint: &Path) {
    for _ in 0..50 {
        match umount2(mountpoint, 0) {
            Ok(()) | Err(libc::EINVAL) | Err(libc::ENOENT) => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = umount2(mountpoint, libc::MNT_FORCE);
    let _ = umount2(mountpoint, libc::MNT_DETACH);
}

/// A mounted faulty filesystem served by threads of this process. Unmounted on drop.
pub struct FuseMount {
    ctl: Arc<Control>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// A fresh, empty mount point (in a directory removed on drop); `None` (with the reason
/// printed) where FUSE is unavailable.
fn mount_point() -> Option<(tempfile::TempDir, PathBuf)> {
    if let Some(why) = unavailable() {
        super::skip(&why);
        return None;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    Some((dir, mountpoint))
}

impl FuseMount {
    /// Mount a fresh faulty filesystem serving a file made to `spec`. `None` (with the
    /// reason printed) only where FUSE is truly unavailable; any other failure panics.
    pub fn new(spec: FileSpec) -> Option<FuseMount> {
        FuseMount::with_async_dio(spec, true)
    }

    /// [`new`](FuseMount::new), the server holding every read until released: a stuck
    /// device.
    pub fn holding(spec: FileSpec) -> Option<FuseMount> {
        let fs = FuseMount::new(spec)?;
        fs.ctl().hold(0..u64::MAX);
        Some(fs)
    }

    /// [`new`](FuseMount::new), and a loop device stacked on the served file.
    pub fn under_loop(spec: FileSpec) -> Option<(FuseMount, super::LoopDev)> {
        let fs = FuseMount::new(spec)?;
        let dev = super::LoopDev::attach(&fs.path())?;
        Some((fs, dev))
    }

    /// Like [`new`](FuseMount::new); `async_dio: false` makes a server that does not
    /// negotiate `FUSE_ASYNC_DIO` (older or simpler servers): the kernel then serves each
    /// io_uring read synchronously, inside `io_uring_enter`.
    pub fn with_async_dio(spec: FileSpec, async_dio: bool) -> Option<FuseMount> {
        let (dir, mountpoint) = mount_point()?;
        let ctl = Control::new(spec);
        let fs = FaultyFs {
            ctl: ctl.clone(),
            async_dio,
        };
        let session = fuser::Session::new(fs, &mountpoint, &config())
            .and_then(|s| s.spawn())
            .unwrap_or_else(|e| panic!("FUSE mount at {} failed: {e}", mountpoint.display()));
        Some(FuseMount {
            ctl,
            mountpoint,
            session: Some(session),
            _dir: dir,
        })
    }

    /// The served file.
    pub fn path(&self) -> PathBuf {
        self.mountpoint.join(FILE_NAME)
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Arm faults, read counters.
    pub fn ctl(&self) -> &Arc<Control> {
        &self.ctl
    }

    /// The device vanishes: abort the FUSE connection (a forced unmount does exactly what
    /// the kernel does when the server process dies). Requests in flight fail with
    /// `ECONNABORTED`, later ones with `ENOTCONN`; the server thread ends.
    pub fn abort(&mut self) {
        let _ = umount2(&self.mountpoint, libc::MNT_FORCE);
        let _ = umount2(&self.mountpoint, libc::MNT_DETACH);
        // Held replies go nowhere now; answer them so nothing waits on the timer.
        self.ctl.release();
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // Answer every delayed or held request first, so no client is left waiting.
        self.ctl.timer.stop();
        teardown_mount(&self.mountpoint);
        if let Some(s) = self.session.take() {
            // The connection is gone (unmounted or aborted): the session thread ends.
            let _ = s.umount_and_join();
        }
    }
}

// ---- a server in another process, to kill -----------------------------------------------

const CHILD_MOUNT_ENV: &str = "IOCOMPLETE_FUSE_CHILD_MOUNT";
const CHILD_SPEC_ENV: &str = "IOCOMPLETE_FUSE_CHILD_SPEC";

/// A faulty filesystem served by a child process (this test binary, re-run on its
/// [`child_server_entry`] test), so the server can be killed for real.
pub struct ChildFuse {
    child: Option<Child>,
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildFuse {
    /// Start a server for `spec` whose reads of offsets at or past `hold_from` are held
    /// (never answered until the server dies). `entry_test` is the name of the test in
    /// this binary that calls [`child_server_entry`].
    pub fn spawn(entry_test: &str, spec: FileSpec, hold_from: u64) -> Option<ChildFuse> {
        let (dir, mountpoint) = mount_point()?;
        let child = Command::new(std::env::current_exe().unwrap())
            .args([entry_test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_MOUNT_ENV, &mountpoint)
            .env(
                CHILD_SPEC_ENV,
                format!("{},{},{},{}", spec.size, spec.bs, spec.seed, hold_from),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut me = ChildFuse {
            child: Some(child),
            mountpoint,
            _dir: dir,
        };
        let file = me.path();
        let end = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&file).ok().map(|m| m.len()) != Some(spec.size) {
            if let Some(st) = me.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("FUSE child server exited early: {st}");
            }
            assert!(Instant::now() < end, "FUSE child server did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(me)
    }

    /// The served file.
    pub fn path(&self) -> PathBuf {
        self.mountpoint.join(FILE_NAME)
    }

    /// SIGKILL the server process and reap it. The kernel aborts the connection when its
    /// `/dev/fuse` descriptor closes: requests in flight fail with `ECONNABORTED`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildFuse {
    fn drop(&mut self) {
        self.kill();
        teardown_mount(&self.mountpoint);
    }
}

/// The body of the child-server test: serve until killed or unmounted. A no-op unless this
/// process was started by [`ChildFuse::spawn`].
pub fn child_server_entry() {
    let Ok(mountpoint) = std::env::var(CHILD_MOUNT_ENV) else {
        return;
    };
    let spec = std::env::var(CHILD_SPEC_ENV).unwrap();
    let v: Vec<u64> = spec.split(',').map(|x| x.parse().unwrap()).collect();
    let ctl = Control::new(FileSpec::new(v[0], v[1] as usize, v[2]));
    ctl.hold(v[3]..u64::MAX);
    let fs = FaultyFs {
        ctl,
        async_dio: true,
    };
    let session = fuser::Session::new(fs, &mountpoint, &config()).unwrap();
    let _ = session.run();
}
