//! Helpers for tests of many rings and messages between them.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use iocomplete::{Ring, RingHandle};

use super::verify;

/// Block size of [`verify_file`].
pub const BS: usize = 4096;

/// An unlinked file of `blocks` verify blocks of [`BS`] bytes, generated from `seed`.
pub fn verify_file(blocks: usize, seed: u64) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    let mut data = vec![0u8; blocks * BS];
    for (i, b) in data.chunks_mut(BS).enumerate() {
        verify::fill_block(b, (i * BS) as u64, seed);
    }
    f.write_all(&data).unwrap();
    f
}

/// Run `f` on ring `h`'s thread with the ring and return what it returns (20 s at most).
pub fn on_ring<T: Send + 'static>(
    h: &RingHandle,
    f: impl FnOnce(&mut Ring) -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    h.post(move |r| {
        let _ = tx.send(f(r.expect("the ring runs")));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the message ran")
}

/// The name of the calling thread.
pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// `n` counters at 0.
pub fn counters(n: usize) -> Arc<Vec<AtomicU32>> {
    Arc::new((0..n).map(|_| AtomicU32::new(0)).collect())
}

/// Every counter exactly 1.
pub fn assert_once(counts: &[AtomicU32], what: &str) {
    let bad: Vec<(usize, u32)> = counts
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .enumerate()
        .filter(|&(_, n)| n != 1)
        .take(8)
        .collect();
    assert!(
        bad.is_empty(),
        "{what} not exactly once (index, count): {bad:?}"
    );
}
