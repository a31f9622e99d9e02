//! Races and limits on the real ring: short reads from a file truncated while reads are in
//! flight, descriptors closed or replaced with reads in flight, io_uring unavailable
//! (seccomp: the thread-pool backend takes over), `RLIMIT_MEMLOCK` too small to register
//! buffers. Tests that must change
//! process-wide state run in a child process (this binary, re-run on
//! `child_process_entry`). Every test verifies content and checks teardown invariants.
//!
//! Already covered in `ring_io.rs`: the 10,000-iteration cancel-vs-completion race, the
//! tiny-CQ overflow, provided-buffer exhaustion (`ENOBUFS`).

mod common;

use common::or_skip;
use libc::EBADF;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::fd::pipe;
use common::fuse::{FileSpec, FuseMount};
use common::{check_teardown, child, pool, ring_with, verify};
use iocomplete::{BackendKind, BufferPool, BufferRegistration, ErrorKind, Op, Ring, Ticket};

const BS: usize = 4096;

/// Check one read of `len` bytes at `offset` from a verify file that was cut to `cut`
/// while it was in flight: it returns the original bytes, either in full (served before
/// the cut) or, if short, at least up to the cut — exactly to it when `exact` (a device
/// serving each read at once; the page cache may copy a batch of pages before it sees
/// the new size). Returns whether it was short.
fn check_cut_read(data: &[u8], offset: u64, len: usize, cut: u64, seed: u64, exact: bool) -> bool {
    let n = data.len();
    verify::check_range(data, BS, seed, offset).unwrap_or_else(|e| panic!("read at {offset}: {e}"));
    if n == len {
        return false;
    }
    let end = offset + n as u64;
    if exact {
        assert_eq!(
            end,
            cut.max(offset),
            "short read at {offset} (+{n}) not at the cut {cut}"
        );
    } else {
        let want = cut.clamp(offset, offset + len as u64);
        assert!(
            end >= want,
            "read at {offset} lost data before the cut {cut}: got {n}"
        );
    }
    true
}

#[test]
fn file_truncated_under_reads_in_flight_gives_short_reads_up_to_the_cut() {
    const READ: usize = 16 * 1024;
    let spec = FileSpec::new(1 << 20, BS, 41);
    let fs = or_skip!(FuseMount::new(spec));
    // The first half is served at once; reads of the second half wait at the device.
    fs.ctl().hold(512 * 1024..u64::MAX);
    let pool = pool(64, READ);
    let (mut ring, t) = ring_with(&pool, std::fs::File::open(fs.path()).unwrap());
    let tks: Vec<(u64, Ticket)> = (0..64u64)
        .map(|i| {
            let off = i * READ as u64;
            let tk = ring
                .submit(Op::read(t, off, pool.try_get().unwrap()).tag(off))
                .ticket();
            (off, tk)
        })
        .collect();
    ring.poll().unwrap();
    assert!(fs.ctl().wait_outstanding(32, Duration::from_secs(5)));
    // Cut the file mid-block while 32 reads are in flight past the first half.
    let cut = 700_001u64;
    OpenOptions::new()
        .write(true)
        .open(fs.path())
        .unwrap()
        .set_len(cut)
        .unwrap();
    fs.ctl().release();
    let (mut full, mut short, mut empty) = (0, 0, 0);
    let mut seen = HashSet::new();
    for (off, tk) in tks {
        let c = ring.wait(tk).unwrap();
        assert_eq!(c.tag(), off);
        assert!(seen.insert(off), "read at {off} completed twice");
        let buf = c.into_result().unwrap();
        let was_short = check_cut_read(buf.data(), off, READ, cut, spec.seed, true);
        match (was_short, buf.len()) {
            (false, _) => full += 1,
            (true, 0) => empty += 1,
            (true, _) => short += 1,
        }
    }
    eprintln!("truncate under reads: {full} full, {short} short, {empty} empty");
    assert_eq!(full, 32 + (cut as usize - 512 * 1024) / READ);
    assert_eq!(short, 1);
    assert_eq!(empty, 64 - full - short);
    // Past the cut, later reads see the end of the file.
    let c = ring
        .submit(Op::read(t, cut, pool.try_get().unwrap()))
        .wait()
        .unwrap();
    assert_eq!(c.result(), Ok(0));
    drop(c);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn disk_file_truncated_while_a_batch_of_reads_races_it() {
    const READ: usize = 16 * 1024;
    const SIZE: u64 = 2 << 20;
    let (_dir, path) = common::disk_path("t");
    let mut ring = Ring::new().unwrap();
    let pool = pool(128, READ);
    ring.register_pool(&pool);
    let mut rng = common::rng(0x1234_5678);
    let (mut mid, mut total_short) = (0, 0);
    // 24 rounds, and more (bounded) until a cut has landed mid-batch at least once: a test
    // of the race that never raced would prove nothing.
    let mut round = 0u64;
    while round < 24 || (mid == 0 && round < 240) {
        round += 1;
        let seed = 100 + round;
        verify::make_file(&path, SIZE, BS, seed);
        let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();
        // A page-aligned cut, so no partial page is zeroed under a racing read.
        let cut = rng.u64(..SIZE / 4096) * 4096;
        let delay = Duration::from_micros(rng.u64(..300));
        let p = path.clone();
        let cutter = std::thread::spawn(move || {
            std::thread::sleep(delay);
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(cut)
                .unwrap();
        });
        let tks: Vec<(u64, Ticket)> = (0..128u64)
            .map(|i| {
                let off = i * READ as u64;
                (
                    off,
                    ring.submit(Op::read(t, off, pool.try_get().unwrap()))
                        .ticket(),
                )
            })
            .collect();
        ring.poll().unwrap();
        let mut shorts = 0;
        for (off, tk) in tks {
            let buf = ring.wait(tk).unwrap().into_result().unwrap();
            shorts += check_cut_read(buf.data(), off, READ, cut, seed, false) as usize;
        }
        cutter.join().unwrap();
        if shorts > 0 && shorts < 128 - (cut as usize / READ) {
            mid += 1;
        }
        total_short += shorts;
        ring.close(t).unwrap();
    }
    eprintln!(
        "disk truncate race: {total_short} short reads; cut landed mid-batch in {mid}/{round}"
    );
    assert!(
        mid > 0,
        "in {round} rounds the cut never landed while a batch was reading"
    );
    check_teardown(&ring, &[&pool]);
}

/// Close the ring's target (`Ring::close`) while the device holds reads: they complete
/// normally (the kernel holds its own reference), later requests fail without a syscall.
/// A FUSE file of `blocks` verify blocks of `seed` whose server holds every read, a ring
/// with `files` registered-file slots, and a 16-slot pool registered with it.
fn held(blocks: u64, seed: u64, files: u32) -> Option<(FuseMount, Ring, BufferPool)> {
    let fs = FuseMount::holding(FileSpec::blocks(blocks, seed))?;
    // (`threads`: workers enough for 32 reads at the server, on the thread-pool backend.)
    let mut ring = Ring::builder().files(files).threads(64).build().unwrap();
    let pool = pool(16, BS);
    ring.register_pool(&pool);
    Some((fs, ring, pool))
}

fn close_target_with_reads_in_flight(files: u32) {
    let (fs, mut ring, pool) = or_skip!(held(64, 42, files));
    let spec = fs.ctl().spec();
    let t = ring
        .register(std::fs::File::open(fs.path()).unwrap())
        .unwrap();
    let tks = common::read_tickets(&mut ring, t, &pool, 0..16);
    ring.poll().unwrap();
    assert!(fs.ctl().wait_outstanding(16, Duration::from_secs(5)));
    ring.close(t).unwrap();
    assert_eq!(ring.close(t).unwrap_err().kind(), ErrorKind::StaleTarget);
    fs.ctl().release();
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        let b = c.tag();
        let buf = c.into_result().unwrap();
        verify::check_block(buf.data(), b * BS as u64, spec.seed).unwrap();
    }
    let enters = ring.stats().enters;
    let c = ring
        .submit(Op::read(t, 0, pool.try_get().unwrap()))
        .wait()
        .unwrap();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::StaleTarget));
    assert_eq!(
        ring.stats().enters,
        enters,
        "a stale request reached the kernel"
    );
    drop(c);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn closing_a_fixed_file_target_with_reads_in_flight() {
    close_target_with_reads_in_flight(64);
}

#[test]
fn closing_a_raw_fd_target_with_reads_in_flight() {
    close_target_with_reads_in_flight(0);
}

/// The ring's descriptor number is replaced (`dup2`) behind its back while the device holds
/// reads: the reads in flight complete with the original file's data; later requests go
/// wherever the ring's file table points (fixed files: still the original file; raw fds:
/// the new occupant of the number, here `/dev/null`). Nothing leaks, nothing completes twice.
fn raw_fd_replaced_with_reads_in_flight(files: u32) {
    let (fs, mut ring, pool) = or_skip!(held(32, 43, files));
    let spec = fs.ctl().spec();
    let file = std::fs::File::open(fs.path()).unwrap();
    let raw = file.as_raw_fd();
    let t = ring.register(file).unwrap();
    // The caller's own copy, registered as a duplicate and then closed: no effect at all.
    let mine = std::fs::File::open(fs.path()).unwrap();
    let t2 = ring.register_dup(&mine).unwrap();
    drop(mine);
    let tks: Vec<Ticket> = (0..8u64)
        .map(|b| {
            let tgt = if b % 2 == 0 { t } else { t2 };
            ring.submit(Op::read_len(tgt, b * BS as u64, pool.try_get().unwrap(), BS).tag(b))
                .ticket()
        })
        .collect();
    ring.poll().unwrap();
    assert!(fs.ctl().wait_outstanding(8, Duration::from_secs(5)));
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: `raw` is the ring's own descriptor; dup2 atomically makes the number refer to
    // /dev/null (never a closed or foreign number, so the ring's later close is sound).
    assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), raw) }, raw);
    fs.ctl().release();
    for tk in tks {
        let c = ring.wait(tk).unwrap();
        let b = c.tag();
        verify::check_block(c.into_result().unwrap().data(), b * BS as u64, spec.seed).unwrap();
    }
    let c = ring
        .submit(Op::read_len(t, 9 * BS as u64, pool.try_get().unwrap(), BS))
        .wait()
        .unwrap();
    if ring.capabilities().fixed_files && files > 0 {
        let buf = c.into_result().unwrap();
        verify::check_block(buf.data(), 9 * BS as u64, spec.seed).unwrap();
    } else {
        assert_eq!(c.result(), Ok(0), "raw-fd read should now hit /dev/null");
        drop(c);
    }
    let c = ring
        .submit(Op::read_len(
            t2,
            10 * BS as u64,
            pool.try_get().unwrap(),
            BS,
        ))
        .wait()
        .unwrap();
    verify::check_block(c.into_result().unwrap().data(), 10 * BS as u64, spec.seed).unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn fixed_file_descriptor_replaced_behind_the_ring() {
    raw_fd_replaced_with_reads_in_flight(64);
}

#[test]
fn raw_descriptor_replaced_behind_the_ring() {
    raw_fd_replaced_with_reads_in_flight(0);
}

#[test]
fn descriptor_closed_behind_the_ring_with_a_read_pending() {
    child::run("child_process_entry", "closed-fd");
}

#[test]
fn io_uring_refused_by_seccomp_falls_back_to_threads_unless_forced() {
    child::run("child_process_entry", "seccomp-enosys");
    child::run("child_process_entry", "seccomp-eperm");
    child::run("child_process_entry", "seccomp-eacces");
}

#[test]
fn memlock_too_small_to_register_leaves_the_pool_working_unregistered() {
    // Here (root, CAP_IPC_LOCK) the same pool registers; the child drops the capability
    // and lowers RLIMIT_MEMLOCK, and the registration fails there.
    let mut ring = Ring::new().unwrap();
    or_skip!(common::needs_uring(&ring, "registered buffers"));
    let pool = memlock_pool();
    assert_eq!(ring.register_pool(&pool), BufferRegistration::Fixed);
    drop(ring);
    child::run("child_process_entry", "memlock");
}

fn memlock_pool() -> BufferPool {
    // 16 x 64 KiB = 1 MiB to pin, far above the child's 64 KiB limit.
    pool(16, 64 * 1024)
}

/// The child side of the tests above; a no-op in normal runs.
#[test]
fn child_process_entry() {
    let role = or_skip!(child::role());
    match role.as_str() {
        "closed-fd" => closed_fd_child(),
        "seccomp-enosys" => seccomp_child(libc::ENOSYS),
        "seccomp-eperm" => seccomp_child(libc::EPERM),
        "seccomp-eacces" => seccomp_child(libc::EACCES),
        "memlock" => memlock_child(),
        other => panic!("unknown child role {other}"),
    }
    child::ok(&role);
}

/// Child: really `close()` the ring's raw descriptor while a read is pending on it (only
/// this process's threads could reuse the number, and none opens files meanwhile).
fn closed_fd_child() {
    let (rx, tx) = pipe();
    let raw = rx.as_raw_fd();
    let mut ring = Ring::builder().files(0).build().unwrap();
    // (The thread pool reads through the descriptor's number, which this closes.)
    or_skip!(common::needs_uring(
        &ring,
        "the kernel's own reference to a file read"
    ));
    let pool = pool(4, BS);
    let r = ring.register(rx).unwrap();
    let tk = ring
        .submit(Op::read(r, 0, pool.try_get().unwrap()))
        .ticket();
    ring.poll().unwrap();
    assert_eq!(ring.in_flight(), 1);
    // Opened now, while `raw` is taken, so it cannot land on that number.
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: closes the ring's descriptor behind its back on purpose; the number is
    // re-occupied below before the ring closes it again.
    assert_eq!(unsafe { libc::close(raw) }, 0);
    // The pending read holds its own reference to the pipe: data still arrives.
    let msg = b"still here";
    // SAFETY: valid buffer and descriptor.
    let n = unsafe { libc::write(tx.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    assert_eq!(n as usize, msg.len());
    let buf = ring.wait(tk).unwrap().into_result().unwrap();
    assert_eq!(buf.data(), msg);
    drop(buf);
    // A new request names a closed descriptor: the kernel's EBADF, typed, on that request.
    let c = ring
        .submit(Op::read(r, 0, pool.try_get().unwrap()))
        .wait()
        .unwrap();
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Os(EBADF)));
    drop(c);
    check_teardown(&ring, &[&pool]);
    // SAFETY: gives the closed number an owner again, so the ring's own close is sound.
    assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), raw) }, raw);
}

/// `offsetof(struct seccomp_data, nr)` and `arch`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Child: a seccomp filter makes `io_uring_setup` fail with `errno` (as a container
/// runtime's default profile or `kernel.io_uring_disabled` do). A ring built with the
/// default choice falls back to the thread pool and does real, verified I/O; one forced
/// to io_uring (by the builder, or by `IOCOMPLETE_BACKEND=uring`) fails with
/// `Unsupported { feature: "io_uring" }`.
fn seccomp_child(errno: i32) {
    if !cfg!(target_arch = "x86_64") {
        common::skip("the seccomp filter is written for x86_64");
        return;
    }
    let prog = [
        bpf(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            SECCOMP_DATA_ARCH,
        ),
        bpf(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            1,
            0,
            AUDIT_ARCH_X86_64,
        ),
        bpf(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        bpf(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            SECCOMP_DATA_NR,
        ),
        bpf(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_io_uring_setup as u32,
        ),
        bpf(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | errno as u32,
        ),
        bpf(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl; required before an unprivileged filter (harmless as root).
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    // SAFETY: `fprog` points at `prog`, which outlives the call (the kernel copies it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    let forced = || Ring::builder().backend(BackendKind::Uring);
    for result in [forced().build(), forced().entries(8).sqpoll(10).build()] {
        let e = result.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Unsupported {
                feature: "io_uring"
            },
            "{e}"
        );
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::Unsupported);
    }
    // The same choice made by the environment. (This child runs one test on one thread.)
    std::env::set_var("IOCOMPLETE_BACKEND", "uring");
    let e = Ring::new().unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Unsupported {
            feature: "io_uring"
        }
    );
    std::env::remove_var("IOCOMPLETE_BACKEND");
    // The default falls back, and says so.
    for ring in [Ring::new(), Ring::builder().entries(8).sqpoll(10).build()] {
        let mut ring = ring.unwrap();
        assert_eq!(ring.backend(), BackendKind::Threads);
        assert!(!ring.capabilities().sqpoll && !ring.capabilities().fixed_buffers);
        let pool = pool(4, BS);
        assert!(matches!(
            ring.register_pool(&pool),
            BufferRegistration::Unregistered(_)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = verify::file_in(dir.path(), "f", 4 * BS as u64, 77);
        let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();
        for b in 0..4u64 {
            let op = Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS);
            let buf = ring.submit(op).wait().unwrap().into_result().unwrap();
            verify::check_block(buf.data(), b * BS as u64, 77).unwrap();
        }
        // A blocked pipe read is cancelled, as on io_uring.
        let (rx, _tx) = pipe();
        let r = ring.register(rx).unwrap();
        let tk = ring
            .submit(Op::read(r, 0, pool.try_get().unwrap()))
            .ticket();
        ring.run_once(Some(Duration::from_millis(5))).unwrap();
        assert!(ring.cancel(tk.id()));
        let c = ring.wait(tk).unwrap();
        assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
        drop(c);
        ring.close(r).unwrap();
        ring.close(t).unwrap();
        check_teardown(&ring, &[&pool]);
    }
    println!(
        "io_uring_setup -> errno {errno}: forced io_uring is Unsupported(io_uring), \
         the default ring runs on threads"
    );
}

/// `_LINUX_CAPABILITY_VERSION_3` and `CAP_IPC_LOCK` (linux/capability.h).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_IPC_LOCK: u32 = 14;

/// capget(2)/capset(2)'s header and data.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Child: drop `CAP_IPC_LOCK` (which exempts root from memlock accounting) for this
/// thread and lower `RLIMIT_MEMLOCK` to 64 KiB: registering a 1 MiB pool fails, the pool
/// works unregistered with the same results.
fn memlock_child() {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as capget(2) wants for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(r, 0);
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    data[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; only drops a capability of this thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: 64 * 1024,
    };
    // SAFETY: valid rlimit struct; lowering a limit needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) }, 0);

    let mut ring = Ring::new().expect("a ring needs no locked memory of its own");
    let pool = memlock_pool();
    let reg = ring.register_pool(&pool);
    println!("register_pool with a 64 KiB memlock limit: {reg:?}");
    assert!(
        matches!(reg, BufferRegistration::Unregistered(e) if e.kind() == ErrorKind::Os(libc::ENOMEM)),
        "{reg:?}"
    );
    assert!(!pool.is_registered());
    // The unregistered pool gives the same results.
    let (_dir, path) = common::disk_path("m");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let t = ring.register(f).unwrap();
    let blocks = 64u64;
    let bs = 64 * 1024;
    for b in 0..blocks {
        let mut buf = pool.try_get().unwrap();
        buf.set_len(bs).unwrap();
        verify::fill_block(buf.data_mut(), b * bs as u64, 44);
        let c = ring
            .submit(Op::write(t, b * bs as u64, buf))
            .wait()
            .unwrap();
        assert_eq!(c.result(), Ok(bs));
    }
    let tks: Vec<(u64, Ticket)> = (0..16u64)
        .map(|b| {
            (
                b,
                ring.submit(Op::read(t, b * bs as u64, pool.try_get().unwrap()))
                    .ticket(),
            )
        })
        .collect();
    for (b, tk) in tks {
        let buf = ring.wait(tk).unwrap().into_result().unwrap();
        verify::check_block(buf.data(), b * bs as u64, 44).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}
