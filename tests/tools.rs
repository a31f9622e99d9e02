//! The `copy`, `iobench`, `gather`, `cat` and `fiforx` example binaries run as users run
//! them: as child processes, each bounded by a timeout (a hang fails the test instead of
//! hanging it).
//! Refusals must exit non-zero with a message naming the argument and change nothing on
//! disk; copies are verified byte for byte.

mod common;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{verify, LoopDev};

const BS: usize = 4096;
const LIMIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> Option<PathBuf> {
    common::example_binary(name)
}

/// Run `bin` with `args` (stdin empty); kill it and fail if it runs past `limit`.
fn run(bin: &Path, args: &[&str], limit: Duration) -> Output {
    run_with(bin, args, Stdio::null(), None, limit)
}

/// Run `bin` with `args`, `stdin`, and `stdout` (a pipe, captured, when `None`); kill it
/// and fail if it runs past `limit`.
fn run_with(
    bin: &Path,
    args: &[&str],
    stdin: Stdio,
    stdout: Option<Stdio>,
    limit: Duration,
) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(stdin)
        .stdout(stdout.unwrap_or_else(Stdio::piped))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads, so a chatty child cannot block on a full pipe.
    let out = child.stdout.take();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut out) = out {
            let _ = out.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{} {args:?} did not exit within {limit:?} (hung)",
                bin.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A verify-pattern file of `size` bytes.
fn make(dir: &Path, name: &str, size: u64, seed: u64) -> PathBuf {
    let p = dir.join(name);
    verify::make_file(&p, size, BS, seed);
    p
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A small tmpfs mounted on a fresh directory, unmounted (and the directory removed) on
/// drop: a filesystem whose free space a test can exceed without filling the real disk.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (with the reason printed) where a tmpfs cannot be mounted (not root).
    fn new(bytes: u64) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            common::skip("mounting a tmpfs needs root");
            return None;
        }
        let dir = common::disk_dir();
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let opts = std::ffi::CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            common::skip(&format!("cannot mount a tmpfs: {e}"));
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; detaching unmounts even if a file is open.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---- copy --------------------------------------------------------------------------------

/// Finding 11: `copy F F`, through a symlink or a hard link, truncated F to 0 bytes and
/// exited 0. Each must be refused, naming the argument, with F unchanged.
#[test]
fn copy_refuses_to_copy_a_file_onto_itself() {
    let Some(bin) = example("copy") else {
        common::skip("the copy example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let size = 300_000u64;
    let f = make(dir.path(), "F", size, 81);
    let want = std::fs::read(&f).unwrap();
    let sym = dir.path().join("sym");
    std::os::unix::fs::symlink(&f, &sym).unwrap();
    let hard = dir.path().join("hard");
    std::fs::hard_link(&f, &hard).unwrap();
    let fs = f.to_str().unwrap();
    for (src, dst) in [
        (fs, fs),
        (fs, sym.to_str().unwrap()),
        (sym.to_str().unwrap(), fs),
        (fs, hard.to_str().unwrap()),
        (hard.to_str().unwrap(), sym.to_str().unwrap()),
    ] {
        for flags in [&[][..], &["--direct"], &["--serial"]] {
            let mut args = flags.to_vec();
            args.extend([src, dst]);
            let o = run(&bin, &args, LIMIT);
            let msg = stderr(&o);
            assert!(!o.status.success(), "copy {args:?} succeeded: {msg}");
            assert!(
                msg.contains("same file") && msg.contains(dst),
                "copy {args:?}: the message names the argument: {msg}"
            );
            assert_eq!(
                std::fs::read(&f).unwrap(),
                want,
                "copy {args:?} changed the file"
            );
        }
    }
}

/// SRC is checked fully (exists, readable, kind) before DST is created or truncated; a
/// FIFO as SRC or DST is refused without blocking in `open`.
#[test]
fn copy_checks_the_source_before_touching_the_destination() {
    let Some(bin) = example("copy") else {
        common::skip("the copy example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let keep = make(dir.path(), "keep", 10_000, 82);
    let want = std::fs::read(&keep).unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let missing = dir.path().join("missing");
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let unreadable = make(dir.path(), "unreadable", 100, 83);
    let nothing = dir.path().join("nothing");
    // Bad sources: DST (a new name) must not be created.
    for (src, why) in [
        (missing.as_path(), "No such file"),
        (&subdir, "not a regular file or block device"),
        (&fifo, "not a regular file or block device"),
        (Path::new("/dev/null"), "not a regular file or block device"),
    ] {
        let args = [src.to_str().unwrap(), nothing.to_str().unwrap()];
        let o = run(&bin, &args, Duration::from_secs(20));
        let msg = stderr(&o);
        assert!(!o.status.success(), "copy {args:?} succeeded");
        assert!(
            msg.contains(why) && msg.contains(args[0]),
            "copy {args:?}: {msg}"
        );
        assert!(!nothing.exists(), "copy {args:?} created the destination");
    }
    // Bad sources: an existing DST must not be truncated.
    let args = [subdir.to_str().unwrap(), keep.to_str().unwrap()];
    let o = run(&bin, &args, Duration::from_secs(20));
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&keep).unwrap(), want, "DST truncated");
    // An unreadable source (root reads anything: only checked when not root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        std::fs::set_permissions(
            &unreadable,
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
        let args = [unreadable.to_str().unwrap(), keep.to_str().unwrap()];
        let o = run(&bin, &args, Duration::from_secs(20));
        assert!(!o.status.success());
        assert_eq!(std::fs::read(&keep).unwrap(), want, "DST truncated");
    }
    // A FIFO as DST: refused, no hang, nothing written into it.
    let args = [keep.to_str().unwrap(), fifo.to_str().unwrap()];
    let o = run(&bin, &args, Duration::from_secs(20));
    let msg = stderr(&o);
    assert!(!o.status.success(), "copy to a FIFO succeeded");
    assert!(
        msg.contains("not a regular file or block device") && msg.contains(args[1]),
        "{msg}"
    );
}

/// A bad `--chunk` (too large for a pool slot, or misaligned for `--direct`) truncated an
/// existing DST (or created a new one) before failing: bad input must change nothing.
#[test]
fn copy_with_a_bad_chunk_leaves_the_destination_alone() {
    let Some(bin) = example("copy") else {
        common::skip("the copy example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let src = make(dir.path(), "src", 100_000, 87);
    let keep = make(dir.path(), "keep", 50_000, 88);
    let want = std::fs::read(&keep).unwrap();
    let new = dir.path().join("new");
    for flags in [&["--chunk", "1T"][..], &["--direct", "--chunk", "3"]] {
        for dst in [&keep, &new] {
            let mut args = flags.to_vec();
            args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
            let o = run(&bin, &args, Duration::from_secs(20));
            assert!(!o.status.success(), "copy {args:?} succeeded");
            assert!(
                stderr(&o).contains("chunk"),
                "copy {args:?}: {}",
                stderr(&o)
            );
        }
        assert_eq!(
            std::fs::read(&keep).unwrap(),
            want,
            "{flags:?}: DST changed"
        );
        assert!(!new.exists(), "{flags:?}: DST created");
    }
}

/// `copy /dev/loopN out` copies the whole device (its size is not `metadata.len()`, 0),
/// and back onto another device, verified byte for byte.
#[test]
fn copy_copies_a_whole_block_device() {
    let Some(bin) = example("copy") else {
        common::skip("the copy example binary is not built");
        return;
    };
    let size = 3 * (1 << 20) + 5 * 512;
    let Some(dev) = LoopDev::new(size, Some((BS, 84))) else {
        return;
    };
    let Some(dev2) = LoopDev::new(size, None) else {
        return;
    };
    let dir = common::disk_dir();
    let out = dir.path().join("out");
    for flags in [&[][..], &["--direct"], &["--serial", "--chunk", "64K"]] {
        let mut args = flags.to_vec();
        args.extend([dev.path.as_str(), out.to_str().unwrap()]);
        let o = run(&bin, &args, LIMIT);
        assert!(o.status.success(), "copy {args:?}: {}", stderr(&o));
        let data = std::fs::read(&out).unwrap();
        assert_eq!(data.len() as u64, size, "copy {args:?}");
        verify::check_range(&data, BS, 84, 0).unwrap();
        std::fs::remove_file(&out).unwrap();
    }
    // Device to device.
    let o = run(&bin, &["--direct", &dev.path, &dev2.path], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut data = Vec::new();
    OpenOptions::new()
        .read(true)
        .open(&dev2.path)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data.len() as u64, size);
    verify::check_range(&data, BS, 84, 0).unwrap();
    // A device onto itself (same node) is refused, and so is another node of it.
    let node = dir.path().join("node");
    let rdev = std::fs::metadata(&dev.path).unwrap().rdev();
    let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev as libc::dev_t) };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    for dst in [dev.path.as_str(), node.to_str().unwrap()] {
        let o = run(&bin, &[&dev.path, dst], LIMIT);
        let msg = stderr(&o);
        assert!(
            !o.status.success(),
            "copy of a device onto itself succeeded"
        );
        assert!(msg.contains("same file") && msg.contains(dst), "{msg}");
    }
}

/// Review 2, item 2: `copy /proc/self/status out` exited 0 with "0 bytes" and an empty
/// output: files of pseudo-filesystems (procfs, sysfs, cgroupfs...) report a size that
/// is not their content's. Such a SRC is refused, naming it, before DST is created or
/// truncated; an empty regular file still copies (0 bytes, exit 0).
#[test]
fn copy_refuses_a_pseudo_file_source() {
    let Some(bin) = example("copy") else {
        common::skip("the copy example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let keep = make(dir.path(), "keep", 10_000, 91);
    let want = std::fs::read(&keep).unwrap();
    let new = dir.path().join("new");
    let mut tried = 0;
    for src in [
        "/proc/self/status",
        "/proc/version",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/devices/system/cpu/online",
        "/sys/fs/cgroup/cgroup.controllers",
    ] {
        if !Path::new(src).is_file() {
            continue;
        }
        tried += 1;
        for dst in [&new, &keep] {
            let args = [src, dst.to_str().unwrap()];
            let o = run(&bin, &args, Duration::from_secs(20));
            let msg = stderr(&o);
            assert!(!o.status.success(), "copy {args:?} succeeded: {msg}");
            assert!(
                msg.contains(src) && msg.contains("pseudo-file") && msg.contains("use cat"),
                "copy {args:?}: {msg}"
            );
        }
        assert!(!new.exists(), "copy {src}: DST created");
        assert_eq!(
            std::fs::read(&keep).unwrap(),
            want,
            "copy {src}: DST changed"
        );
    }
    assert!(tried > 0, "no procfs or sysfs file to try");
    // An empty regular file on a real filesystem still copies, over an existing DST too.
    let empty = dir.path().join("empty");
    std::fs::File::create(&empty).unwrap();
    for dst in [&new, &keep] {
        let args = [empty.to_str().unwrap(), dst.to_str().unwrap()];
        let o = run(&bin, &args, Duration::from_secs(20));
        assert!(o.status.success(), "copy {args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("0 bytes"),
            "copy {args:?}: {}",
            stderr(&o)
        );
        assert_eq!(std::fs::metadata(dst).unwrap().len(), 0, "copy {args:?}");
    }
}

// ---- iobench -----------------------------------------------------------------------------

/// Finding 12: `iobench` on a missing path silently created a 256 MiB file, and on a FIFO
/// hung in `open`. A missing FILE is created only when asked (`--size`); anything but a
/// regular file or a block device is refused, at once, naming it.
#[test]
fn iobench_creates_only_when_asked_and_refuses_what_it_cannot_bench() {
    let Some(bin) = example("iobench") else {
        common::skip("the iobench example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let quick = ["--bs", "4k", "--qd", "2", "--seconds", "0.05"];
    let bench = |rw: &str, extra: &[&str], file: &Path| {
        let mut args = vec!["--rw", rw];
        args.extend(quick);
        args.extend(extra);
        args.push(file.to_str().unwrap());
        (run(&bin, &args, Duration::from_secs(30)), args.join(" "))
    };
    // Missing, not asked to create: refused, nothing created.
    let missing = dir.path().join("missing");
    for rw in ["randread", "write"] {
        let (o, what) = bench(rw, &[], &missing);
        let msg = stderr(&o);
        assert!(!o.status.success(), "iobench {what} succeeded: {msg}");
        assert!(
            msg.contains(missing.to_str().unwrap()) && msg.contains("--size"),
            "iobench {what}: {msg}"
        );
        assert!(!missing.exists(), "iobench {what} created the file");
    }
    // A size too small to bench is refused before anything is created.
    for size in ["0", "1k"] {
        let (o, what) = bench("randread", &["--size", size], &missing);
        assert!(!o.status.success(), "iobench {what} succeeded");
        assert!(
            stderr(&o).contains("--size"),
            "iobench {what}: {}",
            stderr(&o)
        );
        assert!(!missing.exists(), "iobench {what} created the file");
    }
    // Asked: created at that size, and benched.
    let (o, what) = bench("randread", &["--size", "1M"], &missing);
    assert!(o.status.success(), "iobench {what}: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"iops\""));
    assert_eq!(std::fs::metadata(&missing).unwrap().len(), 1 << 20);
    // An existing file is not grown behind the user's back for a write job.
    let small = dir.path().join("small");
    std::fs::write(&small, vec![1u8; 64 * 1024]).unwrap();
    let (o, what) = bench("randwrite", &[], &small);
    assert!(o.status.success(), "iobench {what}: {}", stderr(&o));
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 64 * 1024);
    // Not a file or block device: refused at once (a FIFO must not block the open).
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for path in [fifo.as_path(), &sub, Path::new("/dev/null")] {
        for extra in [&[][..], &["--size", "1M"]] {
            for rw in ["read", "write"] {
                let (o, what) = bench(rw, extra, path);
                let msg = stderr(&o);
                assert!(!o.status.success(), "iobench {what} succeeded");
                assert!(
                    msg.contains("not a regular file or block device")
                        && msg.contains(path.to_str().unwrap()),
                    "iobench {what}: {msg}"
                );
            }
        }
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

/// Review 2, item 1: `--size` beyond what the filesystem can hold (18446744073709551615,
/// 9223372036854775807, 100000000000000) created FILE and filled it until the disk was
/// full. Such a size is refused before FILE is created or grown, naming `--size` and the
/// value: above i64::MAX (the largest file offset) always, and above the free space when
/// the file must be filled, counting the bytes it already has. Run on an 8 MiB tmpfs, so
/// that a regression fills 8 MiB, not the disk.
#[test]
fn iobench_refuses_a_size_the_filesystem_cannot_hold() {
    let Some(bin) = example("iobench") else {
        common::skip("the iobench example binary is not built");
        return;
    };
    let Some(fs) = SmallFs::new(8 << 20) else {
        return;
    };
    let bench = |rw: &str, size: &str, file: &Path| {
        let args = [
            "--rw",
            rw,
            "--bs",
            "4096",
            "--qd",
            "4",
            "--seconds",
            "0.05",
            "--size",
            size,
            file.to_str().unwrap(),
        ];
        (run(&bin, &args, Duration::from_secs(30)), args.join(" "))
    };
    let refused = |o: &Output, what: &str, size: &str| {
        let msg = stderr(o);
        assert!(!o.status.success(), "iobench {what} succeeded: {msg}");
        assert!(
            msg.contains("--size") && msg.contains(size),
            "iobench {what}: the message names --size and the value: {msg}"
        );
    };
    // A missing FILE: refused, nothing created.
    let new = fs.path().join("new.bin");
    for (rw, size) in [
        ("randwrite", "18446744073709551615"),
        ("randwrite", "9223372036854775807"),
        ("randread", "100000000000000"),
        ("write", "9437184"), // 9 MiB: more than the whole 8 MiB filesystem
    ] {
        let (o, what) = bench(rw, size, &new);
        refused(&o, &what, size);
        assert!(!new.exists(), "iobench {what} created FILE");
    }
    // An existing 6 MiB FILE (2 MiB free): growing it by 10 MiB is refused, FILE
    // unchanged; growing it by 1 MiB fits (only the missing bytes need room).
    let six = 6 << 20;
    let old = make(fs.path(), "old.bin", six, 89);
    for size in ["16777216", "9223372036854775807"] {
        let (o, what) = bench("randwrite", size, &old);
        refused(&o, &what, size);
        let data = std::fs::read(&old).unwrap();
        assert_eq!(data.len() as u64, six, "iobench {what} resized FILE");
        verify::check_range(&data, BS, 89, 0).unwrap();
    }
    let (o, what) = bench("randwrite", "7340032", &old);
    assert!(o.status.success(), "iobench {what}: {}", stderr(&o));
    assert_eq!(std::fs::metadata(&old).unwrap().len(), 7 << 20);
    std::fs::remove_file(&old).unwrap();
    // Past the largest file offset: refused even where nothing would be filled (a read
    // job on an existing file).
    let dir = common::disk_dir();
    let f = make(dir.path(), "f", 64 * 1024, 90);
    let size = "18446744073709551615";
    let (o, what) = bench("randread", size, &f);
    refused(&o, &what, size);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 64 * 1024);
}

/// `--seconds` too large for a `Duration` panicked (exit 101) instead of a usage error.
#[test]
fn iobench_refuses_unrepresentable_durations() {
    let Some(bin) = example("iobench") else {
        common::skip("the iobench example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let f = make(dir.path(), "f", 64 * 1024, 86);
    for secs in ["1e30", "inf", "NaN", "-1", "0", "1e-300"] {
        let args = [
            "--rw",
            "read",
            "--bs",
            "4k",
            "--qd",
            "1",
            "--seconds",
            secs,
            f.to_str().unwrap(),
        ];
        let o = run(&bin, &args, Duration::from_secs(20));
        let msg = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "--seconds {secs}: {msg}");
        assert!(msg.contains("--seconds"), "--seconds {secs}: {msg}");
    }
}

// ---- gather ------------------------------------------------------------------------------

/// `gather` on a FIFO hung in `open`; on a directory or a character device it blamed the
/// extents. Anything but a regular file or block device is refused at once, naming it.
#[test]
fn gather_refuses_what_it_cannot_read_without_blocking() {
    let Some(bin) = example("gather") else {
        common::skip("the gather example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    for path in [fifo.as_path(), dir.path(), Path::new("/dev/null")] {
        let args = [path.to_str().unwrap(), "0:10"];
        let o = run(&bin, &args, Duration::from_secs(20));
        let msg = stderr(&o);
        assert!(!o.status.success(), "gather {args:?} succeeded");
        assert!(
            msg.contains("not a regular file or block device") && msg.contains(args[0]),
            "gather {args:?}: {msg}"
        );
    }
    // And still gathers from a file.
    let f = make(dir.path(), "f", 100_000, 85);
    let o = run(&bin, &[f.to_str().unwrap(), "8192:4096", "0:100"], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = [
        verify::expected(BS, 85, 8192, 4096),
        verify::expected(BS, 85, 0, 100),
    ]
    .concat();
    assert_eq!(o.stdout, want);
}

// ---- cat ---------------------------------------------------------------------------------

/// Review 2, item 3: `cat F >> F` read back its own output (1,131,072 bytes delivered from
/// a 1,000,000-byte file). As GNU cat does, an input that is stdout's regular file (the
/// same device and inode, by any name, or as stdin) is refused before anything is
/// written: "input file is output file", exit 1. `cat F > G`, `cat F >> G` and
/// `cat F | ...` are unaffected.
#[test]
fn cat_refuses_an_input_that_is_its_own_output() {
    let Some(bin) = example("cat") else {
        common::skip("the cat example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let size = 1_000_000u64;
    let f = make(dir.path(), "F", size, 92);
    let want = std::fs::read(&f).unwrap();
    let link = dir.path().join("link");
    std::fs::hard_link(&f, &link).unwrap();
    let fs = f.to_str().unwrap();
    let append = |p: &Path| Stdio::from(OpenOptions::new().append(true).open(p).unwrap());
    let read = |p: &Path| Stdio::from(std::fs::File::open(p).unwrap());
    for (args, stdin, stdout, name) in [
        ([fs], Stdio::null(), append(&f), fs),
        ([fs], Stdio::null(), append(&link), fs),
        (["-"], read(&f), append(&f), "stdin"),
        // Read-write at offset 0 (`cat F 1<>F`): the same file all the same.
        (
            [fs],
            Stdio::null(),
            Stdio::from(OpenOptions::new().read(true).write(true).open(&f).unwrap()),
            fs,
        ),
    ] {
        let o = run_with(&bin, &args, stdin, Some(stdout), Duration::from_secs(30));
        let msg = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "cat {args:?} into itself: {msg}");
        assert!(
            msg.contains(&format!("{name}: input file is output file")),
            "cat {args:?} into itself: {msg}"
        );
        assert!(
            std::fs::read(&f).unwrap() == want,
            "cat {args:?} into itself changed the file"
        );
    }
    // Into another file, truncated or appended to, and into a pipe: unaffected.
    let g = dir.path().join("G");
    let o = run_with(
        &bin,
        &[fs],
        Stdio::null(),
        Some(Stdio::from(std::fs::File::create(&g).unwrap())),
        LIMIT,
    );
    assert!(o.status.success(), "cat F > G: {}", stderr(&o));
    assert!(std::fs::read(&g).unwrap() == want, "cat F > G: G differs");
    std::fs::write(&g, b"earlier\n").unwrap();
    let o = run_with(&bin, &[fs], Stdio::null(), Some(append(&g)), LIMIT);
    assert!(o.status.success(), "cat F >> G: {}", stderr(&o));
    let got = std::fs::read(&g).unwrap();
    assert!(
        got[..8] == *b"earlier\n" && got[8..] == want[..],
        "cat F >> G: G differs"
    );
    let o = run(&bin, &[fs], LIMIT);
    assert!(o.status.success(), "cat F | ...: {}", stderr(&o));
    assert!(o.stdout == want, "cat F | ...: output differs");
}

// ---- fiforx ------------------------------------------------------------------------------

/// Review 2, item 4: `fiforx --len 0 PATH` exited 0 without reading. It reads exactly N
/// bytes, so N = 0 is bad input: a usage error (exit 2) naming `--len`, before PATH is
/// opened and with nothing written.
#[test]
fn fiforx_refuses_a_zero_length() {
    let Some(bin) = example("fiforx") else {
        common::skip("the fiforx example binary is not built");
        return;
    };
    let dir = common::disk_dir();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let fp = fifo.to_str().unwrap();
    for args in [
        &["--len", "0", fp][..],
        &["--len=0", fp],
        &["--len", "0K", "-"],
    ] {
        let o = run(&bin, args, Duration::from_secs(20));
        let msg = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "fiforx {args:?}: {msg}");
        assert!(
            msg.contains("--len") && msg.contains("at least 1"),
            "fiforx {args:?}: {msg}"
        );
        assert!(o.stdout.is_empty(), "fiforx {args:?} wrote to stdout");
    }
}
