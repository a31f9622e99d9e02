//! What most tokio users do today: a multi-thread runtime (`#[tokio::main]` defaults), QD
//! tasks each doing `spawn_blocking(|| file.read_at(..))` (`std::os::unix::fs::FileExt`)
//! with its own reused aligned buffer.
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use iocomplete_peers::{fail, read_loop, spec, verify, AlignedBuf, Meter};

const ENGINE: &str = "tokio_blocking";

fn main() {
    let spec = Arc::new(spec(ENGINE));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(ENGINE, &format!("runtime: {e}")));
    let file = Arc::new(spec.open_std());
    let meter = Arc::new(Meter::new(&spec));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..spec.qd() {
            let (file, meter, spec) = (file.clone(), meter.clone(), spec.clone());
            tasks.push(tokio::spawn(async move {
                let bs = spec.bs();
                read_loop(&spec, &meter, i, AlignedBuf::new(bs), |mut buf, off| {
                    let f = file.clone();
                    async move {
                        let (mut buf, r) = tokio::task::spawn_blocking(move || {
                            let r = f.read_at(buf.all_mut(), off);
                            (buf, r)
                        })
                        .await
                        .unwrap();
                        buf.len =
                            r.unwrap_or_else(|e| fail(ENGINE, &format!("read at {off}: {e}")));
                        verify(ENGINE, buf.data(), off, bs);
                        buf
                    }
                })
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    meter.report(&spec, "");
}
