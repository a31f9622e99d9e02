//! `mkdata PATH BYTES`: write the data file (every 4 KiB block stamped with its offset).
fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 2 {
        eprintln!("usage: mkdata PATH BYTES");
        std::process::exit(2);
    }
    let size: u64 = a[1].parse().expect("BYTES: a number");
    assert!(size.is_multiple_of(1 << 20), "BYTES: a multiple of 1 MiB");
    if let Err(e) = iocomplete_peers::make_data(std::path::Path::new(&a[0]), size) {
        eprintln!("mkdata: {}: {e}", a[0]);
        std::process::exit(1);
    }
}
