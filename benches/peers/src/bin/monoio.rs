//! monoio 0.2 on its io_uring driver (`RuntimeBuilder::<IoUringDriver>`, 256 entries):
//! `File::read_at` with one reused aligned buffer per task (monoio's file API has no
//! fixed buffers or registered files), QD tasks.
use std::rc::Rc;

use iocomplete_peers::{fail, read_loop, spec, verify, AlignedBuf, Meter};
use monoio::buf::{IoBuf, IoBufMut};

const ENGINE: &str = "monoio";

struct Buf(AlignedBuf);

// SAFETY: the allocation is stable (heap, never moved or resized) while the buffer lives.
unsafe impl IoBuf for Buf {
    fn read_ptr(&self) -> *const u8 {
        self.0.ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len
    }
}

// SAFETY: as above; `set_init` only records how many bytes the kernel filled.
unsafe impl IoBufMut for Buf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.0.ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.0.cap()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        self.0.len = pos;
    }
}

fn main() {
    let spec = Rc::new(spec(ENGINE));
    let meter = Rc::new(Meter::new(&spec));
    let std_file = spec.open_std();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(256)
        .build()
        .unwrap_or_else(|e| fail(ENGINE, &format!("runtime: {e}")));
    rt.block_on(async {
        let file = Rc::new(
            monoio::fs::File::from_std(std_file)
                .unwrap_or_else(|e| fail(ENGINE, &format!("file: {e}"))),
        );
        let mut tasks = Vec::new();
        for i in 0..spec.qd() {
            let (file, meter, spec) = (file.clone(), meter.clone(), spec.clone());
            tasks.push(monoio::spawn(async move {
                let bs = spec.bs();
                let buf = Buf(AlignedBuf::new(bs));
                read_loop(&spec, &meter, i, buf, |mut buf, off| {
                    let file = file.clone();
                    async move {
                        buf.0.len = 0;
                        let (r, buf) = file.read_at(buf, off).await;
                        r.unwrap_or_else(|e| fail(ENGINE, &format!("read at {off}: {e}")));
                        verify(ENGINE, buf.0.data(), off, bs);
                        buf
                    }
                })
                .await;
            }));
        }
        for t in tasks {
            t.await;
        }
    });
    meter.report(&spec, "");
}
