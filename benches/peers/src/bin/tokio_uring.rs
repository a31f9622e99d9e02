//! tokio-uring 0.5 through its fastest documented path: fixed buffers
//! (`FixedBufRegistry`, one registered aligned buffer per in-flight read checked out for
//! good) and `File::read_fixed_at` (READ_FIXED); QD tasks on the default runtime
//! (`tokio_uring::start`, 256 SQ entries; tokio-uring has no registered-file API for
//! `File`).
use std::rc::Rc;

use iocomplete_peers::{fail, read_loop, spec, verify, AlignedBuf, Meter};
use tokio_uring::buf::fixed::FixedBufRegistry;
use tokio_uring::buf::{IoBuf, IoBufMut};

struct Buf(AlignedBuf);

// SAFETY: the allocation is stable (heap, never moved or resized) while the buffer lives.
unsafe impl IoBuf for Buf {
    fn stable_ptr(&self) -> *const u8 {
        self.0.ptr()
    }
    fn bytes_total(&self) -> usize {
        self.0.cap()
    }
    fn bytes_init(&self) -> usize {
        self.0.len
    }
}

const ENGINE: &str = "tokio_uring";

// SAFETY: as above; `set_init` only records how many bytes the kernel filled.
unsafe impl IoBufMut for Buf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.0.ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.0.len < pos {
            self.0.len = pos;
        }
    }
}

fn main() {
    let spec = Rc::new(spec(ENGINE));
    let meter = Rc::new(Meter::new(&spec));
    let std_file = spec.open_std();
    tokio_uring::start(async {
        let registry =
            FixedBufRegistry::new((0..spec.qd()).map(|_| Buf(AlignedBuf::new(spec.bs()))));
        registry
            .register()
            .unwrap_or_else(|e| fail(ENGINE, &format!("register buffers: {e}")));
        let file = Rc::new(tokio_uring::fs::File::from_std(std_file));
        let mut tasks = Vec::new();
        for i in 0..spec.qd() {
            let (file, meter, spec) = (file.clone(), meter.clone(), spec.clone());
            let buf = registry.check_out(i).expect("a free fixed buffer");
            tasks.push(tokio_uring::spawn(async move {
                let bs = spec.bs();
                read_loop(&spec, &meter, i, buf, |buf, off| {
                    let file = file.clone();
                    async move {
                        let (r, buf) = file.read_fixed_at(buf, off).await;
                        let n = r.unwrap_or_else(|e| fail(ENGINE, &format!("read at {off}: {e}")));
                        verify(ENGINE, &buf[..n], off, bs);
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
