//! Pool geometry and header/data/trailer arithmetic: arbitrary builder values must either
//! be refused with a typed error or give a geometry whose invariants hold; then arbitrary
//! operations on the buffers (take, fill header/data/trailer, set_len, share, clone,
//! drop) must keep every header, data area and trailer in bounds, adjacent where the
//! contract says so, disjoint between slots, and never let a write through one region
//! show up in another. A shadow model checks the bytes.
#![no_main]

use iocomplete::{BufferPool, ErrorKind, PoolBuf, SharedBuf};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    slots: u8,
    slot_len: u32,
    header_len: u32,
    trailer_len: u32,
    align: u32,
    ops: Vec<FrameOp>,
}

#[derive(Debug, Arbitrary)]
enum FrameOp {
    Take,
    Drop(u8),
    SetLen(u8, u32),
    Extend(u8, u16),
    Clear(u8),
    FillHeader(u8),
    FillTrailer(u8),
    Share(u8),
    CloneShared(u8),
    DropShared(u8),
}

/// What a unique buffer should hold.
struct Live {
    buf: PoolBuf,
    /// Byte every header byte holds (after a fill), if filled.
    header: Option<u8>,
    trailer: Option<u8>,
    /// `data()[..known]` holds `pattern(slot, i)`.
    known: usize,
}

/// Slots held: one per live buffer, one per distinct shared slot.
fn held(live: &[Live], shared: &[(SharedBuf, Vec<u8>)]) -> usize {
    let slots: std::collections::HashSet<_> = shared.iter().map(|s| s.0.slot()).collect();
    live.len() + slots.len()
}

fn pattern(slot: u32, i: usize) -> u8 {
    (i as u32)
        .wrapping_mul(31)
        .wrapping_add(slot.wrapping_mul(17)) as u8
}

const MAX_SLOT_LEN: u64 = 1 << 30;

fuzz_target!(|i: Input| {
    // Bounded so the arena stays small in memory: values past the bounds are folded
    // back; values the builder must refuse (0, non-powers of two, > 2 MiB alignment) stay.
    let slots = usize::from(i.slots % 17);
    let slot_len = (i.slot_len % (4 << 20)) as usize;
    let header_len = (i.header_len % (1 << 20)) as usize;
    let trailer_len = (i.trailer_len % (1 << 20)) as usize;
    let align = if i.align & 0x8000_0000 != 0 {
        (i.align & 0x3f_ffff) as usize // any value up to 4 MiB, mostly not a power of two
    } else {
        1usize << (i.align % 23) // powers of two up to 4 MiB
    };
    let built = BufferPool::builder()
        .slots(slots)
        .slot_len(slot_len)
        .header_len(header_len)
        .trailer_len(trailer_len)
        .align(align)
        .populate(false)
        .build();
    let must_refuse = slots == 0
        || !align.is_power_of_two()
        || align > (2 << 20)
        || slot_len == 0
        || slot_len as u64 > MAX_SLOT_LEN;
    let pool = match built {
        Err(e) => {
            assert!(must_refuse, "valid builder refused: {e}");
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::OutOfRange { .. } | ErrorKind::NotPowerOfTwo { .. }
                ),
                "{e:?}"
            );
            return;
        }
        Ok(p) => {
            assert!(!must_refuse, "invalid builder accepted");
            p
        }
    };
    let g = pool.geometry();
    assert_eq!(
        (g.slots, g.header_len, g.trailer_len, g.align),
        (slots, header_len, trailer_len, align)
    );
    assert!(g.capacity >= slot_len && g.capacity - slot_len < align);
    assert_eq!(g.capacity % align, 0);
    assert!(g.head_room >= header_len && g.head_room - header_len < align);
    assert_eq!(g.head_room % align, 0);
    let used = g.head_room + g.capacity + trailer_len;
    assert!(g.stride >= used && g.stride - used < align && g.stride % align == 0);
    assert_eq!(g.arena_len, g.stride * slots);

    let mut live: Vec<Live> = Vec::new();
    let mut shared: Vec<(SharedBuf, Vec<u8>)> = Vec::new();
    let mut base: Option<usize> = None;
    let check_buf = |b: &PoolBuf, base: &mut Option<usize>| {
        let data = b.data_ptr() as usize;
        assert_eq!(data % align, 0, "data not aligned");
        assert_eq!(b.capacity(), g.capacity);
        assert_eq!(b.header().len(), header_len);
        assert_eq!(
            b.header().as_ptr() as usize + header_len,
            data,
            "header not adjacent"
        );
        assert_eq!(b.frame().as_ptr() as usize + header_len, data);
        assert_eq!(b.frame().len(), header_len + b.len());
        assert_eq!(b.data().as_ptr() as usize, data);
        assert!(b.len() <= b.capacity());
        let slot_start = data - g.head_room;
        let arena = slot_start - b.slot() as usize * g.stride;
        assert_eq!(
            *base.get_or_insert(arena),
            arena,
            "slots of one arena disagree"
        );
        assert!(
            data + g.capacity + trailer_len <= arena + g.arena_len,
            "out of the arena"
        );
    };
    for op in i.ops.iter().take(64) {
        match *op {
            FrameOp::Take => match pool.try_get() {
                Ok(b) => {
                    check_buf(&b, &mut base);
                    assert!(live.iter().all(|l| l.buf.slot() != b.slot()), "slot twice");
                    assert!(shared.iter().all(|s| s.0.slot() != b.slot()), "slot twice");
                    live.push(Live {
                        buf: b,
                        header: None,
                        trailer: None,
                        known: 0,
                    });
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::PoolExhausted);
                    assert_eq!(held(&live, &shared), slots, "exhausted with free slots");
                }
            },
            FrameOp::Drop(k) if !live.is_empty() => {
                live.swap_remove(usize::from(k) % live.len());
            }
            FrameOp::SetLen(k, len) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[usize::from(k) % n];
                let n = len as usize % (g.capacity + 2);
                let before = l.buf.len();
                match l.buf.set_len(n) {
                    Ok(()) => l.known = l.known.min(n),
                    Err(e) => {
                        assert!(n > g.capacity);
                        assert!(matches!(e.kind(), ErrorKind::BufferTooSmall { .. }));
                        assert_eq!(l.buf.len(), before);
                    }
                }
            }
            FrameOp::Extend(k, len) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[usize::from(k) % n];
                let start = l.buf.len();
                let slot = l.buf.slot();
                let bytes: Vec<u8> = (start..start + usize::from(len))
                    .map(|j| pattern(slot, j))
                    .collect();
                match l.buf.extend_from_slice(&bytes) {
                    Ok(()) => {
                        if l.known == start {
                            l.known = start + bytes.len();
                        }
                    }
                    Err(_) => {
                        assert!(start + bytes.len() > g.capacity);
                        assert_eq!(l.buf.len(), start);
                    }
                }
            }
            FrameOp::Clear(k) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[usize::from(k) % n];
                l.buf.clear();
                l.known = 0;
                assert!(l.buf.is_empty() && l.buf.frame().len() == header_len);
            }
            FrameOp::FillHeader(k) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[usize::from(k) % n];
                let v = k ^ 0xA5;
                l.buf.header_mut().fill(v);
                l.header = Some(v);
            }
            FrameOp::FillTrailer(k) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[usize::from(k) % n];
                let v = k ^ 0x5A;
                let data = l.buf.data_ptr() as usize;
                let t = l.buf.trailer_mut();
                assert_eq!(t.len(), trailer_len);
                if trailer_len > 0 {
                    assert_eq!(
                        t.as_ptr() as usize,
                        data + g.capacity,
                        "trailer not after data"
                    );
                }
                t.fill(v);
                l.trailer = Some(v);
            }
            FrameOp::Share(k) if !live.is_empty() => {
                let l = live.swap_remove(usize::from(k) % live.len());
                let frame = l.buf.frame().to_vec();
                let s = l.buf.share();
                assert_eq!(s.frame(), &frame[..]);
                assert_eq!(s.header().len(), header_len);
                assert_eq!(s.ref_count(), 1);
                shared.push((s, frame));
            }
            FrameOp::CloneShared(k) if !shared.is_empty() => {
                let (s, f) = &shared[usize::from(k) % shared.len()];
                let c = s.clone();
                assert_eq!(c.frame(), &f[..]);
                assert!(c.ref_count() >= 2);
                let f = f.clone();
                shared.push((c, f));
            }
            FrameOp::DropShared(k) if !shared.is_empty() => {
                shared.swap_remove(usize::from(k) % shared.len());
            }
            _ => {}
        }
        // Every region still holds what was written to it: no write leaked into another
        // region or another slot.
        for l in &mut live {
            check_buf(&l.buf, &mut base);
            if let Some(h) = l.header {
                assert!(l.buf.header().iter().all(|&x| x == h), "header changed");
            }
            let slot = l.buf.slot();
            assert!(
                l.buf.data()[..l.known]
                    .iter()
                    .enumerate()
                    .all(|(j, &x)| x == pattern(slot, j)),
                "data changed"
            );
            if let Some(t) = l.trailer {
                assert!(
                    l.buf.trailer_mut().iter().all(|&x| x == t),
                    "trailer changed"
                );
            }
        }
        for (s, f) in &shared {
            assert_eq!(s.frame(), &f[..], "shared frame changed");
        }
        let st = pool.stats();
        assert_eq!(st.free, slots - held(&live, &shared), "free count wrong");
    }
    drop(live);
    drop(shared);
    let st = pool.stats();
    assert_eq!(st.free, st.total, "slots leaked");
});
