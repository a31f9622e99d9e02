use super::*;
use crate::sync::mutation::without_fence;
use crate::sync::{Arc, AtomicUsize};

/// The hand-back: the owner holds two slots and gives its magazine back (pops
/// everything, as a thread's exit or a cache eviction does) while another thread
/// steals twice (as `get`s on an empty shared list do). Every slot comes out exactly
/// once and nothing is left behind.
fn hand_back() {
    loom::model(|| {
        let m = Arc::new(Magazine::new());
        assert!(m.claim());
        assert!(m.push(1, 2));
        assert!(m.push(2, 2));
        let m2 = m.clone();
        let thief = loom::thread::spawn(move || {
            let mut got = Vec::new();
            got.extend(m2.steal());
            got.extend(m2.steal());
            got
        });
        let mut got = Vec::new();
        while let Some(v) = m.pop() {
            got.push(v);
        }
        m.release();
        got.extend(thief.join().unwrap());
        // Whatever the owner missed because a thief held `top` at that moment is still
        // there for the next thief.
        got.extend(m.steal());
        got.sort_unstable();
        assert_eq!(got, [1, 2], "a slot lost or handed out twice");
    });
}

#[test]
fn magazine_hand_back_takes_each_slot_once() {
    hand_back();
}

/// Mutation: without the owner's fence, the owner takes the bottom slot without a
/// CAS while the thief, not seeing the owner's smaller `bottom`, steals it too.
#[test]
#[should_panic(expected = "handed out twice")]
fn without_the_pop_fence_a_slot_is_taken_twice() {
    without_fence("magazine.pop", hand_back);
}

/// Mutation: the same without the thief's fence.
#[test]
#[should_panic(expected = "handed out twice")]
fn without_the_steal_fence_a_slot_is_taken_twice() {
    without_fence("magazine.steal", hand_back);
}

/// The last slot: the owner's pop against a thief's steal; exactly one gets it.
#[test]
fn magazine_last_slot_goes_to_exactly_one() {
    loom::model(|| {
        let m = Arc::new(Magazine::new());
        assert!(m.claim());
        assert!(m.push(7, 1));
        let m2 = m.clone();
        let thief = loom::thread::spawn(move || m2.steal());
        let mine = m.pop();
        let theirs = thief.join().unwrap();
        assert!(
            mine.is_some() != theirs.is_some(),
            "taken twice or lost: {mine:?} {theirs:?}"
        );
    });
}

/// The orphaning handshake of `PoolInner::push_own` and `PoolInner::orphan`, step for
/// step: a buffer returned to its thread's magazine while the pool's last handle is
/// dropped. Either the dropper's scan finds the slot or the returning thread sees
/// `orphaned` and returns the slot to the shared list: never neither (the arena would
/// be kept alive by an idle magazine), never both; and the dropper never frees the
/// pool (here: sets `freed`) while the returning thread may still touch it.
fn orphan_handshake() {
    loom::model(|| {
        let m = Arc::new(Magazine::new());
        let orphaned = Arc::new(AtomicBool::new(false));
        let freed = Arc::new(AtomicBool::new(false));
        assert!(m.claim());
        let (m2, o2, f2) = (m.clone(), orphaned.clone(), freed.clone());
        let dropper = loom::thread::spawn(move || {
            o2.store(true, Ordering::Relaxed);
            asym::heavy("pool.orphan");
            m2.wait_idle();
            let mut got = Vec::new();
            while let Some(s) = m2.steal() {
                got.push(s);
            }
            f2.store(true, Ordering::Relaxed);
            got
        });
        m.set_busy(true);
        asym::light("pool.put");
        let kept = !orphaned.load(Ordering::Relaxed) && m.push(5, 1);
        // Once pushed, the slot's credit is no longer this thread's: the dropper must
        // not have released the pool yet. (Not pushed, the thread still holds the
        // credit, which keeps the pool alive whatever the dropper did.)
        assert!(
            !(kept && freed.load(Ordering::Relaxed)),
            "the pool was freed under a returning thread"
        );
        m.set_busy(false);
        let mut got = if kept { Vec::new() } else { vec![5] };
        got.extend(dropper.join().unwrap());
        assert_eq!(got, [5], "slot stranded in a magazine, or taken twice");
    });
}

#[test]
fn orphaned_pool_never_leaves_a_slot_in_a_magazine() {
    orphan_handshake();
}

#[test]
#[should_panic(expected = "stranded")]
fn without_the_put_fence_an_orphaned_slot_is_stranded() {
    without_fence("pool.put", orphan_handshake);
}

#[test]
#[should_panic(expected = "stranded")]
fn without_the_orphan_fence_an_orphaned_slot_is_stranded() {
    without_fence("pool.orphan", orphan_handshake);
}

/// The waiting handshake of `PoolInner::push_own` and `PoolInner::register` /
/// `take_for_waiter`, step for step: a buffer returned to its thread's magazine while a
/// get registers as a waiter. Either the returning thread sees the waiter (and the slot
/// goes to it through the shared path instead), or the waiter's scan — wait out the
/// owner's `busy` window, then `len`, then steal — finds the slot: never neither (the
/// slot would sit in the magazine of a thread that may never get again while the waiter
/// waits forever), never both.
///
/// (`Waiters::register` issues a SeqCst fence of its own before the heavy one; it is left
/// out here because outside loom the owner's side is a compiler fence, which only the
/// heavy `membarrier` pairs with.)
fn register_handshake() {
    loom::model(|| {
        let m = Arc::new(Magazine::new());
        let waiting = Arc::new(AtomicUsize::new(0));
        assert!(m.claim());
        let (m2, w2) = (m.clone(), waiting.clone());
        let waiter = loom::thread::spawn(move || {
            w2.store(1, Ordering::Relaxed);
            asym::heavy("pool.register");
            m2.wait_idle();
            if m2.len() > 0 {
                m2.steal()
            } else {
                None
            }
        });
        m.set_busy(true);
        asym::light("pool.put");
        let kept = waiting.load(Ordering::Relaxed) == 0 && m.push(5, 1);
        m.set_busy(false);
        // Not kept: the returning thread hands it to the waiter itself.
        let mut got = if kept { Vec::new() } else { vec![5] };
        got.extend(waiter.join().unwrap());
        assert_eq!(
            got,
            [5],
            "slot stranded in a magazine while a get waits, or taken twice"
        );
    });
}

#[test]
fn slot_returned_while_a_get_registers_is_never_stranded() {
    register_handshake();
}

#[test]
#[should_panic(expected = "stranded")]
fn without_the_put_fence_a_waiter_is_stranded() {
    without_fence("pool.put", register_handshake);
}

#[test]
#[should_panic(expected = "stranded")]
fn without_the_register_fence_a_waiter_is_stranded() {
    without_fence("pool.register", register_handshake);
}
