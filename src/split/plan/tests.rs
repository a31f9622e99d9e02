use super::*;
use crate::split::oracle::naive_chunks;
use fastrand::Rng;

fn check_invariants(plan: &TransferPlan, offset: u64, len: u64, chunks: &[Chunk]) {
    let a = u64::from(plan.align());
    let mut next = offset;
    for c in chunks {
        assert_eq!(c.offset, next, "contiguous");
        assert_eq!(c.pos, c.offset - offset, "position");
        assert!(c.len > 0 && c.len <= plan.max_chunk());
        assert_eq!(c.offset % a, 0);
        assert_eq!(c.len % a, 0);
        if let Some(b) = plan.boundary() {
            assert_eq!(c.offset / b, (c.end() - 1) / b, "crosses boundary: {c:?}");
        }
        if let Some(m) = plan.max_segments() {
            assert!(plan.segment_span(c.pos, c.len).1 <= u64::from(m), "{c:?}");
        }
        next = c.end();
    }
    assert_eq!(next, offset + len, "covers the request");
}

#[test]
fn matches_naive_model_on_random_inputs() {
    let cases = if cfg!(miri) { 50 } else { 3_000 };
    let mut rng = Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    for case in 0..cases {
        let align = 1u32 << rng.u64(..5); // 1..=16
        let a = u64::from(align);
        let max_chunk = 1 + rng.u64(..200);
        let boundary = if rng.u64(..3) == 0 {
            0
        } else {
            a * (1 + rng.u64(..20))
        };
        let seg = if rng.u64(..3) == 0 {
            (0, 0)
        } else {
            (a * (1 + rng.u64(..8)), 1 + rng.u32(..4))
        };
        let mut b = TransferPlan::builder()
            .max_chunk(max_chunk)
            .boundary(boundary)
            .align(align);
        if seg.0 != 0 {
            b = b.segments(seg.0, seg.1);
        }
        let plan = match b.build() {
            Ok(p) => p,
            Err(e) => {
                assert!(max_chunk < a, "case {case}: {e}");
                continue;
            }
        };
        let offset = a * rng.u64(..300);
        let len = a * rng.u64(..1200 / a + 1);
        let got: Vec<Chunk> = plan.chunks(offset, len).unwrap().collect();
        let want = naive_chunks(plan.max_chunk(), boundary, seg, offset, len);
        assert_eq!(got, want, "case {case}: {plan:?} offset {offset} len {len}");
        check_invariants(&plan, offset, len, &got);
    }
}

#[test]
fn builder_normalises_and_validates() {
    let p = TransferPlan::builder()
        .max_chunk(1000)
        .align(512)
        .build()
        .unwrap();
    assert_eq!(p.max_chunk(), 512);
    assert_eq!(
        TransferPlan::builder().build().unwrap().max_chunk(),
        u64::MAX
    );
    let e = TransferPlan::builder().align(3).build().unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::NotPowerOfTwo {
            what: "alignment",
            value: 3
        }
    );
    let chunk = |min| ErrorKind::OutOfRange {
        what: "max chunk",
        min,
        max: u64::MAX,
    };
    let e = TransferPlan::builder()
        .max_chunk(100)
        .align(512)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), chunk(512));
    let e = TransferPlan::builder().max_chunk(0).build().unwrap_err();
    assert_eq!(e.kind(), chunk(1));
    let e = TransferPlan::builder()
        .align(512)
        .boundary(1000)
        .build()
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Misaligned {
            what: "boundary",
            value: 1000,
            align: 512
        }
    );
    let e = TransferPlan::builder()
        .align(512)
        .segments(100, 4)
        .build()
        .unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Misaligned {
            what: "segment length",
            ..
        }
    ));
    let e = TransferPlan::builder().segments(0, 4).build().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }));
    let e = TransferPlan::builder()
        .segments(4096, 0)
        .build()
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }));
    // align(0) means none.
    assert_eq!(TransferPlan::builder().align(0).build().unwrap().align(), 1);
}

#[test]
fn requests_are_checked() {
    let p = TransferPlan::builder().align(512).build().unwrap();
    let e = p.chunks(100, 512).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            align: 512
        }
    );
    let e = p.chunks(512, 100).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Misaligned {
            what: "length",
            value: 100,
            align: 512
        }
    );
    let p = TransferPlan::builder().build().unwrap();
    assert!(p.chunks(u64::MAX, 1).is_err());
    assert_eq!(p.chunks(u64::MAX, 0).unwrap().count(), 0);
}

#[test]
fn segments_limit_counts_a_partial_first_segment() {
    // Segments of 4 KiB, at most 2 per chunk, request at position 0 but a boundary at
    // 6 KiB forces a chunk to start mid-segment.
    let p = TransferPlan::builder()
        .segments(4096, 2)
        .boundary(6144)
        .build()
        .unwrap();
    let got: Vec<(u64, u64)> = p
        .chunks(0, 16384)
        .unwrap()
        .map(|c| (c.pos, c.len))
        .collect();
    // [0,6144) touches 2 segments; [6144,12288) touches segments 1 and 2 only;
    // [12288,16384) one segment.
    assert_eq!(got, [(0, 6144), (6144, 6144), (12288, 4096)]);
    assert_eq!(p.segment_span(6144, 6144), (1, 2));
    assert_eq!(p.segment_span(6144, 0), (0, 0));
}

#[test]
fn iterator_is_fused_and_hints_sizes() {
    let p = TransferPlan::builder().max_chunk(10).build().unwrap();
    let mut it = p.chunks(0, 25).unwrap();
    assert_eq!(it.size_hint(), (3, Some(25)));
    assert_eq!(it.by_ref().count(), 3);
    assert_eq!(it.next(), None);
    assert_eq!(it.remaining(), 0);
    assert_eq!(it.size_hint(), (0, Some(0)));
}

/// The plan of a device's limits (the limits `ring`'s sysfs test reads from a fake
/// sysfs tree).
#[test]
fn a_plan_builder_from_block_limits() {
    let l = BlockLimits {
        logical_block_size: 4096,
        max_chunk: 1280 * 1024,
        max_segments: Some(128),
        max_segment_size: None,
    };
    let plan = l.plan_builder().build().unwrap();
    assert_eq!((plan.max_chunk(), plan.align()), (1280 * 1024, 4096));
}

#[test]
fn chunk_len_is_total() {
    let p = TransferPlan::builder()
        .max_chunk(4096)
        .boundary(512)
        .segments(4096, 1)
        .build()
        .unwrap();
    let mut rng = Rng::with_seed(7);
    for _ in 0..10_000 {
        let (o, pos, r) = (rng.u64(..), rng.u64(..), rng.u64(..) >> rng.u64(..64));
        let l = p.chunk_len(o, pos, r);
        assert!(if r == 0 { l == 0 } else { (1..=r).contains(&l) });
    }
    assert_eq!(p.chunk_len(u64::MAX, u64::MAX, u64::MAX), 1);
}

#[test]
fn a_chunk_built_by_hand_never_overflows() {
    // `Chunk`'s fields are public: any values, no panic.
    let c = Chunk {
        offset: u64::MAX,
        len: 2,
        pos: 0,
    };
    assert_eq!(c.end(), u64::MAX);
}

#[test]
fn chunks_of_a_huge_request_do_not_overflow() {
    let p = TransferPlan::builder()
        .max_chunk(1 << 40)
        .segments(1 << 30, u32::MAX)
        .build()
        .unwrap();
    let c: Vec<Chunk> = p.chunks(0, u64::MAX).unwrap().take(2).collect();
    assert_eq!(c[0].len, 1 << 40);
    assert_eq!(c[1].offset, 1 << 40);
}
