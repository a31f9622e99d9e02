//! `cat`: a continuous reader streaming a file, block device, FIFO, pipe (`-` = stdin) or
//! tty to stdout. Each pooled buffer the reader fills is written to stdout through the
//! ring from the same slot — no user-space copy. Files and block devices are read with
//! `--pending` reads in flight and forwarded in file order.
//!
//! ```text
//! cat [--pending N] [--chunk BYTES] [--header BYTES] [--direct] [--ordered] PATH
//! ```
//!
//! `cat --help` lists the options and their defaults. A
//! one-line summary goes to stderr; bad input exits with status 2, I/O errors with 1. An
//! input that is stdout's own regular file (`cat F >> F`) is refused, as GNU cat does
//! ("input file is output file", status 1), before anything is written.

#[path = "core.rs"]
mod cat_core;

use std::os::fd::AsFd;

fn main() {
    let opts = clap::Parser::parse();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match cat_core::run(opts, stdin.as_fd(), stdout.as_fd()) {
        Ok(summary) => eprintln!("{}", summary.line()),
        Err(e) => {
            eprintln!("cat: {e}");
            std::process::exit(1);
        }
    }
}
