//! compio 0.19 on its io_uring driver: `compio::fs::File` (`AsyncReadAt::read_at`) with one
//! reused aligned buffer per task (compio's file API has no fixed buffers; its
//! `register_files` is not used by `fs::File` ops), QD tasks. The ring is built with the
//! `ProactorBuilder` options compio documents for a single-threaded runtime:
//! `single_issuer` + `defer_taskrun` + `coop_taskrun` (`COMPIO_RING=default` for compio's
//! defaults).
use std::rc::Rc;

use compio::buf::{IoBuf, IoBufMut, SetLen};
use compio::io::AsyncReadAt;
use iocomplete_peers::{fail, read_loop, spec, verify, AlignedBuf, Meter};

const ENGINE: &str = "compio";

struct Buf(AlignedBuf);

impl IoBuf for Buf {
    fn as_init(&self) -> &[u8] {
        self.0.data()
    }
}

impl SetLen for Buf {
    unsafe fn set_len(&mut self, len: usize) {
        self.0.len = len;
    }
}

impl IoBufMut for Buf {
    fn as_uninit(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        // SAFETY: `cap` initialised bytes owned by the buffer; u8 and MaybeUninit<u8> have
        // the same layout.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr().cast(), self.0.cap()) }
    }
}

fn main() {
    let spec = Rc::new(spec(ENGINE));
    let mut pb = compio::driver::ProactorBuilder::new();
    pb.capacity(256);
    if std::env::var("COMPIO_RING").as_deref() != Ok("default") {
        pb.single_issuer(true)
            .defer_taskrun(true)
            .coop_taskrun(true);
    }
    let rt = compio::runtime::RuntimeBuilder::new()
        .with_proactor(pb)
        .build()
        .unwrap_or_else(|e| fail(ENGINE, &format!("runtime: {e}")));
    let meter = Rc::new(Meter::new(&spec));
    rt.block_on(async {
        let mut o = compio::fs::OpenOptions::new();
        o.read(true);
        if spec.workload.direct() {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = Rc::new(
            o.open(&spec.path)
                .await
                .unwrap_or_else(|e| fail(ENGINE, &format!("{}: {e}", spec.path.display()))),
        );
        let mut tasks = Vec::new();
        for i in 0..spec.qd() {
            let (file, meter, spec) = (file.clone(), meter.clone(), spec.clone());
            tasks.push(compio::runtime::spawn(async move {
                let bs = spec.bs();
                read_loop(
                    &spec,
                    &meter,
                    i,
                    Buf(AlignedBuf::new(bs)),
                    |mut buf, off| {
                        let file = file.clone();
                        async move {
                            buf.0.len = 0;
                            let compio::BufResult(r, buf) = file.read_at(buf, off).await;
                            r.unwrap_or_else(|e| fail(ENGINE, &format!("read at {off}: {e}")));
                            verify(ENGINE, buf.0.data(), off, bs);
                            buf
                        }
                    },
                )
                .await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    meter.report(&spec, "");
}
