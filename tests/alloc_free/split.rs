//! A split copy allocates nothing per chunk: 64 and 512 chunks, serial and 4 in flight.

use iocomplete::{Driver, Mode, Ring, SplitConfig, SplitDriver};

use crate::common::drivers::copy_job;
use crate::common::{self, alloc::thread_allocations, check_teardown, open, verify};

const BS: usize = 4096;
const PAR4: Mode = Mode::Parallel { max_in_flight: 4 };

#[test]
fn copying_allocates_nothing_per_chunk() {
    let dir = common::disk_dir();
    let mut ring = Ring::builder().ops(64).build().unwrap();
    let pool = common::pool(4, BS);
    ring.register_pool(&pool);
    let mut per_run = Vec::new();
    for (k, chunks) in [64u64, 512].into_iter().enumerate() {
        let size = chunks * BS as u64;
        let src = verify::file_in(dir.path(), &format!("src{k}"), size, 50 + k as u64);
        let dst = dir.path().join(format!("dst{k}"));
        let s = ring.register(open(&src, false, false)).unwrap();
        let d = ring.register(open(&dst, true, false)).unwrap();
        let job = copy_job(s, d, size);
        for mode in [Mode::Serial, PAR4] {
            let config = SplitConfig::new().mode(mode).max_chunk(BS as u64);
            let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
            let before = thread_allocations();
            let done = drv.run(&mut ring).unwrap();
            per_run.push((mode, chunks, thread_allocations() - before));
            assert_eq!((done.status, done.bytes), (Ok(()), size));
            assert!(drv.stats().child_ops >= 2 * chunks);
        }
        verify::check_file_prefix(&dst, size, 50 + k as u64);
    }
    // The same allocations (none, in fact) for 8 times the chunks: nothing per chunk.
    for mode in [Mode::Serial, PAR4] {
        let counts: Vec<u64> = per_run
            .iter()
            .filter(|r| r.0 == mode)
            .map(|r| r.2)
            .collect();
        assert_eq!(counts[0], counts[1], "{mode:?}: {per_run:?}");
        assert_eq!(counts[1], 0, "{mode:?}: {per_run:?}");
    }
    check_teardown(&ring, &[&pool]);
}
