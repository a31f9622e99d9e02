#![allow(dead_code, unreachable_pub)]
//! Skipping a test, loudly: `cargo test` hides what a skipped test prints.

/// Report that a test cannot run here, and why. Under `CI=true` this panics instead: CI
/// runs as root on a machine with loop devices, FUSE and a recent kernel, so a missing
/// facility there is a broken environment, and `cargo test` would hide a printed skip.
#[track_caller]
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("test would skip under CI=true: {reason}");
    }
    eprintln!("SKIP: {reason}");
}
