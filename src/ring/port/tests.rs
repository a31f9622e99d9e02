use std::io::Write;
use std::time::Duration;

use super::*;
use crate::error::ErrorKind;
use crate::testing::{pipe, pool, run_until};

/// Drive the ring until the port has `n` events (bounded: fails rather than hangs).
fn collect<T: Copy>(ring: &mut Ring, port: &mut Port<T>, n: usize) -> Vec<PortEvent<T>> {
    let mut out = Vec::new();
    run_until(ring, &format!("port: fewer than {n} events"), |_| {
        out.extend(std::iter::from_fn(|| port.next()));
        out.len() >= n
    });
    out
}

#[test]
fn children_come_back_with_their_records_and_keys_are_reused() {
    let mut ring = Ring::new().unwrap();
    let mut port = Port::<u32>::new(4);
    let keys: Vec<usize> = (0..4u32)
        .map(|i| port.submit(&mut ring, Op::nop().tag(999), 100 + i))
        .collect();
    assert_eq!(port.in_flight(), 4);
    let mut got: Vec<u32> = collect(&mut ring, &mut port, 4)
        .into_iter()
        .map(|e| match e {
            PortEvent::Op(d) => {
                assert_eq!(d.result, Ok(0));
                assert!(!d.more);
                d.child
            }
            PortEvent::Timer { .. } => panic!("no timer was armed"),
        })
        .collect();
    got.sort();
    assert_eq!(got, [100, 101, 102, 103]);
    assert_eq!((port.in_flight(), port.timer_pending()), (0, false));
    // A freed key is reused: the map stays as small as the depth.
    let k = port.submit(&mut ring, Op::nop(), 7);
    assert!(keys.contains(&k));
    assert_eq!(port.find(|&c| c == 7), Some(k));
    collect(&mut ring, &mut port, 1);
    assert_eq!(ring.stats().stale_cqes, 0);
}

#[test]
fn a_refused_operation_completes_with_its_typed_error() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(1);
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[1; 10]).unwrap();
    let t = ring.register(f).unwrap();
    ring.close(t).unwrap();
    let mut port = Port::<()>::new(1);
    port.submit(&mut ring, Op::read(t, 0, pool.try_get().unwrap()), ());
    let ev = collect(&mut ring, &mut port, 1).pop();
    match ev {
        Some(PortEvent::Op(d)) => {
            assert_eq!(d.result.map_err(|e| e.kind()), Err(ErrorKind::StaleTarget));
            assert!(matches!(d.bufs, Bufs::Pool(_)), "the buffer comes back");
        }
        other => panic!("{other:?}"),
    }
    drop(port);
    assert_eq!(pool.stats().free, 1);
}

#[test]
fn the_timer_fires_or_is_cancelled_once() {
    let mut ring = Ring::new().unwrap();
    let mut port = Port::<()>::new(1);
    assert!(port.arm_timer(&mut ring, Duration::from_millis(1)));
    assert!(
        !port.arm_timer(&mut ring, Duration::from_millis(1)),
        "armed twice"
    );
    assert!(port.timer_pending());
    let ev = collect(&mut ring, &mut port, 1).pop();
    assert!(
        matches!(ev, Some(PortEvent::Timer { fired: true })),
        "{ev:?}"
    );
    assert!(!port.timer_pending());

    assert!(port.arm_timer(&mut ring, Duration::from_secs(3600)));
    assert!(port.cancel_timer(&mut ring));
    let ev = collect(&mut ring, &mut port, 1).pop();
    assert!(
        matches!(ev, Some(PortEvent::Timer { fired: false })),
        "{ev:?}"
    );
    assert!(!port.cancel_timer(&mut ring), "nothing armed");
    assert_eq!((port.in_flight(), port.timer_pending()), (0, false));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_deadline_no_kernel_timer_reaches_arms_nothing() {
    let mut ring = Ring::new().unwrap();
    let mut port = Port::<()>::new(1);
    for d in [Duration::MAX, Duration::from_secs(i64::MAX as u64)] {
        assert!(!port.arm_timer(&mut ring, d), "{d:?}");
    }
    assert!(port.arm_timer(
        &mut ring,
        Duration::from_secs(i64::MAX as u64 / 1_000_000_000 - 1)
    ));
    port.cancel_timer(&mut ring);
    collect(&mut ring, &mut port, 1);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn cancel_reaches_the_child_in_flight() {
    let mut ring = Ring::new().unwrap();
    let (r, _w) = pipe();
    let t = ring.register(r).unwrap();
    let mut port = Port::<u8>::new(2);
    let k = port.submit(&mut ring, Op::poll(t, libc::POLLIN as u32), 5);
    ring.poll().unwrap();
    assert!(port.next().is_none(), "a silent pipe is not readable");
    assert!(port.cancel(&mut ring, k));
    assert!(!port.cancel(&mut ring, k + 1), "no such child");
    let ev = collect(&mut ring, &mut port, 1).pop();
    match ev {
        Some(PortEvent::Op(d)) => {
            assert_eq!(d.child, 5);
            assert_eq!(d.result.map_err(|e| e.kind()), Err(ErrorKind::Cancelled));
        }
        other => panic!("{other:?}"),
    }
    assert!(!port.cancel(&mut ring, k), "already back");
}

#[test]
fn a_port_dropped_mid_flight_cancels_its_operations_and_timer_and_frees_nothing_early() {
    let mut ring = Ring::new().unwrap();
    let pool = pool(2);
    let (r, _w) = pipe();
    let t = ring.register(r).unwrap();
    let mut port = Port::<()>::new(2);
    port.cancel_on_drop(&mut ring).unwrap();
    port.submit(&mut ring, Op::read(t, 0, pool.try_get().unwrap()), ());
    assert!(port.arm_timer(&mut ring, Duration::from_secs(3600)));
    ring.poll().unwrap();
    assert_eq!(pool.stats().free, 1, "the kernel holds one buffer");
    drop(port);
    assert_eq!(pool.stats().free, 1, "not freed before its completion");
    // The wake-up poll the handle armed stays; the read and the timer must go.
    run_until(&mut ring, "dropped port's operations never ended", |r| {
        pool.stats().free == 2 && r.in_flight() <= 1
    });
    assert_eq!(ring.stats().stale_cqes, 0);
}

#[test]
fn has_events_tells_whether_next_has_something() {
    let mut ring = Ring::new().unwrap();
    let mut port = Port::<u8>::new(2);
    assert!(!port.has_events());
    port.submit(&mut ring, Op::nop(), 1);
    run_until(&mut ring, "the nop never completed", |_| port.has_events());
    assert!(matches!(port.next(), Some(PortEvent::Op(_))));
    assert!(!port.has_events());
    assert!(port.arm_timer(&mut ring, Duration::from_millis(1)));
    run_until(&mut ring, "the timer never fired", |_| port.has_events());
    assert!(matches!(
        port.next(),
        Some(PortEvent::Timer { fired: true })
    ));
    assert!(!port.has_events() && port.in_flight() == 0 && !port.timer_pending());
}
