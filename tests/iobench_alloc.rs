//! `iobench`'s I/O loop — the very file the example runs, included below — performs no
//! heap allocation per operation in steady state: counted with a counting global
//! allocator over thousands of operations, for each access pattern, at several queue
//! depths, page-cached and O_DIRECT.

#[path = "../examples/iobench/engine.rs"]
mod engine;

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use engine::{Engine, Job, Rw};
use iocomplete::{BufferPool, BufferRegistration, Ring};

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/skip.rs"]
mod skip;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

static SERIAL: Mutex<()> = Mutex::new(());

use alloc::counted;

const BS: usize = 4096;
const BLOCKS: u64 = 256;

/// Run `ops` operations of `rw` at depth `qd` after a warm-up; return the allocations
/// counted during the measured run.
fn allocations(path: &std::path::Path, rw: Rw, qd: usize, direct: bool, ops: u64) -> u64 {
    let mut ring = Ring::builder()
        .entries(qd.next_power_of_two().max(8) as u32)
        .single_issuer(true)
        .defer_taskrun(true)
        .build()
        .or_else(|_| Ring::builder().build())
        .unwrap();
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(rw.is_write());
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let target = ring.register(opts.open(path).unwrap()).unwrap();
    let pool = BufferPool::builder()
        .slots(qd)
        .slot_len(BS)
        .build()
        .unwrap();
    assert!(matches!(
        ring.register_pool(&pool),
        BufferRegistration::Fixed
    ));
    let job = Job {
        rw,
        bs: BS,
        qd,
        blocks: BLOCKS,
    };
    let mut engine = Engine::new(job, target, &pool);
    // Warm-up: the ring's completion FIFO and op table reach their steady size.
    engine.run(&mut ring, |t, _| t.ops >= 500).unwrap();
    engine.reset();
    let (r, n) = counted(|| engine.run(&mut ring, |t, _| t.ops >= ops));
    r.unwrap();
    assert!(engine.totals.ops >= ops);
    assert_eq!(engine.totals.bytes, engine.totals.ops * BS as u64);
    assert_eq!(engine.totals.lat.len(), engine.totals.ops);
    // Teardown invariants: every operation completed once, every slot back.
    let s = ring.stats();
    assert_eq!(s.submitted, s.completed, "{s:?}");
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(pool.stats().free, qd);
    n
}

#[test]
fn iobench_loop_allocates_nothing_per_operation() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("bench.dat");
    std::fs::write(&path, vec![0x5a; BS * BLOCKS as usize]).unwrap();
    let direct_ok = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_ok();
    let mut cases = vec![
        (Rw::RandRead, 1, false),
        (Rw::RandRead, 32, false),
        (Rw::RandRead, 128, false),
        (Rw::Read, 4, false),
        (Rw::RandWrite, 8, false),
        (Rw::Write, 2, false),
    ];
    if direct_ok {
        cases.push((Rw::RandRead, 16, true));
        cases.push((Rw::RandWrite, 4, true));
    } else {
        skip::skip("O_DIRECT cases (the test directory's filesystem refuses O_DIRECT)");
    }
    for (rw, qd, direct) in cases {
        let n = allocations(&path, rw, qd, direct, 5000);
        assert_eq!(
            n, 0,
            "{n} allocations in 5000 {rw:?} operations at qd {qd} (direct: {direct})"
        );
    }
}

#[test]
fn histogram_percentiles_match_a_sorted_reference() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = engine::Histogram::new();
    let mut vals: Vec<u64> = (0..10_000u64)
        .map(|i| (i * 2_654_435_761) % 3_000_000 + 1)
        .collect();
    for &v in &vals {
        h.record(v);
    }
    vals.sort_unstable();
    for p in [1.0, 50.0, 90.0, 99.0, 99.9] {
        let exact = vals[((p / 100.0 * vals.len() as f64).ceil() as usize).max(1) - 1];
        let got = h.percentile(p);
        let err = (got as f64 - exact as f64).abs() / exact as f64;
        assert!(err < 0.04, "p{p}: histogram {got}, exact {exact}");
    }
    for v in 0..200u64 {
        let mut one = engine::Histogram::new();
        one.record(v);
        let got = one.percentile(50.0);
        assert!(got.abs_diff(v) <= v / 30 + 1, "{v} -> {got}");
    }
}
