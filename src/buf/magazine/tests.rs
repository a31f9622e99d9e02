use super::*;

#[test]
fn owner_is_lifo_thief_is_fifo_and_cap_holds() {
    let m = Magazine::new();
    assert!(m.claim());
    assert!(!m.claim());
    for s in 0..4 {
        assert!(m.push(s, 4));
    }
    assert!(!m.push(9, 4), "bounded by cap");
    assert_eq!(m.len(), 4);
    assert_eq!(m.steal(), Some(0));
    assert_eq!(m.pop(), Some(3));
    assert_eq!(m.pop(), Some(2));
    assert_eq!(m.steal(), Some(1));
    assert_eq!(m.pop(), None);
    assert_eq!(m.steal(), None);
    // Wraps around the array many times.
    for i in 0..1000u32 {
        assert!(m.push(i, MAG_SLOTS));
        if i % 3 == 0 {
            assert_eq!(m.steal(), Some(i));
        } else {
            assert_eq!(m.pop(), Some(i));
        }
    }
    assert_eq!(m.len(), 0);
    m.release();
    assert!(m.claim());
}

/// Owner pushing and popping against two thieves: every slot comes out exactly once.
#[test]
fn owner_and_thieves_take_each_slot_once() {
    use std::sync::atomic::AtomicBool;
    let m = std::sync::Arc::new(Magazine::new());
    assert!(m.claim());
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let thieves: Vec<_> = (0..2)
        .map(|_| {
            let (m, done) = (m.clone(), done.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !done.load(Ordering::Acquire) {
                    if let Some(v) = m.steal() {
                        got.push(v);
                    }
                }
                while let Some(v) = m.steal() {
                    got.push(v);
                }
                got
            })
        })
        .collect();
    let n = 200_000u32;
    let mut mine = Vec::new();
    let mut next = 0u32;
    while next < n {
        while next < n && m.push(next, 8) {
            next += 1;
        }
        if next % 2 == 0 {
            mine.extend(m.pop());
        }
    }
    while let Some(v) = m.pop() {
        mine.push(v);
    }
    done.store(true, Ordering::Release);
    let mut all = mine;
    for t in thieves {
        all.extend(t.join().unwrap());
    }
    all.sort_unstable();
    assert_eq!(all.len(), n as usize, "a slot lost or taken twice");
    assert!(all.iter().copied().eq(0..n));
}
