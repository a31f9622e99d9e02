//! glommio 0.9 through its documented file paths: `DmaFile::read_at_aligned` (O_DIRECT,
//! into glommio's own buffers from its registered I/O memory: READ_FIXED) for the direct
//! and sequential workloads, `BufferedFile::read_at` for the page-cached one; QD tasks on
//! one `LocalExecutor` (default ring depth 128, no spinning before park). Registering the
//! I/O memory needs a memlock limit (root, or `ulimit -l`).
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile};
use glommio::{LocalExecutorBuilder, Placement};
use iocomplete_peers::{fail, read_loop, spec, verify, Meter};

const ENGINE: &str = "glommio";

fn main() {
    let spec = spec(ENGINE);
    let spec2 = spec.clone();
    let meter = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let spec = Rc::new(spec2);
            let meter = Rc::new(Meter::new(&spec));
            let mut tasks = Vec::new();
            // The same loop over either file type: `read_at_aligned` (O_DIRECT) or
            // `read_at` (page cache), both answering with glommio's own buffer.
            macro_rules! spawn_readers {
                ($file:expr, $read:ident) => {{
                    let file = Rc::new($file.await.unwrap_or_else(|e| {
                        fail(ENGINE, &format!("{}: {e}", spec.path.display()))
                    }));
                    for i in 0..spec.qd() {
                        let (file, meter, spec) = (file.clone(), meter.clone(), spec.clone());
                        tasks.push(glommio::spawn_local(async move {
                            let bs = spec.bs();
                            read_loop(&spec, &meter, i, (), |(), off| {
                                let file = file.clone();
                                async move {
                                    let r = file.$read(off, bs).await.unwrap_or_else(|e| {
                                        fail(ENGINE, &format!("read at {off}: {e}"))
                                    });
                                    verify(ENGINE, &r, off, bs);
                                }
                            })
                            .await;
                        }));
                    }
                }};
            }
            if spec.workload.direct() {
                spawn_readers!(DmaFile::open(&spec.path), read_at_aligned);
            } else {
                spawn_readers!(BufferedFile::open(&spec.path), read_at);
            }
            for t in tasks {
                t.await;
            }
            Rc::try_unwrap(meter).unwrap_or_else(|_| fail(ENGINE, "a worker still holds the meter"))
        })
        .unwrap_or_else(|e| fail(ENGINE, &format!("executor: {e}")))
        .join()
        .unwrap_or_else(|e| fail(ENGINE, &format!("executor: {e}")));
    meter.report(&spec, "");
}
