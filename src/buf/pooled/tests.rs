use crate::testing::pool;

#[test]
fn shared_clones_on_threads_return_slot_once() {
    let pool = pool(2);
    for _ in 0..200 {
        let mut b = pool.try_get().unwrap();
        b.extend_from_slice(b"shared").unwrap();
        let s = b.share();
        let clones: Vec<_> = (0..4).map(|_| s.clone()).collect();
        drop(s);
        let ts: Vec<_> = clones
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    assert_eq!(c.data(), b"shared");
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(pool.stats().free, 2);
    }
}

#[test]
fn set_len_beyond_capacity_is_typed_error() {
    let pool = pool(1);
    let mut b = pool.try_get().unwrap();
    let e = b.set_len(4097).unwrap_err();
    assert!(matches!(
        e.kind(),
        crate::ErrorKind::BufferTooSmall {
            need: 4097,
            have: 4096
        }
    ));
    assert_eq!(b.len(), 0);
}
