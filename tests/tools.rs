//! The `copy`, `iobench`, `gather`, `cat` and `fiforx` example binaries run as users run
//! them: as child processes, each bounded by a timeout (a hang fails the test instead of
//! hanging it).
//! Refusals must exit non-zero with a message naming the argument and change nothing on
//! disk; copies are verified byte for byte.

mod common;

use common::or_skip;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::bin::{example, run, run_with, stderr, LIMIT};
use common::fd::{mkfifo, payload, pipe, slow_writer, trickle};
use common::verify::{self, file_in as make};
use common::LoopDev;

const BS: usize = 4096;
/// What the tools say of a path that is neither a regular file nor a block device.
const NOT_A_FILE: &str = "not a regular file or block device";

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

/// The example binary `name` and a new directory on disk to run it in.
fn tool(name: &str) -> Option<(std::path::PathBuf, tempfile::TempDir)> {
    Some((example(name)?, common::disk_dir()))
}

/// A verify file `name` in `dir` ([`make`]) and its bytes.
fn made(dir: &Path, name: &str, size: u64, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let p = make(dir, name, size, seed);
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes)
}

/// `o` succeeded and wrote exactly `want` (`what` ran).
fn wrote(o: &Output, want: &[u8], what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
    assert!(
        o.stdout == want,
        "{what}: {} bytes out of {}",
        o.stdout.len(),
        want.len()
    );
}

/// The number just before the first `unit` in `msg`: 42 for `" bytes in"` in
/// `"copy: 42 bytes in 0.1 s"`.
fn number_before(msg: &str, unit: &str) -> u64 {
    let at = msg
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {msg:?}"));
    let digits = msg[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {unit:?} in {msg:?}"))
}

/// Run `bin` with `args`; it must fail, with every one of `words` in its message.
fn refused(bin: &Path, args: &[&str], words: &[&str]) -> Output {
    let o = run(bin, args, Duration::from_secs(20));
    let msg = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {msg}");
    for w in words {
        assert!(msg.contains(w), "{args:?}: {w:?} not in the message: {msg}");
    }
    o
}

// ---- copy --------------------------------------------------------------------------------

/// Copies of 0 bytes to 3 MiB + 123 with several chunk sizes, serial, parallel and direct:
/// every byte lands, progress climbs to the size and never past it, a direct copy leaves
/// under a block to the page cache; bad input fails with a clear message.
#[test]
fn copy_example_copies_and_reports_clear_errors() {
    let bin = or_skip!(example("copy"));
    let (dir, dst) = common::disk_path("dst");
    let d = dst.to_str().unwrap();
    for (k, size) in [0u64, 1, 4095, 4096, 65537, 3 * (1 << 20) + 123]
        .into_iter()
        .enumerate()
    {
        let seed = 40 + k as u64;
        let src = make(dir.path(), "src", size, seed);
        for flags in [
            &["--chunk", "64K"][..],
            &["--serial", "--chunk", "16k"],
            &["--inflight", "3", "--chunk", "8192"],
            &["--direct", "--chunk", "128K"],
        ] {
            let mut args = vec!["--progress"];
            args.extend(flags);
            args.extend([src.to_str().unwrap(), d]);
            let o = run(&bin, &args, LIMIT);
            let msg = stderr(&o);
            assert!(o.status.success(), "copy {args:?}: {msg}");
            let mut last = 0;
            for line in msg.lines() {
                let Some((done, total)) = line
                    .strip_prefix("copy: ")
                    .and_then(|l| l.strip_suffix(" bytes"))
                    .and_then(|l| l.split_once('/'))
                else {
                    continue;
                };
                let (done, total): (u64, u64) = (done.parse().unwrap(), total.parse().unwrap());
                assert_eq!(total, size);
                assert!(done >= last && done <= total, "{flags:?}: {msg}");
                last = done;
            }
            let summary = msg.lines().last().unwrap();
            assert_eq!(number_before(summary, " bytes in"), size, "{flags:?}");
            assert_eq!(last, size, "{flags:?}: progress did not reach the end");
            if flags.contains(&"--direct") && summary.contains("buffered") {
                assert!(
                    number_before(summary, " bytes buffered") < 4096,
                    "{summary}"
                );
            }
            assert_eq!(std::fs::metadata(&dst).unwrap().len(), size, "{flags:?}");
            verify::check_file_prefix(&dst, size, seed);
        }
    }
    let s = dir.path().join("src");
    let s = s.to_str().unwrap();
    let x = dir.path().join("x");
    let x = x.to_str().unwrap();
    refused(&bin, &["--chunk", "12Q", s, x], &["bad number '12Q'"]);
    refused(&bin, &["--inflight", "many", s, x], &["bad number"]);
    refused(&bin, &[s], &["required", "<DST>"]);
    refused(
        &bin,
        &["/nonexistent/src", x],
        &["/nonexistent/src", "No such file"],
    );
    let e = stderr(&refused(
        &bin,
        &["--direct", "--chunk", "1000", s, x],
        &["--chunk 1000", "alignment"],
    ));
    assert!(
        e.contains("512") || e.contains("4096"),
        "the alignment is named: {e}"
    );
    for (chunk, kib) in [("4M", "chunk 4096 KiB"), ("64KiB", "chunk 64 KiB")] {
        let o = run(&bin, &["--chunk", chunk, s, x], LIMIT);
        assert!(
            o.status.success() && stderr(&o).contains(kib),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn copy_example_to_a_too_small_block_device_fails_clearly() {
    let bin = or_skip!(example("copy"));
    let dev = or_skip!(LoopDev::new(256 * 1024, None));
    let dir = common::disk_dir();
    let src = make(dir.path(), "src", 1 << 20, 12);
    refused(
        &bin,
        &["--direct", src.to_str().unwrap(), &dev.path],
        &["No space left on device"],
    );
    verify::check_file_prefix(Path::new(&dev.path), 256 * 1024, 12);
}

/// Finding 11: `copy F F`, through a symlink or a hard link, truncated F to 0 bytes and
/// exited 0. Each must be refused, naming the argument, with F unchanged.
#[test]
fn copy_refuses_to_copy_a_file_onto_itself() {
    let (bin, dir) = or_skip!(tool("copy"));
    let size = 300_000u64;
    let (f, want) = made(dir.path(), "F", size, 81);
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
    let (bin, dir) = or_skip!(tool("copy"));
    let (keep, want) = made(dir.path(), "keep", 10_000, 82);
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
    refused(&bin, &args, &[NOT_A_FILE, args[1]]);
}

/// A bad `--chunk` (too large for a pool slot, or misaligned for `--direct`) truncated an
/// existing DST (or created a new one) before failing: bad input must change nothing.
#[test]
fn copy_with_a_bad_chunk_leaves_the_destination_alone() {
    let (bin, dir) = or_skip!(tool("copy"));
    let src = make(dir.path(), "src", 100_000, 87);
    let (keep, want) = made(dir.path(), "keep", 50_000, 88);
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
    let bin = or_skip!(example("copy"));
    let size = 3 * (1 << 20) + 5 * 512;
    let (dev, dev2) = or_skip!(LoopDev::pair(size, 84));
    let (dir, out) = common::disk_path("out");
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
    let (bin, dir) = or_skip!(tool("copy"));
    let (keep, want) = made(dir.path(), "keep", 10_000, 91);
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

/// `iobench`'s I/O loop performs no heap allocation per operation in steady state: after
/// its warm-up, thousands of operations allocate nothing, for each access pattern, at
/// several queue depths, page-cached and O_DIRECT; every operation moves a whole block.
#[test]
fn iobench_loop_allocates_nothing_per_operation() {
    // The thread-pool backend starts its workers as load arrives: a thread start inside
    // the measured window allocates (the alloc_free tests count per thread instead).
    or_skip!(common::needs_uring(
        &iocomplete::Ring::new().unwrap(),
        "no allocation while iobench measures (threads start workers as load arrives)"
    ));
    let (bin, dir) = or_skip!(tool("iobench"));
    let f = make(dir.path(), "bench.dat", 256 * BS as u64, 93);
    let direct_ok = common::open(&f, false, true).metadata().is_ok();
    let mut cases = vec![
        ("randread", "1", false),
        ("randread", "32", false),
        ("randread", "128", false),
        ("read", "4", false),
        ("randwrite", "8", false),
        ("write", "2", false),
    ];
    if direct_ok {
        cases.push(("randread", "16", true));
        cases.push(("randwrite", "4", true));
    } else {
        common::skip("O_DIRECT cases (the test directory's filesystem refuses O_DIRECT)");
    }
    for (rw, qd, direct) in cases {
        let mut args = vec!["--rw", rw, "--bs", "4k", "--qd", qd, "--ops", "5000"];
        if direct {
            args.push("--direct");
        }
        args.push(f.to_str().unwrap());
        let o = run(&bin, &args, LIMIT);
        assert!(o.status.success(), "iobench {args:?}: {}", stderr(&o));
        let json = String::from_utf8_lossy(&o.stdout);
        let ops = number_before(&json, ",\"bytes\"");
        assert!(ops >= 5000, "{json}");
        assert_eq!(
            number_before(&json, ",\"allocs\""),
            ops * BS as u64,
            "{json}"
        );
        let n = number_before(&json, ",\"threads\"");
        assert_eq!(
            n, 0,
            "{n} allocations in {ops} {rw} operations at qd {qd} (direct: {direct})"
        );
    }
}

/// `iobench --threads N`: N threads, each with its own ring and pool, run the job side by
/// side; the totals are the sums of the per-thread figures, every thread ran exactly
/// `--ops` operations, nothing allocates while they run, and a bad count is refused
/// before FILE is touched.
#[test]
fn iobench_threads_run_side_by_side_and_add_up() {
    let (bin, dir) = or_skip!(tool("iobench"));
    let f = make(dir.path(), "bench.dat", 256 * BS as u64, 94);
    // (The thread-pool backend starts workers as load arrives: allocations then.)
    let uring = iocomplete::Ring::new().unwrap().backend() == iocomplete::BackendKind::Uring;
    for (rw, threads) in [("randread", "3"), ("write", "2"), ("randread", "1")] {
        let args = [
            "--rw",
            rw,
            "--bs",
            "4k",
            "--qd",
            "8",
            "--ops",
            "2000",
            "--threads",
            threads,
            f.to_str().unwrap(),
        ];
        let o = run(&bin, &args, LIMIT);
        assert!(o.status.success(), "iobench {args:?}: {}", stderr(&o));
        let json = String::from_utf8_lossy(&o.stdout);
        let n: u64 = threads.parse().unwrap();
        assert_eq!(number_before(&json, ",\"pool\""), n, "{json}");
        assert_eq!(number_before(&json, ",\"bytes\""), n * 2000, "{json}");
        let per = &json[json.find("\"per_thread\"").unwrap()..];
        assert_eq!(per.matches("\"ops\":2000,").count() as u64, n, "{json}");
        if uring {
            assert_eq!(
                number_before(&json, ",\"threads\""),
                0,
                "allocations: {json}"
            );
        }
    }
    // One pool shared by the threads (magazines over one arena), threads pinned: the same
    // totals, every slot of the shared pool back (iobench checks it, or fails).
    let args = [
        "--rw",
        "randread",
        "--bs",
        "4k",
        "--qd",
        "8",
        "--ops",
        "2000",
        "--threads",
        "2",
        "--shared-pool",
        "--pin",
        f.to_str().unwrap(),
    ];
    let o = run(&bin, &args, LIMIT);
    assert!(o.status.success(), "iobench {args:?}: {}", stderr(&o));
    let json = String::from_utf8_lossy(&o.stdout);
    assert!(
        json.contains("\"pool\":\"shared\",\"pinned\":true"),
        "{json}"
    );
    assert_eq!(number_before(&json, ",\"bytes\""), 4000, "{json}");
    if uring {
        assert_eq!(
            number_before(&json, ",\"threads\""),
            0,
            "allocations: {json}"
        );
    }
    // A bad count is refused with the usage status, and a missing FILE is not made.
    let missing = dir.path().join("never.dat");
    for bad in ["0", "257", "x"] {
        let o = run(
            &bin,
            &[
                "--rw",
                "randread",
                "--bs",
                "4k",
                "--qd",
                "1",
                "--size",
                "64k",
                "--threads",
                bad,
                missing.to_str().unwrap(),
            ],
            LIMIT,
        );
        assert_eq!(o.status.code(), Some(2), "--threads {bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--threads"), "{}", stderr(&o));
        assert!(!missing.exists(), "--threads {bad} created FILE");
    }
}

/// Outside attack on `--threads`: per-thread pools, each small enough to allocate alone
/// but together several times the machine's memory (64 threads, each pool about 1/16 of
/// RAM + swap), were built one by one and faulted in until the kernel's OOM killer ended
/// iobench (exit 137); they are refused (exit 2, naming `--threads`) before FILE is
/// created. The child runs with `oom_score_adj` 1000 so that, were it to regress, it and
/// nothing else would be the OOM killer's victim.
#[test]
fn iobench_threads_refuse_pools_that_cannot_all_be_allocated() {
    let (bin, dir) = or_skip!(tool("iobench"));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
        number_before(line, " kB")
    };
    let memory = (kib("MemTotal:") + kib("SwapTotal:")) * 1024;
    let slot = 64u64 << 20;
    let qd = (memory / 16).div_ceil(slot).max(1);
    if qd > 4096 {
        common::skip("more memory than 64 pools of 4096 x 64 MiB slots can exceed");
        return;
    }
    let qd = qd.to_string();
    let missing = dir.path().join("never.dat");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("echo 1000 > /proc/self/oom_score_adj && exec \"$0\" \"$@\"")
        .arg(&bin)
        .args([
            "--rw",
            "randread",
            "--bs",
            "64m",
            "--qd",
            &qd,
            "--ops",
            &qd,
            "--threads",
            "64",
            "--size",
            "128m",
        ])
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "64 pools of {qd} x 64 MiB ({memory} bytes of memory): {:?} {}",
        o.status,
        stderr(&o)
    );
    assert!(stderr(&o).contains("--threads"), "{}", stderr(&o));
    assert!(!missing.exists(), "FILE created");
}

/// Outside attack on `--threads` at a deep queue: a 500-operation warm-up could not grow
/// the ring's lazily sized tables to a `--qd` above about 512, so they grew in the
/// measured window (`--qd 4096`: `"allocs":3` per thread); the warm-up is now at least
/// twice `--qd`, and the measured window allocates nothing.
#[test]
fn iobench_threads_at_a_deep_queue_allocate_nothing_while_measured() {
    let (bin, dir) = or_skip!(tool("iobench"));
    or_skip!(common::needs_uring(
        &iocomplete::Ring::new().unwrap(),
        "no allocation while iobench measures (threads start workers as load arrives)"
    ));
    let f = make(dir.path(), "bench.dat", 256 * BS as u64, 95);
    for (qd, threads) in [("4096", "2"), ("1024", "1")] {
        let args = [
            "--rw",
            "randread",
            "--bs",
            "4k",
            "--qd",
            qd,
            "--ops",
            "8192",
            "--threads",
            threads,
            f.to_str().unwrap(),
        ];
        let o = run(&bin, &args, LIMIT);
        assert!(o.status.success(), "iobench {args:?}: {}", stderr(&o));
        let json = String::from_utf8_lossy(&o.stdout);
        let n: u64 = threads.parse().unwrap();
        assert_eq!(number_before(&json, ",\"bytes\""), n * 8192, "{json}");
        assert_eq!(
            number_before(&json, ",\"threads\""),
            0,
            "allocations at --qd {qd} x --threads {threads}: {json}"
        );
    }
}

/// Finding 12: `iobench` on a missing path silently created a 256 MiB file, and on a FIFO
/// hung in `open`. A missing FILE is created only when asked (`--size`); anything but a
/// regular file or a block device is refused, at once, naming it.
#[test]
fn iobench_creates_only_when_asked_and_refuses_what_it_cannot_bench() {
    let (bin, dir) = or_skip!(tool("iobench"));
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
    let bin = or_skip!(example("iobench"));
    let fs = or_skip!(SmallFs::new(8 << 20));
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
    let (bin, dir) = or_skip!(tool("iobench"));
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

/// 1 to 300 random extents with limits forcing many transfers: the output is the extents
/// in order, and the summary counts them; suffixes and the exact end of the file parse;
/// an extent past the end, a missing file and bad numbers fail with clear messages.
#[test]
fn gather_example_concatenates_extents_and_reports_clear_errors() {
    let (bin, dir) = or_skip!(tool("gather"));
    let size = 3u64 << 20;
    let path = make(dir.path(), "f", size, 38);
    let p = path.to_str().unwrap();
    let mut rng = common::rng(99);
    for (n, flags) in [
        (1, &[][..]),
        (5, &["--max-transfer", "1000"]),
        (50, &["--max-segments", "2", "--max-transfer", "64K"]),
        (300, &["--max-segments", "1", "--inflight", "8"]),
    ] {
        let mut v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        v.push(p.to_string());
        let mut want = Vec::new();
        for _ in 0..n {
            let len = 1 + rng.u64(..200_000);
            let off = rng.u64(..size - len + 1);
            v.push(format!("{off}:{len}"));
            want.extend_from_slice(&verify::expected(BS, 38, off, len as usize));
        }
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        let o = run(&bin, &args, LIMIT);
        let msg = stderr(&o);
        assert!(o.status.success(), "{n} extents: {msg}");
        assert_eq!(number_before(&msg, " extents"), n as u64, "{msg}");
        assert_eq!(number_before(&msg, " bytes in"), want.len() as u64, "{msg}");
        assert!(o.stdout == want, "{n} extents: output differs");
        if flags.contains(&"1000") {
            let transfers = number_before(&msg, " transfers");
            assert!(transfers >= want.len() as u64 / 1000, "{msg}");
        }
    }
    // Extents with suffixes, and the end of the file exactly.
    let end = format!("{}:4096", size - 4096);
    let o = run(&bin, &[p, "1K:2K", &end], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(number_before(&stderr(&o), " extents"), 2);
    let want = [
        verify::expected(BS, 38, 1024, 2048),
        verify::expected(BS, 38, size - 4096, 4096),
    ]
    .concat();
    assert!(o.stdout == want, "1K:2K and the last block: output differs");
    // Errors.
    let past = format!("{}:2", size - 1);
    refused(&bin, &[p, &past], &["past the end", &size.to_string()]);
    refused(
        &bin,
        &["/nonexistent/f", "0:1"],
        &["/nonexistent/f", "No such file"],
    );
    refused(&bin, &[p, "x:10"], &["bad number 'x'"]);
    refused(&bin, &[p, "10"], &["OFFSET:LEN"]);
    refused(&bin, &[p, "10:0"], &["empty"]);
    refused(&bin, &["--max-segments", "2000", p, "0:1"], &["bad number"]);
}

/// `gather` on a FIFO hung in `open`; on a directory or a character device it blamed the
/// extents. Anything but a regular file or block device is refused at once, naming it.
#[test]
fn gather_refuses_what_it_cannot_read_without_blocking() {
    let bin = or_skip!(example("gather"));
    let (dir, fifo) = common::disk_path("fifo");
    mkfifo(&fifo);
    for path in [fifo.as_path(), dir.path(), Path::new("/dev/null")] {
        let args = [path.to_str().unwrap(), "0:10"];
        refused(&bin, &args, &[NOT_A_FILE, args[0]]);
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

/// File to file (buffered and direct, several depths, header room on) and a pipe on stdin
/// to a pipe on stdout: every byte, counted in the summary; bad input: a clear error.
#[test]
fn cat_example_copies_files_pipes_and_reports_bad_input() {
    let (bin, dir) = or_skip!(tool("cat"));
    let size = (3 << 20) + 1234;
    let (src, want) = made(dir.path(), "src", size, 40);
    let src_s = src.to_str().unwrap();
    let out_path = dir.path().join("out");
    for args in [
        &["--pending", "1", src_s][..],
        &[
            "--pending",
            "8",
            "--chunk",
            "65536",
            "--header",
            "16",
            src_s,
        ],
        &[
            "--direct",
            "--pending",
            "4",
            "--chunk",
            "131072",
            "--ordered",
            src_s,
        ],
    ] {
        let out = Stdio::from(File::create(&out_path).unwrap());
        let o = run_with(&bin, args, Stdio::null(), Some(out), LIMIT);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(number_before(&stderr(&o), " bytes in"), size, "{args:?}");
        assert!(
            std::fs::read(&out_path).unwrap() == want,
            "{args:?}: output differs"
        );
    }

    // A pipe on stdin ("-") -> a pipe on stdout, drained by another thread.
    let (in_rx, in_tx) = pipe();
    let w = slow_writer(in_tx, want.clone(), 16);
    let o = run_with(&bin, &["-"], File::from(in_rx).into(), None, LIMIT);
    w.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(number_before(&stderr(&o), " bytes in"), size);
    assert!(o.stdout == want, "pipe output differs");

    // Bad input: a clear error, nothing written.
    refused(
        &bin,
        &["/nonexistent/file"],
        &["/nonexistent/file", "No such file"],
    );
    refused(&bin, &["--pending", "zero", src_s], &["--pending", "zero"]);
    refused(&bin, &["--chunk", "0", src_s], &["--chunk"]);
    refused(&bin, &["--bogus", src_s], &["--bogus"]);
    refused(&bin, &[], &["required", "<PATH>", "Usage"]);
    let probe = iocomplete::Ring::new()
        .unwrap()
        .register(common::open(&src, false, true))
        .map(|_| ());
    assert!(probe.is_ok());
    refused(
        &bin,
        &["--direct", "--chunk", "1000", src_s],
        &["1000", "alignment"],
    );
    let (in_rx, _in_tx) = pipe();
    let o = run_with(
        &bin,
        &["--direct", "-"],
        File::from(in_rx).into(),
        None,
        LIMIT,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("--direct"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

/// Review 2, item 3: `cat F >> F` read back its own output (1,131,072 bytes delivered from
/// a 1,000,000-byte file). As GNU cat does, an input that is stdout's regular file (the
/// same device and inode, by any name, or as stdin) is refused before anything is
/// written: "input file is output file", exit 1. `cat F > G`, `cat F >> G` and
/// `cat F | ...` are unaffected.
#[test]
fn cat_refuses_an_input_that_is_its_own_output() {
    let (bin, dir) = or_skip!(tool("cat"));
    let (f, want) = made(dir.path(), "F", 1_000_000, 92);
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

/// Finding 10, end to end: the `cat` binary on a named FIFO given by path, and on a pipe
/// as stdin given as `/dev/stdin` (and as `-`), exits with every byte.
#[test]
fn cat_binary_exits_on_a_fifo_path_and_on_dev_stdin() {
    let bin = or_skip!(example("cat"));
    let want = verify::expected(BS, 43, 0, 700_000);
    let limit = Duration::from_secs(30);

    // A FIFO by path: cat's open blocks until the writer opens its end.
    let dir = tempfile::tempdir().unwrap();
    let path = common::fd::fifo_in(dir.path());
    let feed = {
        let (want, path) = (want.clone(), path.clone());
        std::thread::spawn(move || {
            let mut tx = OpenOptions::new().write(true).open(&path).unwrap();
            std::io::Write::write_all(&mut tx, &want).unwrap();
        })
    };
    let o = run(&bin, &[path.to_str().unwrap()], limit);
    feed.join().unwrap();
    wrote(&o, &want, "FIFO path");

    // A pipe as stdin, named /dev/stdin (a reopen of the pipe) and `-` (the descriptor).
    for arg in ["/dev/stdin", "-"] {
        let (rx, tx) = pipe();
        let feed = slow_writer(tx, want.clone(), 64);
        let o = run_with(&bin, &[arg], File::from(rx).into(), None, limit);
        feed.join().unwrap();
        wrote(&o, &want, arg);
    }
}

// ---- fiforx ------------------------------------------------------------------------------

/// Review 2, item 4: `fiforx --len 0 PATH` exited 0 without reading. It reads exactly N
/// bytes, so N = 0 is bad input: a usage error (exit 2) naming `--len`, before PATH is
/// opened and with nothing written.
#[test]
fn fiforx_refuses_a_zero_length() {
    let bin = or_skip!(example("fiforx"));
    let (_dir, fifo) = common::disk_path("fifo");
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

/// `/proc/<this process>/fd/<fd>`: a path by which a child opens this process's `fd`.
fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

/// A named FIFO whose writer opens only once fiforx has opened it (fiforx must wait for it
/// rather than see end of file), and writes more than asked: fiforx takes exactly N.
#[test]
fn fiforx_reads_exactly_n_bytes_from_a_named_fifo() {
    let bin = or_skip!(example("fiforx"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    mkfifo(&path);
    let data = payload(30, 300_000);
    let (p, d) = (path.clone(), data.clone());
    let writer = std::thread::spawn(move || {
        // A non-blocking open for writing fails (ENXIO) until a reader has the FIFO open.
        let tx = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
            {
                Ok(tx) => break tx,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        };
        common::fd::set_blocking(tx.as_raw_fd());
        // Keeps the FIFO open for reading once fiforx is gone, so the rest can be written.
        let keep = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        // fiforx probes for data right after opening: the first byte comes well after
        // that, so it has to wait for the writer (a write within microseconds of the open
        // beat the probe about 1 run in 10 under load).
        std::thread::sleep(Duration::from_millis(500));
        let (tx, _) = trickle(tx, d, 30, 40_000, 2000).join().unwrap();
        (tx, keep)
    });
    let o = run(&bin, &["--len", "250000", path.to_str().unwrap()], LIMIT);
    drop(writer.join().unwrap());
    let msg = stderr(&o);
    assert!(o.status.success(), "{msg}");
    assert!(o.stdout == data[..250_000], "fiforx output differs");
    assert_eq!(number_before(&msg, " bytes in"), 250_000);
    assert!(number_before(&msg, " readiness waits") > 0, "{msg}");
    assert!(msg.contains("waited for a writer"), "{msg}");
    assert!(msg.contains("250000 bytes"), "{msg}");
}

/// `fiforx ... >> log`: an output opened O_APPEND takes the bytes after what it holds
/// (positional writes there would be refused: they cannot land where they say).
#[test]
fn fiforx_appends_to_an_append_only_output() {
    let bin = or_skip!(example("fiforx"));
    let (rx, tx) = pipe();
    let data = payload(32, 70_000);
    let writer = trickle(tx.into(), data.clone(), 32, 20_000, 500);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::write(&log, b"earlier\n").unwrap();
    let out = OpenOptions::new().append(true).open(&log).unwrap();
    let args = ["--len", "70000", &proc_path(&rx)];
    let o = run_with(&bin, &args, Stdio::null(), Some(out.into()), LIMIT);
    drop(writer.join().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(number_before(&stderr(&o), " bytes in"), 70_000);
    let got = std::fs::read(&log).unwrap();
    assert!(
        got[..8] == *b"earlier\n" && got[8..] == data[..],
        "appended output differs"
    );
}

/// `cmd | fiforx -`: stdin, an anonymous pipe, is read with `RWF_NOWAIT` (reopened through
/// `/proc/self/fd/0` it would be a FIFO open without `FMODE_NOWAIT`, and every read would
/// need a probe of its own — a zero linked timeout then, at half its peers' speed), the
/// bytes arrive intact, and the pipe's `O_NONBLOCK`, set for the run, is cleared again.
#[test]
fn fiforx_reads_piped_stdin_with_nowait_reads_and_restores_its_flags() {
    let bin = or_skip!(example("fiforx"));
    let (rx, tx) = pipe();
    // The same open file description as the child's stdin: its flags are visible here.
    let probe = rx.try_clone().unwrap();
    let data = payload(34, 600_000);
    let writer = trickle(tx.into(), data.clone(), 34, 64 << 10, 200);
    let o = run_with(
        &bin,
        &["--len", "600000", "-"],
        Stdio::from(rx),
        None,
        LIMIT,
    );
    drop(writer.join().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout == data, "fiforx output differs");
    let err = stderr(&o);
    assert_eq!(number_before(&err, " bytes in"), 600_000);
    assert!(err.contains("RWF_NOWAIT reads"), "{err}");
    // SAFETY: F_GETFL on a descriptor this test owns.
    let flags = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_GETFL) };
    assert!(
        flags >= 0 && flags & libc::O_NONBLOCK == 0,
        "O_NONBLOCK left set: {flags:#x}"
    );
}

/// A named FIFO on stdin (`fiforx - < fifo`) is reopened, and probed with `poll(2)` before
/// each read: the kernel gives FIFOs opened by path no `RWF_NOWAIT`. The summary says which.
#[test]
fn fiforx_reads_a_named_fifo_on_stdin_with_poll_first_reads() {
    let bin = or_skip!(example("fiforx"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    mkfifo(&path);
    let data = payload(35, 100_000);
    let w = {
        let (path, data) = (path.clone(), data.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().write(true).open(path).unwrap();
            std::io::Write::write_all(&mut f, &data).unwrap();
        })
    };
    let stdin = OpenOptions::new().read(true).open(&path).unwrap();
    let o = run_with(
        &bin,
        &["--len", "100000", "-"],
        Stdio::from(stdin),
        None,
        LIMIT,
    );
    w.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout == data, "fiforx output differs");
    let err = stderr(&o);
    assert!(err.contains("poll-first reads"), "{err}");
}

#[test]
fn fiforx_reports_eof_before_n_with_the_count_and_writes_what_came() {
    let bin = or_skip!(example("fiforx"));
    let (rx, tx) = pipe();
    let data = payload(31, 5000);
    let (tx, _) = trickle(tx.into(), data.clone(), 31, 1500, 1000)
        .join()
        .unwrap();
    drop(tx);
    let o = run(&bin, &["--len=8K", &proc_path(&rx)], LIMIT);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("after 5000 of 8192 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(
        o.stdout == data,
        "the bytes that arrived were not all written"
    );
}

#[test]
fn fiforx_refuses_bad_input_with_clear_messages() {
    let bin = or_skip!(example("fiforx"));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let code = |args: &[&str], want: i32, words: &[&str]| {
        let o = refused(&bin, args, words);
        assert_eq!(o.status.code(), Some(want), "{args:?}: {}", stderr(&o));
        o.stdout
    };
    code(
        &["--len", "10", missing.to_str().unwrap()],
        1,
        &["No such file"],
    );
    for bad in ["12x", "", "-3", "K", "99999999999999999999"] {
        code(&["--len", bad, "-"], 2, &["bad --len value"]);
    }
    refused(&bin, &["/dev/null"], &["required", "--len <N>"]);
    refused(&bin, &["--len", "1"], &["required", "<PATH>"]);
    let regular = dir.path().join("regular");
    std::fs::write(&regular, b"not a fifo").unwrap();
    let out = code(
        &["--len", "4", regular.to_str().unwrap()],
        1,
        &["regular file, not FIFO-like"],
    );
    assert!(out.is_empty());
    // Lengths with suffixes: exactly that many bytes.
    for (len, n) in [("64K", 65536usize), ("3M", 3 << 20)] {
        let (rx, tx) = pipe();
        let writer = trickle(tx.into(), payload(33, n + 100), 33, 1 << 20, 1);
        let o = run(&bin, &["--len", len, &proc_path(&rx)], LIMIT);
        drop(writer.join().unwrap());
        assert!(o.status.success(), "--len {len}: {}", stderr(&o));
        assert_eq!(o.stdout.len(), n, "--len {len}");
    }
}

// ---- every tool: --help and one bad argument ------------------------------------------------

/// Issue 16: `--help` printed only a usage line and exited 2 (`fiforx --help`: "unknown
/// option"). Every tool answers `--help` on stdout with exit 0, naming every option, and
/// with each default that has one.
#[test]
fn every_tool_answers_help_with_its_options_and_defaults() {
    let tools: [(&str, &[&str]); 6] = [
        (
            "copy",
            &[
                "--chunk <BYTES>",
                "--inflight <N>",
                "[default: 4]",
                "--serial",
                "--direct",
                "--progress",
                "<SRC>",
                "<DST>",
                "max_sectors_kb",
            ],
        ),
        (
            "gather",
            &[
                "--max-transfer <BYTES>",
                "[default: 2147479552]",
                "--max-segments <N>",
                "[default: 1024]",
                "--inflight <N>",
                "[default: 4]",
                "<FILE>",
                "<OFFSET:LEN>",
            ],
        ),
        (
            "cat",
            &[
                "--pending <N>",
                "[default: 2]",
                "--chunk <BYTES>",
                "[default: 128k]",
                "--header <BYTES>",
                "[default: 0]",
                "--direct",
                "--ordered",
                "<PATH>",
                "`-` is stdin",
            ],
        ),
        ("fiforx", &["--len <N>", "<PATH>", "`-` is stdin"]),
        (
            "iobench",
            &[
                "--rw <PATTERN>",
                "randread, read, randwrite or write",
                "--bs <BYTES>",
                "--qd <N>",
                "--direct",
                "--seconds <S>",
                "[default: 5]",
                "--ops <N>",
                "--size <BYTES>",
                "<FILE>",
            ],
        ),
        ("demo", &["[PATH]", "a new temporary file"]),
    ];
    for (name, words) in tools {
        let bin = or_skip!(example(name));
        let o = run(&bin, &["--help"], Duration::from_secs(20));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{name} --help: {}", stderr(&o));
        assert!(
            out.contains(&format!("Usage: {name} ")),
            "{name} --help: {out}"
        );
        for w in words.iter().chain(&["-h, --help"]) {
            assert!(out.contains(w), "{name} --help: {w:?} not in: {out}");
        }
    }
}

/// Issue 16: errors named internals ("pool slot length" for `--chunk 3g`, "targets must be
/// files" for a directory), and `copy SRC -` created a file named `-`. A bad argument
/// exits 2 before anything is opened, naming the argument and the value; `-` where a
/// named file is needed is refused, creating nothing.
#[test]
fn every_tool_names_the_argument_and_value_it_refuses() {
    let dir = common::disk_dir();
    let src = make(dir.path(), "src", 10_000, 94);
    let s = src.to_str().unwrap();
    let dst = dir.path().join("dst");
    let d = dst.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &[&str]); 8] = [
        (
            "copy",
            vec!["--chunk", "3g", s, d],
            &["--chunk", "'3g'", "1G"],
        ),
        ("copy", vec![s, "-"], &["'-'", "<DST>", "stdin/stdout"]),
        ("copy", vec!["-", d], &["'-'", "<SRC>", "stdin/stdout"]),
        (
            "gather",
            vec![s, "0:10", "5:x"],
            &["'5:x'", "<OFFSET:LEN>", "bad number 'x'"],
        ),
        (
            "cat",
            vec!["--header", "2M", s],
            &["--header", "'2M'", "1M"],
        ),
        ("fiforx", vec!["--len", "12x", "-"], &["--len", "'12x'"]),
        (
            "iobench",
            vec!["--rw", "sideways", "--bs", "4k", "--qd", "1", s],
            &["--rw", "'sideways'", "randread"],
        ),
        ("demo", vec!["-"], &["'-'", "[PATH]"]),
    ];
    for (name, args, words) in cases {
        let bin = or_skip!(example(name));
        let o = run(&bin, &args, Duration::from_secs(20));
        let msg = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name} {args:?}: {msg}");
        for w in words {
            assert!(
                msg.contains(w),
                "{name} {args:?}: {w:?} not in the message: {msg}"
            );
        }
        assert!(o.stdout.is_empty(), "{name} {args:?} wrote to stdout");
    }
    // Relative to the tools' working directory, this process's.
    assert!(
        !Path::new("-").exists(),
        "copy SRC - created a file named -"
    );
    assert!(!dst.exists(), "a refusal created DST");
}

// ---- the outside test of the example tools ---------------------------------------------

/// i16 items 1 and 2: `demo PATH` errors name PATH; a directory, a device and a FIFO with
/// no writer (whose open would block) are refused with exit 2 before any open.
#[test]
fn demo_names_path_and_refuses_what_is_not_a_regular_file() {
    let (bin, dir) = or_skip!(tool("demo"));
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let fifo = common::fd::fifo_in(dir.path());
    for p in [&sub, Path::new("/dev/null"), &fifo] {
        let s = p.to_str().unwrap();
        let o = refused(&bin, &[s], &["PATH", s, "not a regular file"]);
        assert_eq!(o.status.code(), Some(2), "{s}: {}", stderr(&o));
    }
    let missing = dir.path().join("nodir/x");
    let s = missing.to_str().unwrap();
    refused(&bin, &[s], &["PATH", s, "No such file"]);
}

/// i16 item 3: a DST on procfs is refused up front, naming DST, before anything is written.
#[test]
fn copy_refuses_a_pseudo_file_destination_naming_dst() {
    let (bin, dir) = or_skip!(tool("copy"));
    let (src, _) = made(dir.path(), "src.bin", 10_000, 5);
    refused(
        &bin,
        &[src.to_str().unwrap(), "/proc/version"],
        &["DST", "/proc/version", "procfs"],
    );
}

/// i16 item 4: a `--bs` misaligned for `--direct` is refused (exit 2, naming `--bs` and
/// its value) before FILE is created or filled.
#[test]
fn iobench_refuses_a_misaligned_bs_before_creating_file() {
    let (bin, dir) = or_skip!(tool("iobench"));
    let file = dir.path().join("newd");
    let f = file.to_str().unwrap();
    let args = [
        "--rw", "read", "--bs", "1000", "--direct", "--qd", "1", "--ops", "5", "--size", "1M", f,
    ];
    let o = refused(&bin, &args, &["--bs", "1000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!file.exists(), "FILE created: {}", stderr(&o));
}

/// i16 item 5: a buffer pool too large to allocate is refused naming `--bs` and `--qd`,
/// before FILE is created.
#[test]
fn iobench_refuses_an_unallocatable_pool_before_creating_file() {
    let (bin, dir) = or_skip!(tool("iobench"));
    let file = dir.path().join("newf");
    let f = file.to_str().unwrap();
    let args = [
        "--rw", "read", "--bs", "64M", "--qd", "4096", "--ops", "5", "--size", "1G", f,
    ];
    let o = refused(&bin, &args, &["--bs", "--qd"]);
    assert!(!file.exists(), "FILE created: {}", stderr(&o));
}

/// Outside test, finding 1: `cat` allocated about 12 pool slots of `--chunk` bytes
/// whatever the source, so `cat --chunk 1G small_file` took seconds of system time and GBs
/// of memory. The pool is now sized from `--pending` and a regular file's chunk is capped
/// at its size: under a 1 GiB address-space limit, such runs still copy the file.
#[test]
fn cat_sizes_its_pool_from_pending_and_the_file() {
    let (bin, dir) = or_skip!(tool("cat"));
    for (size, args) in [
        (6, &["--chunk", "1G"][..]),
        (6, &["--chunk", "512M", "--pending", "64"]),
        (300_000, &["--chunk", "64M", "--pending", "16"]),
    ] {
        let (src, want) = made(dir.path(), "small", size, 7);
        let out_path = dir.path().join("out");
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
            .arg(&bin)
            .args(args)
            .arg(&src)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cat {args:?} ({size} bytes): {}",
            stderr(&o)
        );
        assert!(
            std::fs::read(&out_path).unwrap() == want,
            "cat {args:?}: output differs"
        );
    }
}

/// Outside test, findings 2 and 3: `iobench --ops N` ran more than N measured operations
/// (`--ops 1` reported 2, `--qd 64 --ops 1` 128), and a read pattern with a `--size` past
/// the end of FILE was benched as if FILE were that large. `--ops N` now runs exactly N
/// (the warm-up is extra), `--ops` below `--qd` is refused, and so is a read pattern's
/// `--size` larger than FILE (exit 2, naming `--size`, the value and FILE's size).
#[test]
fn iobench_runs_exactly_ops_and_refuses_reads_past_the_file() {
    let (bin, dir) = or_skip!(tool("iobench"));
    let f = make(dir.path(), "f", 64 * BS as u64, 87);
    let fs = f.to_str().unwrap();
    let limit = Duration::from_secs(30);
    for (rw, qd, ops) in [
        ("randread", "1", 1u64),
        ("read", "1", 10),
        ("randread", "4", 10),
        ("randwrite", "8", 13),
        ("randread", "64", 64),
    ] {
        let n = ops.to_string();
        let args = ["--rw", rw, "--bs", "4k", "--qd", qd, "--ops", &n, fs];
        let o = run(&bin, &args, limit);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("\"ops\":{ops},\"bytes\":{},", ops * BS as u64)),
            "{args:?}: {out}"
        );
    }
    let o = run(
        &bin,
        &[
            "--rw", "randread", "--bs", "4k", "--qd", "64", "--ops", "1", fs,
        ],
        limit,
    );
    assert_eq!(o.status.code(), Some(2), "--ops below --qd: {}", stderr(&o));
    assert!(
        stderr(&o).contains("--ops 1 is below --qd 64"),
        "{}",
        stderr(&o)
    );

    for rw in ["randread", "read"] {
        let args = ["--rw", rw, "--bs", "4k", "--qd", "2", "--ops", "4"];
        let o = run(&bin, &[&args[..], &["--size", "3g", fs]].concat(), limit);
        let msg = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{rw} --size 3g: {msg}");
        assert!(
            msg.contains(&format!("--size {}", 3u64 << 30))
                && msg.contains(&format!("({} bytes)", 64 * BS)),
            "{rw} --size 3g: {msg}"
        );
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 64 * BS as u64);
        // No larger than FILE: benched.
        let o = run(&bin, &[&args[..], &["--size", "64k", fs]].concat(), limit);
        assert!(o.status.success(), "{rw} --size 64k: {}", stderr(&o));
    }
}

/// The demo end to end on a file it creates: every completion mode, verified byte for byte
/// by the demo itself, every slot back. Whatever backend the run has (CI runs this file
/// again with io_uring disabled system-wide, where it falls back to threads), the outcome
/// is the same.
#[test]
fn demo_runs_every_completion_mode_and_verifies_what_it_read() {
    let (bin, dir) = or_skip!(tool("demo"));
    let path = dir.path().join("demo.bin");
    let o = run(&bin, &[path.to_str().unwrap()], LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("verified 3670016 bytes byte-for-byte; every slot back in the pool"),
        "{out}"
    );
    // The one-line summary goes to stderr.
    assert!(
        stderr(&o).contains("demo: ok, 64 blocks, 3584 KiB verified"),
        "{}",
        stderr(&o)
    );
}
