//! Ring reads, waited for, queued, vectored, and shared buffers.

use std::sync::Arc;

use iocomplete::{Bufs, Completion, CompletionQueue, Op, Ring};

use crate::common::{self, alloc::counted};

/// The offset field of a verify block's header (bytes 8..16).
fn header_offset(data: &[u8]) -> u64 {
    u64::from_le_bytes(data[8..16].try_into().unwrap())
}

#[test]
fn steady_state_reads_do_not_allocate() {
    let (_dir, path) = common::verify::disk_file(64 * 4096, 3);
    let pool = common::pool_hdr(32, 4096, 16);
    let (mut ring, t) = common::ring_with(&pool, std::fs::File::open(&path).unwrap());

    // Warm-up: let every lazily-sized structure reach its steady size.
    let read_wait = |ring: &mut Ring, i: u64| {
        let off = (i % 64) * 4096;
        let b = ring
            .submit(Op::read(t, off, pool.try_get().unwrap()))
            .wait()
            .unwrap();
        let b = b.into_result().unwrap();
        assert_eq!(b.len(), 4096);
        // Check the block header in place.
        assert_eq!(header_offset(b.data()), off);
    };
    for i in 0..200 {
        read_wait(&mut ring, i);
    }
    let (_, n) = counted(|| {
        for i in 0..2000 {
            read_wait(&mut ring, i);
        }
    });
    assert_eq!(n, 0, "{n} allocations in 2000 read+wait operations");

    // Queue delivery with 16 reads in flight.
    let q = Arc::new(CompletionQueue::<Completion>::new(64));
    let cycle = |ring: &mut Ring, rounds: u64| {
        for r in 0..rounds {
            for k in 0..16u64 {
                let off = ((r * 16 + k) % 64) * 4096;
                ring.submit(Op::read(t, off, pool.try_get().unwrap()).tag(off))
                    .to_queue(&q);
            }
            let mut got = 0;
            while got < 16 {
                ring.run_once(None).unwrap();
                while let Some(c) = q.pop() {
                    let off = c.tag();
                    let b = c.into_result().unwrap();
                    assert_eq!(header_offset(b.data()), off);
                    got += 1;
                }
            }
        }
    };
    cycle(&mut ring, 20);
    let (_, n) = counted(|| cycle(&mut ring, 200));
    assert_eq!(n, 0, "{n} allocations in 3200 queued reads");

    // Vectored reads: the completion hands the buffer list back for the next readv, and
    // the ring reuses the iovec array of the previous one.
    let mut bufs = vec![pool.try_get().unwrap(), pool.try_get().unwrap()];
    let readv = |ring: &mut Ring, bufs: Vec<iocomplete::PoolBuf>, i: u64| {
        let off = (i % 32) * 8192;
        let mut bufs = bufs;
        for b in &mut bufs {
            b.set_len(4096).unwrap();
        }
        let mut c = ring.submit(Op::readv(t, off, bufs)).wait().unwrap();
        assert_eq!(c.result(), Ok(8192));
        match c.take_bufs() {
            Bufs::PoolList(v) => {
                assert_eq!(header_offset(v[1].data()), off + 4096);
                v
            }
            other => panic!("readv gave back {other:?}"),
        }
    };
    for i in 0..100 {
        bufs = readv(&mut ring, bufs, i);
    }
    let (b, n) = counted(|| {
        let mut b = bufs;
        for i in 0..1000 {
            b = readv(&mut ring, b, i);
        }
        b
    });
    drop(b);
    assert_eq!(n, 0, "{n} allocations in 1000 vectored reads");

    // Shared buffers: share, clone, drop — no allocation either.
    let (_, n) = counted(|| {
        for _ in 0..1000 {
            let s = pool.try_get().unwrap().share();
            let s2 = s.clone();
            drop(s);
            drop(s2);
        }
    });
    assert_eq!(n, 0, "{n} allocations in 1000 share/clone/drop");
    common::check_teardown(&ring, &[&pool]);
}
