//! `TransferPlan` against a naive byte-by-byte planner: raw builder values (invalid ones
//! must come back as typed errors), then the chunks of a request checked for coverage,
//! order, every limit, alignment and equality with the reference; `chunk_len` resumed from
//! any chunk agrees, and is total on arbitrary inputs.
#![no_main]

use iocomplete::split::{Chunk, TransferPlan};
use iocomplete::ErrorKind;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    max_chunk: Option<u32>,
    boundary: u32,
    align: u32,
    raw_align: bool,
    segments: Option<(u16, u8)>,
    offset: u64,
    small_offset: bool,
    len: u16,
    /// Arbitrary `chunk_len` probes: (offset, pos, remaining).
    probes: Vec<(u64, u64, u64)>,
}

/// Requests are at most 64 KiB, so the byte-by-byte reference stays cheap.
const MAX_LEN: u64 = 1 << 16;

/// The naive planner: walk the request byte by byte; a byte joins the current chunk unless
/// that would break a limit.
fn naive(plan: &TransferPlan, offset: u64, len: u64) -> Vec<Chunk> {
    let boundary = plan.boundary().unwrap_or(0);
    let seg = (
        plan.segment_len().unwrap_or(0),
        plan.max_segments().unwrap_or(0),
    );
    let mut out: Vec<Chunk> = Vec::new();
    for i in 0..len {
        let off = offset + i;
        if let Some(c) = out.last_mut().filter(|c| {
            c.end() == off
                && c.len < plan.max_chunk()
                && (boundary == 0 || off % boundary != 0)
                && (seg.0 == 0 || i / seg.0 < c.pos / seg.0 + u64::from(seg.1))
        }) {
            c.len += 1;
        } else {
            let first = Chunk {
                offset: off,
                len: 1,
                pos: i,
            };
            out.push(first);
        }
    }
    out
}

fuzz_target!(|i: Input| {
    // Mostly small powers of two (the interesting alignments), sometimes the raw value.
    let align = if i.raw_align {
        i.align
    } else {
        1 << (i.align % 13)
    };
    let mut b = TransferPlan::builder().boundary(u64::from(i.boundary));
    if let Some(m) = i.max_chunk {
        b = b.max_chunk(u64::from(m));
    }
    b = b.align(align);
    if let Some((len, n)) = i.segments {
        b = b.segments(u64::from(len), u32::from(n));
    }
    let plan = match b.build() {
        Ok(p) => p,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::InvalidInput { .. } | ErrorKind::Misaligned { .. }
                ),
                "unexpected error kind {e:?}"
            );
            // Invalid for a reason the builder documents.
            let a = align.max(1);
            let a64 = u64::from(a);
            let max = i.max_chunk.map_or(u64::MAX, u64::from);
            let seg_bad = i
                .segments
                .is_some_and(|(l, n)| (l == 0) != (n == 0) || u64::from(l) % a64 != 0);
            assert!(
                !a.is_power_of_two()
                    || max - max % a64 == 0
                    || u64::from(i.boundary) % a64 != 0
                    || seg_bad,
                "valid config refused: {e:?}"
            );
            return;
        }
    };
    // Normalisation: max chunk rounded down to the alignment.
    let a = u64::from(plan.align());
    assert!(plan.align().is_power_of_two());
    let max = i.max_chunk.map_or(u64::MAX, u64::from);
    assert_eq!(plan.max_chunk(), max - max % a);

    // `chunk_len` is total: 1..=remaining for any inputs, aligned for aligned ones.
    for &(off, pos, rem) in i.probes.iter().take(16) {
        let n = plan.chunk_len(off, pos, rem);
        if rem == 0 {
            assert_eq!(n, 0);
        } else {
            assert!(
                (1..=rem).contains(&n),
                "chunk_len({off}, {pos}, {rem}) = {n}"
            );
            if off % a == 0 && pos % a == 0 && rem % a == 0 {
                assert_eq!(n % a, 0, "chunk_len({off}, {pos}, {rem}) = {n} misaligned");
            }
        }
        let _ = plan.segment_span(pos, rem);
    }

    let offset = if i.small_offset {
        i.offset % (1 << 20)
    } else {
        i.offset
    };
    let len = u64::from(i.len) % MAX_LEN;
    let chunks = match plan.chunks(offset, len) {
        Ok(c) => c,
        Err(e) => {
            let misaligned = offset % a != 0 || len % a != 0;
            let overflow = offset.checked_add(len).is_none();
            assert!(misaligned || overflow, "valid request refused: {e:?}");
            assert!(matches!(
                e.kind(),
                ErrorKind::InvalidInput { .. } | ErrorKind::Misaligned { .. }
            ));
            return;
        }
    };
    let (lo, hi) = chunks.size_hint();
    let got: Vec<Chunk> = chunks.collect();
    assert!(
        lo <= got.len() && hi.is_none_or(|h| got.len() <= h),
        "size_hint"
    );

    let mut next = offset;
    for c in &got {
        assert_eq!(c.offset, next, "chunks in order, no gap or overlap");
        assert_eq!(c.pos, c.offset - offset);
        assert!(c.len > 0 && c.len <= plan.max_chunk(), "chunk length {c:?}");
        assert_eq!(c.offset % a, 0, "aligned offset {c:?}");
        assert_eq!(c.len % a, 0, "aligned length {c:?}");
        if let Some(bd) = plan.boundary() {
            assert_eq!(
                c.offset / bd,
                (c.end() - 1) / bd,
                "crosses a boundary: {c:?}"
            );
        }
        if let Some(n) = plan.max_segments() {
            let (_, touched) = plan.segment_span(c.pos, c.len);
            assert!(touched <= u64::from(n), "{c:?} touches {touched} segments");
        }
        // Resuming the plan from this chunk gives this chunk.
        assert_eq!(plan.chunk_len(c.offset, c.pos, len - c.pos), c.len);
        next = c.end();
    }
    assert_eq!(next, offset + len, "chunks cover the range");
    // With alignment 1 the greedy byte walk is the reference; aligned limits make the
    // aligned greedy plan the same cut.
    assert_eq!(
        got,
        naive(&plan, offset, len),
        "differs from the naive planner"
    );
});
