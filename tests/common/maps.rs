//! Helpers for tests that check, through `/proc/self/maps`, that a dropped pool's arena is
//! unmapped.

use std::sync::{Mutex, MutexGuard};

/// Tests that check mappings run one at a time within their binary (take this first): a
/// pool made meanwhile by a parallel test could be mapped at the freed address.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `addr` is inside a mapping of this process.
pub fn mapped(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        (a..b).contains(&addr)
    })
}

/// A pool of `slots` 4 KiB slots with an 8-byte header.
pub fn small_pool(slots: usize) -> iocomplete::BufferPool {
    iocomplete::BufferPool::builder()
        .slots(slots)
        .slot_len(4096)
        .header_len(8)
        .build()
        .unwrap()
}

/// Every slot of `pool` is free again (`what` names the moment, for the message).
pub fn all_back(pool: &iocomplete::BufferPool, what: &str) {
    let st = pool.stats();
    assert_eq!(st.free, st.total, "{what}: {st:?}");
}
