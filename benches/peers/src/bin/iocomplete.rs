//! iocomplete through its fastest documented path (as `examples/iobench`): one `Ring` with
//! `single_issuer` + `defer_taskrun`, a `BufferPool` registered as fixed buffers
//! (READ_FIXED), a registered file, completions through the ring's own FIFO
//! (`Submission::to_ring` + `Ring::pop_completion`), each buffer re-armed at once; each
//! `run_wait` submits everything re-armed and waits for a quarter of the queue.
//!
//! For A/B only (run.sh never sets them): `IOC_RING=single` drops `defer_taskrun`,
//! `IOC_RING=plain` both flags; `IOC_WAIT=N` waits for N completions per enter instead.
use iocomplete::{BufferPool, BufferRegistration, Op, Ring};
use iocomplete_peers::{fail, spec, verify, Meter};

const ENGINE: &str = "iocomplete";

fn main() {
    let spec = spec(ENGINE);
    let (qd, bs) = (spec.qd(), spec.bs());
    let err = |what: &str, e: iocomplete::Error| -> ! { fail(ENGINE, &format!("{what}: {e}")) };
    let entries = (qd as u32).next_power_of_two().max(8);
    let mode = std::env::var("IOC_RING").unwrap_or_default();
    let wait: Option<usize> = std::env::var("IOC_WAIT").ok().and_then(|v| v.parse().ok());
    let mut ring = Ring::builder()
        .entries(entries)
        .cq_entries(entries * 2)
        .files(4)
        .buffers(4)
        .ops(qd * 2 + 16)
        .single_issuer(mode != "plain")
        .defer_taskrun(mode.is_empty())
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
    let mut gens: Vec<_> = (0..qd).map(|i| spec.offsets(i)).collect();
    let mut offs = vec![0u64; qd];
    let meter = Meter::new(&spec);
    for (tag, g) in gens.iter_mut().enumerate() {
        let buf = pool.try_get().unwrap_or_else(|e| err("pool", e));
        offs[tag] = g.next();
        ring.submit(Op::read_len(target, offs[tag], buf, bs).tag(tag as u64))
            .to_ring();
    }
    let mut in_flight = qd;
    let mut stopping = false;
    while in_flight > 0 {
        let want = wait.unwrap_or(in_flight / 4).clamp(1, in_flight);
        ring.run_wait(want, None)
            .unwrap_or_else(|e| err("run_wait", e));
        while let Some(c) = ring.pop_completion() {
            in_flight -= 1;
            let tag = c.tag() as usize;
            if let Err(e) = c.result() {
                err("read", e);
            }
            let Some(buf) = c.into_buf() else {
                fail(ENGINE, "completion without its buffer")
            };
            verify(ENGINE, buf.data(), offs[tag], bs);
            if meter.done() {
                stopping = true;
            }
            if !stopping {
                offs[tag] = gens[tag].next();
                ring.submit(Op::read_len(target, offs[tag], buf, bs).tag(tag as u64))
                    .to_ring();
                in_flight += 1;
            }
        }
    }
    meter.report(
        &spec,
        &format!(
            "fixed buffers {fixed}, fixed file {}",
            ring.capabilities().fixed_files
        ),
    );
}
