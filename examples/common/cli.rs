//! Command-line pieces shared by the example tools: byte counts, bounded counts, and the
//! usage-error exit.

// Each tool uses part of it.
#![allow(dead_code)]

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

/// A byte count ([`parse_bytes`]), or the error `bad number 's'`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s).ok_or_else(|| format!("bad number '{s}'"))
}

/// The value of `flag`, a count in `1..=max`.
pub(crate) fn parse_count(flag: &str, v: &str, max: u32) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("bad number '{v}' for {flag} (1..={max})"))
}

/// The parsed command line, or exit with status 2 after printing why, as `tool: error`.
pub(crate) fn or_usage_exit<T>(tool: &str, parsed: Result<T, String>) -> T {
    parsed.unwrap_or_else(|e| {
        eprintln!("{tool}: {e}");
        std::process::exit(2)
    })
}

/// `path` as a C string, for a libc call.
pub(crate) fn c_path(path: &std::path::Path) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))
}
