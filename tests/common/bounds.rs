//! Keeping a test bounded in time: a regression must fail the run, never hang it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exits the process (failing the run) if not dropped within its time: the backstop for a
/// hang on the test's own thread, which [`bounded`] cannot catch.
pub struct Watchdog(Option<mpsc::Sender<()>>);

/// A [`Watchdog`] for the test `name`, `secs` seconds from now.
pub fn watchdog(name: &'static str, secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            eprintln!("WATCHDOG: {name} still running after {secs} s: hang");
            std::process::exit(101);
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Run `f` on a thread of its own and return its value; fail (not hang) if it takes more
/// than `secs`; resume its panic if it panicked.
pub fn bounded<T: Send + 'static>(
    what: &str,
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let v = f();
        let _ = tx.send(());
        v
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {secs} s (hang)")
        }
    }
}

/// Wait up to `secs` for `cond`; its last answer.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}
