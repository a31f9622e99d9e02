//! `Submission::to_ring` + `Ring::pop_completion`: the ring's own completion FIFO.

mod common;

use iocomplete::{ErrorKind, Op, Ring};

#[test]
fn ring_fifo_delivers_every_completion_once_with_its_buffer() {
    let (_dir, path) = common::verify::disk_file(64 * 4096, 11);
    let mut ring = Ring::builder().entries(16).build().unwrap();
    let pool = common::pool_hdr(17, 4096, 8);
    ring.register_pool(&pool);
    let t = ring.register(std::fs::File::open(&path).unwrap()).unwrap();

    let mut next = 0u64;
    let mut seen = vec![0u32; 64];
    for _ in 0..16 {
        ring.submit(Op::read(t, next * 4096, pool.try_get().unwrap()).tag(next))
            .to_ring();
        next += 1;
    }
    // An invalid request (zero length) completes through the same FIFO, without the kernel.
    let mut empty = pool.try_get().unwrap();
    empty.clear();
    ring.submit(Op::write(t, 0, empty).tag(1000)).to_ring();
    assert_eq!(ring.ready_len(), 1, "rejected op is delivered at once");
    let mut rejected = 0;
    while ring.in_flight() > 0 || ring.ready_len() > 0 {
        ring.run_once(None).unwrap();
        while let Some(c) = ring.pop_completion() {
            if c.tag() == 1000 {
                // (`t` is open read-only: the write is refused as such before its
                // length is looked at.)
                assert_eq!(c.error().unwrap().kind(), ErrorKind::NotWritable);
                rejected += 1;
                continue;
            }
            let block = c.tag();
            let buf = c.into_result().unwrap();
            common::verify::check_block(buf.data(), block * 4096, 11).unwrap();
            seen[block as usize] += 1;
            if next < 64 {
                ring.submit(Op::read(t, next * 4096, buf).tag(next))
                    .to_ring();
                next += 1;
            }
        }
    }
    assert_eq!(rejected, 1);
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    assert!(ring.pop_completion().is_none());
    common::check_teardown(&ring, &[&pool]);
}

#[test]
fn run_wait_returns_a_whole_batch_and_caps_at_in_flight() {
    let mut ring = Ring::builder().entries(16).build().unwrap();
    for i in 0..8 {
        ring.submit(Op::nop().tag(i)).to_ring();
    }
    // Asking for more than is in flight waits for what there is, not forever.
    let n = ring
        .run_wait(100, Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(n, 8);
    assert_eq!(ring.ready_len(), 8);
    assert_eq!(ring.in_flight(), 0);
    let mut tags: Vec<u64> = std::iter::from_fn(|| ring.pop_completion())
        .map(|c| c.tag())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..8).collect::<Vec<_>>());
    // Nothing in flight: returns at once.
    assert_eq!(ring.run_wait(4, None).unwrap(), 0);
    common::check_teardown(&ring, &[]);
}
