//! iocomplete's async layer on tokio (feature `tokio`): the ring runs on a tokio task
//! (`iocomplete::tokio::spawn`, `AsyncFd` on the ring's descriptor), on a current-thread
//! runtime (the peer of tokio-uring, which is single-threaded). The ring is set up as the
//! native engine's (a `BufferPool` of QD slots registered as fixed buffers, READ_FIXED; a
//! registered file) with `single_issuer`, which a current-thread runtime allows. QD tasks
//! (`tokio::spawn`) each loop: take a buffer (`pool.try_get()`: QD slots for QD reads, one
//! is always free) -> `RingHandle::submit_future(read)` -> `.await` -> check -> drop the
//! buffer back to the pool -> next offset. At the end: `shutdown`, and the driver hands
//! back the idle ring (nothing in flight).
//!
//! No `defer_taskrun`: its completions need an `io_uring_enter` to be posted and do not
//! make the ring's descriptor readable, so the driver would sleep through them (a handle's
//! submission after the driver went to sleep never completes). Without `single_issuer`
//! (a plain ring) it measured the same (one 2 s run).
//!
//! For A/B only (run.sh never sets it): `IOC_TASKS=local` spawns the QD tasks with
//! `spawn_local` on a `LocalSet`, `IOC_TASKS=one` runs one task that polls QD `OpFuture`s
//! itself (a fixed-size select-all: no task per read). Both measured the same as QD
//! `tokio::spawn` tasks (3 paired 2 s runs, `cached`: within 4 %).
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use iocomplete::{BufferPool, BufferRegistration, Op, OpFuture, PoolBuf, Ring, RingHandle, Target};
use iocomplete_peers::{fail, read_loop, spec, verify, Meter, Spec};

const ENGINE: &str = "iocomplete_tokio";

fn err(what: &str, e: iocomplete::Error) -> ! {
    fail(ENGINE, &format!("{what}: {e}"))
}

/// One read's buffer: the completion's, checked (a short read or bad data exits).
fn checked(c: iocomplete::Completion, off: u64, bs: usize) -> PoolBuf {
    let buf = c
        .into_result()
        .unwrap_or_else(|e| err(&format!("read at {off}"), e));
    verify(ENGINE, buf.data(), off, bs);
    buf
}

/// What every task needs.
#[derive(Clone)]
struct Ctx {
    spec: Arc<Spec>,
    meter: Arc<Meter>,
    handle: RingHandle,
    pool: BufferPool,
    target: Target,
}

impl Ctx {
    /// Worker `i`: get a buffer, submit, await, check, give the buffer back; again.
    async fn worker(self, i: usize) {
        let bs = self.spec.bs();
        let (h, pool, target) = (&self.handle, &self.pool, self.target);
        read_loop(&self.spec, &self.meter, i, (), |(), off| async move {
            let buf = pool.try_get().unwrap_or_else(|e| err("pool", e));
            let c = h.submit_future(Op::read_len(target, off, buf, bs)).await;
            drop(checked(c, off, bs));
        })
        .await;
    }

    /// All QD reads from one task: QD `OpFuture`s polled in turn on every wake-up.
    async fn select_all(self) {
        let (qd, bs) = (self.spec.qd(), self.spec.bs());
        let submit = |off: u64| {
            let buf = self.pool.try_get().unwrap_or_else(|e| err("pool", e));
            self.handle
                .submit_future(Op::read_len(self.target, off, buf, bs))
        };
        let mut gens: Vec<_> = (0..qd).map(|i| self.spec.offsets(i)).collect();
        let mut offs: Vec<u64> = gens.iter_mut().map(|g| g.next()).collect();
        let mut futs: Vec<Option<OpFuture>> = offs.iter().map(|&o| Some(submit(o))).collect();
        let mut live = qd;
        let mut stopping = false;
        poll_fn(|cx| {
            for i in 0..qd {
                // A new future is polled at once: that registers the waker its completion
                // wakes (it is pending: the ring starts it only when the driver next runs).
                while let Some(f) = futs[i].as_mut() {
                    let Poll::Ready(c) = Pin::new(f).poll(cx) else {
                        break;
                    };
                    drop(checked(c, offs[i], bs));
                    if self.meter.done() {
                        stopping = true;
                    }
                    if stopping {
                        futs[i] = None;
                        live -= 1;
                    } else {
                        offs[i] = gens[i].next();
                        futs[i] = Some(submit(offs[i]));
                    }
                }
            }
            if live == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

fn main() {
    let spec = Arc::new(spec(ENGINE));
    let (qd, bs) = (spec.qd(), spec.bs());
    let entries = (qd as u32).next_power_of_two().max(8);
    let tasks = std::env::var("IOC_TASKS").unwrap_or_default();
    let mut ring = Ring::builder()
        .entries(entries)
        .cq_entries(entries * 2)
        .files(4)
        .buffers(4)
        .ops(qd * 2 + 16)
        .single_issuer(true)
        .build()
        .unwrap_or_else(|e| err("ring", e));
    let pool = BufferPool::builder()
        .slots(qd)
        .slot_len(bs)
        .build()
        .unwrap_or_else(|e| err("pool", e));
    let fixed = matches!(ring.register_pool(&pool), BufferRegistration::Fixed);
    let target = ring
        .register(spec.open_std())
        .unwrap_or_else(|e| err("register", e));
    let fixed_files = ring.capabilities().fixed_files;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap_or_else(|e| fail(ENGINE, &format!("runtime: {e}")));
    let meter = Arc::new(Meter::new(&spec));
    let stats = rt.block_on(async {
        let (handle, driver) = iocomplete::tokio::spawn(ring).unwrap_or_else(|e| err("spawn", e));
        let ctx = Ctx {
            spec: spec.clone(),
            meter: meter.clone(),
            handle: handle.clone(),
            pool: pool.clone(),
            target,
        };
        match tasks.as_str() {
            "one" => ctx.select_all().await,
            "local" => {
                let set = tokio::task::LocalSet::new();
                set.run_until(async {
                    let ts: Vec<_> = (0..qd)
                        .map(|i| tokio::task::spawn_local(ctx.clone().worker(i)))
                        .collect();
                    for t in ts {
                        t.await
                            .unwrap_or_else(|e| fail(ENGINE, &format!("task: {e}")));
                    }
                })
                .await
            }
            _ => {
                let ts: Vec<_> = (0..qd)
                    .map(|i| tokio::spawn(ctx.clone().worker(i)))
                    .collect();
                for t in ts {
                    t.await
                        .unwrap_or_else(|e| fail(ENGINE, &format!("task: {e}")));
                }
            }
        }
        handle.shutdown();
        let ring = driver
            .await
            .unwrap_or_else(|e| fail(ENGINE, &format!("driver task: {e}")))
            .unwrap_or_else(|e| err("driver", e));
        if ring.in_flight() != 0 {
            fail(ENGINE, "the ring came back with reads in flight");
        }
        ring.stats()
    });
    if pool.stats().free != qd {
        fail(ENGINE, "a buffer did not come back to the pool");
    }
    meter.report(
        &spec,
        &format!(
            "fixed buffers {fixed}, fixed file {fixed_files}, {:.3} enters/IO",
            stats.enters as f64 / stats.completed.max(1) as f64
        ),
    );
}
