//! The reader's configuration: what it reads, how much at a time, how many reads at once,
//! in which order — validated before anything runs.

use crate::error::{Error, ErrorKind, Result};

/// What kind of source the reader reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A seekable source (regular file, block device): reads at advancing offsets, up to
    /// `pending_reads` in flight. With direct I/O every offset and length must be a multiple
    /// of `align` (1 = no constraint).
    Positional {
        /// Required alignment of offsets and lengths, in bytes (a power of two).
        align: u32,
    },
    /// A non-seekable source (pipe, socket, tty, character device): no offsets, data order
    /// must be preserved. Single-shot mode keeps exactly one read in flight; multishot mode
    /// keeps one multishot read armed (`IORING_OP_READ_MULTISHOT`), whose completions each
    /// carry a provided-buffer id.
    Stream {
        /// Use one armed multishot read instead of single-shot reads.
        multishot: bool,
    },
}

/// Configuration of a continuous reader. Build it with [`ReaderConfig::positional`] or
/// [`ReaderConfig::stream`] and the setters; it is validated by [`ReaderConfig::validate`]
/// (called by [`ReaderMachine::new`](crate::reader::ReaderMachine::new)), which returns a typed [`Error`] for impossible
/// combinations.
///
/// ```
/// use iocomplete::reader::ReaderConfig;
/// use iocomplete::ErrorKind;
///
/// let ok = ReaderConfig::positional(64 * 1024).align(4096).pending_reads(8).range(0, 1 << 20);
/// assert!(ok.validate().is_ok());
///
/// let bad = ReaderConfig::positional(64 * 1024).align(4096).range(100, 1 << 20);
/// assert!(matches!(
///     bad.validate().unwrap_err().kind(),
///     ErrorKind::Misaligned { what: "offset", value: 100, align: 4096 }
/// ));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    pub(super) positional: bool,
    pub(super) align: u32,
    pub(super) multishot: bool,
    pub(super) transfer_len: u32,
    pub(super) pending_reads: u32,
    pub(super) start: u64,
    pub(super) end: Option<u64>,
    pub(super) ordered: bool,
    pub(super) reorder_window: Option<u32>,
    pub(super) max_unacked: u32,
}

impl ReaderConfig {
    /// Default number of reads kept in flight for positional sources.
    pub const DEFAULT_PENDING_READS: u32 = 2;
    /// Default bound on deliveries awaiting [`ReaderEvent::Delivered`](crate::reader::ReaderEvent::Delivered).
    pub const DEFAULT_MAX_UNACKED: u32 = 64;
    /// Largest accepted `pending_reads` (io_uring's largest submission queue).
    pub const MAX_PENDING_READS: u32 = 32 * 1024;
    /// Largest accepted `reorder_window` and `max_unacked`.
    pub const MAX_WINDOW: u32 = 64 * 1024;

    fn base(positional: bool, transfer_len: u32) -> ReaderConfig {
        ReaderConfig {
            positional,
            align: 1,
            multishot: false,
            transfer_len,
            pending_reads: Self::DEFAULT_PENDING_READS,
            start: 0,
            end: None,
            ordered: false,
            reorder_window: None,
            max_unacked: Self::DEFAULT_MAX_UNACKED,
        }
    }

    /// A reader of a seekable source, `transfer_len` bytes per read, from offset 0 to EOF.
    pub fn positional(transfer_len: u32) -> ReaderConfig {
        Self::base(true, transfer_len)
    }

    /// A reader of a non-seekable source, up to `transfer_len` bytes per read.
    pub fn stream(transfer_len: u32) -> ReaderConfig {
        Self::base(false, transfer_len)
    }

    /// A reader of the given kind of source.
    pub fn new(source: SourceKind, transfer_len: u32) -> ReaderConfig {
        match source {
            SourceKind::Positional { align } => Self::positional(transfer_len).align(align),
            SourceKind::Stream { multishot } => Self::stream(transfer_len).multishot(multishot),
        }
    }

    /// Direct-I/O alignment (positional sources only): every offset and length must be a
    /// multiple of it. Default 1.
    pub fn align(mut self, align: u32) -> ReaderConfig {
        self.align = align;
        self
    }

    /// Use one armed multishot read (stream sources only). Default off.
    pub fn multishot(mut self, on: bool) -> ReaderConfig {
        self.multishot = on;
        self
    }

    /// Reads kept in flight (positional sources; streams always have one). Default 2.
    pub fn pending_reads(mut self, n: u32) -> ReaderConfig {
        self.pending_reads = n;
        self
    }

    /// Read only the bytes in `[start, end)` (positional sources only).
    pub fn range(mut self, start: u64, end: u64) -> ReaderConfig {
        self.start = start;
        self.end = Some(end);
        self
    }

    /// Start reading at `offset` and continue to EOF (positional sources only).
    pub fn start_at(mut self, offset: u64) -> ReaderConfig {
        self.start = offset;
        self.end = None;
        self
    }

    /// Deliver in file order through a bounded reorder window instead of completion order.
    /// Default off. Streams are always delivered in order, so this changes nothing for them.
    pub fn ordered(mut self, on: bool) -> ReaderConfig {
        self.ordered = on;
        self
    }

    /// In ordered mode, the most reads whose buffers may be in flight or held back waiting
    /// for an earlier offset (default `2 * pending_reads`; at least `pending_reads`).
    pub fn reorder_window(mut self, reads: u32) -> ReaderConfig {
        self.reorder_window = Some(reads);
        self
    }

    /// The most deliveries that may await [`ReaderEvent::Delivered`](crate::reader::ReaderEvent::Delivered); at the bound the
    /// reader stops issuing reads until one is acknowledged (back-pressure). Default 64.
    pub fn max_unacked(mut self, n: u32) -> ReaderConfig {
        self.max_unacked = n;
        self
    }

    /// The kind of source.
    pub fn source(&self) -> SourceKind {
        if self.positional {
            SourceKind::Positional { align: self.align }
        } else {
            SourceKind::Stream {
                multishot: self.multishot,
            }
        }
    }

    /// Bytes per read.
    pub fn transfer_len(&self) -> u32 {
        self.transfer_len
    }

    /// Reads kept in flight (1 for streams, whatever was configured).
    pub fn effective_pending_reads(&self) -> u32 {
        if self.positional {
            self.pending_reads
        } else {
            1
        }
    }

    /// First offset read.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End of the range, if one was given.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// Whether delivery is in file order.
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The reorder window in effect (see [`ReaderConfig::reorder_window`]).
    pub fn effective_reorder_window(&self) -> u32 {
        self.reorder_window
            .unwrap_or_else(|| self.pending_reads.saturating_mul(2))
    }

    /// The bound on unacknowledged deliveries.
    pub fn max_unacked_deliveries(&self) -> u32 {
        self.max_unacked
    }

    /// Check the configuration; [`ReaderMachine::new`](crate::reader::ReaderMachine::new) calls this.
    pub fn validate(&self) -> Result<()> {
        if self.transfer_len == 0 {
            return Err(Error::zero_length("read (transfer_len)"));
        }
        if self.transfer_len > i32::MAX as u32 {
            // i32::MAX: the largest read a completion can report.
            return Err(Error::out_of_range("transfer_len", 1, i32::MAX as u64));
        }
        if self.pending_reads == 0 || self.pending_reads > Self::MAX_PENDING_READS {
            return Err(Error::out_of_range(
                "pending_reads",
                1,
                Self::MAX_PENDING_READS.into(),
            ));
        }
        if self.max_unacked == 0 || self.max_unacked > Self::MAX_WINDOW {
            return Err(Error::out_of_range(
                "max_unacked",
                1,
                Self::MAX_WINDOW.into(),
            ));
        }
        if let Some(end) = self.end {
            if self.start > end {
                return Err(Error::invalid("range start is after range end"));
            }
        }
        if self.positional {
            if self.multishot {
                return Err(Error::invalid("multishot reads need a stream source"));
            }
            if !self.align.is_power_of_two() {
                return Err(Error::new(ErrorKind::NotPowerOfTwo {
                    what: "alignment",
                    value: self.align.into(),
                }));
            }
            let misaligned = |what, value: u64| {
                Error::new(ErrorKind::Misaligned {
                    what,
                    value,
                    align: self.align,
                })
            };
            let mask = u64::from(self.align) - 1;
            if u64::from(self.transfer_len) & mask != 0 {
                return Err(misaligned("length", u64::from(self.transfer_len)));
            }
            if self.start & mask != 0 {
                return Err(misaligned("offset", self.start));
            }
            if let Some(end) = self.end {
                if end & mask != 0 {
                    return Err(misaligned("offset", end));
                }
            }
            if self.ordered {
                let w = self.effective_reorder_window();
                if w < self.pending_reads || w > Self::MAX_WINDOW {
                    return Err(Error::out_of_range(
                        "reorder_window",
                        self.pending_reads,
                        Self::MAX_WINDOW.into(),
                    ));
                }
            }
        } else {
            if self.align != 1 {
                return Err(Error::invalid(
                    "alignment applies to positional sources only",
                ));
            }
            if self.start != 0 || self.end.is_some() {
                return Err(Error::invalid("a byte range needs a positional source"));
            }
        }
        Ok(())
    }
}
