use super::super::BufferPool;

/// A pool of one 4096-byte slot (not pre-faulted).
fn one_slot_pool() -> BufferPool {
    BufferPool::builder()
        .slots(1)
        .slot_len(4096)
        .populate(false)
        .build()
        .unwrap()
}

/// Two clones dropped on two threads: the slot returns exactly once, and only after
/// both are gone.
#[test]
fn shared_refcount_returns_slot_once() {
    loom::model(|| {
        let pool = one_slot_pool();
        let s = pool.try_get().unwrap().share();
        let s2 = s.clone();
        let t = loom::thread::spawn(move || drop(s2));
        drop(s);
        t.join().unwrap();
        assert_eq!(pool.stats().free, 1);
        // The returned slot can be taken again (it was pushed exactly once).
        let b = pool.try_get().unwrap();
        assert!(pool.try_get().is_err());
        drop(b);
    });
}

/// Two clones read the slot on two threads and drop; the slot's next owner writes it.
/// Every read must happen-before that write (loom tracks the slot's bytes through
/// `PoolInner::touch`).
fn shared_reads_then_reuse() {
    loom::model(|| {
        let pool = one_slot_pool();
        let s = pool.try_get().unwrap().share();
        let s2 = s.clone();
        // The next owner, started first so that only the free list can order it
        // after the readers (a spawn would carry the spawner's whole history).
        let p2 = pool.clone();
        let next = loom::thread::spawn(move || {
            if let Ok(mut b) = p2.try_get() {
                b.capacity_mut()[0] = 1;
            }
        });
        let t = loom::thread::spawn(move || {
            let _ = s2.data();
            drop(s2);
        });
        let _ = s.data();
        drop(s);
        t.join().unwrap();
        next.join().unwrap();
    });
}

#[test]
fn shared_reads_happen_before_the_slot_is_reused() {
    shared_reads_then_reuse();
}

/// Mutation: without the Acquire fence after the last decrement, the other clone's
/// read does not happen-before the next owner's write: loom reports the race.
#[test]
#[should_panic(expected = "Causality violation")]
fn without_the_drop_fence_a_read_races_the_next_owner() {
    crate::sync::mutation::without_fence("shared_buf.drop", shared_reads_then_reuse);
}

/// A slot returned on one thread while another takes: the taker gets it or sees
/// exhaustion, never the same slot twice.
#[test]
fn free_list_take_and_return_race() {
    loom::model(|| {
        let pool = one_slot_pool();
        let b = pool.try_get().unwrap();
        let p2 = pool.clone();
        let t = loom::thread::spawn(move || p2.try_get().ok().map(|b| b.slot()));
        drop(b);
        let _ = t.join().unwrap();
        assert_eq!(pool.stats().free, 1);
    });
}
