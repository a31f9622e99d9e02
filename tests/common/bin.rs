//! Example binaries run as users run them: child processes, each bounded by a timeout (a
//! hang fails the test instead of hanging it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The example binary `name`, built now by the cargo running these tests, so it is
/// current even when only one test file was built — in the same target directory, for
/// the same target triple (an ASan run builds with `--target`, and its `RUSTFLAGS` must
/// not reach the host's proc macros), and the same profile. `None` (a skip, reported) only
/// when no cargo runs these tests and the binary is not there; a failed build fails the
/// test.
pub fn example(name: &str) -> Option<PathBuf> {
    let found = build(name);
    if found.is_none() {
        super::skip(&format!("the {name} example binary is not built"));
    }
    found
}

/// Examples with `required-features` (Cargo.toml), and those features.
const FEATURES: &[(&str, &str)] = &[("tokio_cat", "tokio")];

fn build(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent()?.parent()?.to_path_buf(); // target/[triple/]<profile>/deps/..
    let bin = profile_dir.join("examples").join(name);
    let Ok(cargo) = std::env::var("CARGO") else {
        return bin.exists().then_some(bin);
    };
    let mut c = Command::new(cargo);
    c.args(["build", "--quiet", "--example", name]);
    if let Some((_, features)) = FEATURES.iter().find(|(n, _)| *n == name) {
        c.args(["--features", features]);
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    // target/<triple>/<profile>: build for that triple, into that target directory.
    let triple_dir = profile_dir.parent()?;
    let triple = triple_dir.file_name()?.to_str()?;
    if triple.contains("-linux-") {
        c.args(["--target", triple]);
        c.env("CARGO_TARGET_DIR", triple_dir.parent()?);
    } else {
        c.env("CARGO_TARGET_DIR", triple_dir);
    }
    let status = c.status().unwrap();
    assert!(status.success(), "cargo build --example {name} failed");
    Some(bin)
}

/// The default bound on one run.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Run `bin` with `args` (stdin empty, stdout captured); kill it and fail if it runs past
/// `limit`.
pub fn run(bin: &Path, args: &[&str], limit: Duration) -> Output {
    run_with(bin, args, Stdio::null(), None, limit)
}

/// Run `bin` with `args`, `stdin`, and `stdout` (a pipe, captured, when `None`); kill it
/// and fail if it runs past `limit`.
pub fn run_with(
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

/// What `o` wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
