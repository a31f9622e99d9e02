//! Command-line pieces shared by the example tools: clap value parsers (byte counts,
//! bounded counts, named paths), the usage-error exit, and what a path is when it is
//! neither a regular file nor a block device.

// Each tool uses part of it.
#![allow(dead_code)]

use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Digits with an optional binary multiple: `4096`, `4096b`, `64k`, `64K`, `64KiB`, `1m`,
/// `2G`, `1T`. `None` when `s` is not such a count or the value overflows.
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        Some(b't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Value parser: a byte count ([`parse_bytes`]).
pub(crate) fn bytes(s: &str) -> Result<u64, String> {
    parse_bytes(s)
        .ok_or_else(|| format!("bad number '{s}': expected a byte count like 4096, 64K or 1M"))
}

/// The largest chunk (one pool slot): 1 GiB.
pub(crate) const MAX_CHUNK: u64 = 1 << 30;

/// Value parser: a chunk size, a byte count in `1..=1G`.
pub(crate) fn chunk(s: &str) -> Result<u64, String> {
    match bytes(s)? {
        n @ 1..=MAX_CHUNK => Ok(n),
        n => Err(format!(
            "{n} bytes is outside 1 byte..=1G (one buffer pool slot)"
        )),
    }
}

/// Value parser (built for `max`): a count in `1..=max`.
pub(crate) fn count(max: u32) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync {
    move |v| {
        v.parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("bad number '{v}': expected a count in 1..={max}"))
    }
}

/// Value parser: a path to a named file. `-` (stdin/stdout) is refused: the tool reads or
/// writes at offsets, which a stream has not.
pub(crate) fn named(s: &str) -> Result<PathBuf, String> {
    match s {
        "-" => Err(
            "'-' (stdin/stdout) cannot be used here: give a file or block device by name \
                    (this tool works at offsets); `cat` streams stdin and stdout"
                .to_string(),
        ),
        _ => Ok(PathBuf::from(s)),
    }
}

/// Exit with status 2 after printing `msg` as a usage error of `T`'s command line (for
/// checks that span several arguments).
pub(crate) fn usage_exit<T: clap::CommandFactory>(msg: impl std::fmt::Display) -> ! {
    T::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .exit()
}

/// `ROLE PATH: is a directory, not a regular file or block device` (what a tool that works
/// at offsets says of anything else).
pub(crate) fn not_a_file(role: &str, path: &Path, t: FileType) -> String {
    let what = if t.is_dir() {
        "is a directory"
    } else if t.is_fifo() {
        "is a FIFO"
    } else if t.is_char_device() {
        "is a character device"
    } else if t.is_socket() {
        "is a socket"
    } else {
        "is of another kind"
    };
    format!(
        "{role} {}: {what}, not a regular file or block device",
        path.display()
    )
}

/// A progress bar on stderr over `total` bytes, with rate and ETA; drawn only when stderr
/// is a terminal (hidden otherwise: [`indicatif::ProgressBar::is_hidden`]).
pub(crate) fn progress(total: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec}, ETA {eta}",
    )
    .expect("a valid template");
    indicatif::ProgressBar::new(total).with_style(style)
}

/// `path` as a C string, for a libc call.
pub(crate) fn c_path(path: &Path) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))
}
