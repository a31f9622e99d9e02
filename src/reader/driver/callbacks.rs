//! What a reader's callbacks may be, as its type parameter: [`Shared`] callbacks (`on_read`
//! may run on worker threads, and the reader moves between threads) or [`Local`] ones
//! (`FnMut`, borrowing the caller's locals, run on the driving thread only).
//!
//! The difference is in the type so that the compiler holds each kind to its rules: a
//! [`Local`] builder has no [`dispatch`](super::ContinuousReaderBuilder::dispatch) (its
//! `on_read` never leaves the driving thread), and a reader holding [`Local`] callbacks is
//! not `Send` while one holding [`Shared`] callbacks is.

use std::fmt;
use std::sync::Arc;

use super::workers::OnRead;
use super::Dispatch;
use crate::buf::PoolBuf;
use crate::error::Error;
use crate::reader::Restart;

/// `on_failed(&error) -> Restart` of [`Shared`] callbacks: runs on the driving thread,
/// which may change between calls of `process` (the reader is `Send`).
type OnFailed = Box<dyn FnMut(&Error) -> Restart + Send>;

/// `on_read` of [`Local`] callbacks.
type LocalOnRead<'a> = Box<dyn FnMut(PoolBuf, u64) + 'a>;

/// `on_failed` of [`Local`] callbacks.
type LocalOnFailed<'a> = Box<dyn FnMut(&Error) -> Restart + 'a>;

/// The kind of callbacks a [`ContinuousReader`](super::ContinuousReader) holds: [`Shared`]
/// (the default) or [`Local`]. Sealed: these two are the only kinds.
pub trait Callbacks: sealed::Callbacks + fmt::Debug {}

impl Callbacks for Shared {}
impl Callbacks for Local<'_> {}

/// Callbacks that may run on other threads: `on_read` is `Fn + Send + Sync + 'static`
/// (it may run on several [`Dispatch::Workers`] at once), `on_failed` is
/// `FnMut + Send + 'static`. A reader holding them is `Send`. From
/// [`ContinuousReader::builder`](super::ContinuousReader::builder); the default type
/// parameter of [`ContinuousReader`](super::ContinuousReader) and its builder.
pub struct Shared {
    pub(super) on_read: Option<OnRead>,
    pub(super) on_failed: Option<OnFailed>,
    pub(super) dispatch: Dispatch,
}

/// Callbacks that run only on the thread driving the reader, inside
/// [`Driver::process`](crate::Driver::process) (always [`Dispatch::Inline`]): `on_read`
/// and `on_failed` are `FnMut + 'a` — they may mutate what they capture and borrow the
/// caller's locals, and need not be `Send`, `Sync` or `'static`. A reader holding them is
/// not `Send`. From [`ContinuousReader::local_builder`](super::ContinuousReader::local_builder).
pub struct Local<'a> {
    pub(super) on_read: Option<LocalOnRead<'a>>,
    pub(super) on_failed: Option<LocalOnFailed<'a>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("on_read", &self.on_read.is_some())
            .field("on_failed", &self.on_failed.is_some())
            .field("dispatch", &self.dispatch)
            .finish()
    }
}

impl fmt::Debug for Local<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("on_read", &self.on_read.is_some())
            .field("on_failed", &self.on_failed.is_some())
            .finish()
    }
}

pub(super) mod sealed {
    use super::*;

    /// What the driver needs of its callbacks. In a private module: the public
    /// [`Callbacks`](super::Callbacks) cannot be implemented outside the crate.
    pub trait Callbacks {
        /// Where `on_read` runs.
        fn dispatch(&self) -> Dispatch;

        /// `on_read(buf, offset)` on the driving thread; without it, `buf` goes back to
        /// the pool.
        fn read(&mut self, buf: PoolBuf, offset: u64);

        /// `on_failed(error)`; without it, [`Restart::No`].
        fn failed(&mut self, error: &Error) -> Restart;

        /// The worker threads [`dispatch`](Self::dispatch) asks for: how many, and the
        /// `on_read` they call. `None`: inline.
        fn workers(&self) -> Option<(usize, OnRead)>;
    }

    impl Callbacks for Shared {
        fn dispatch(&self) -> Dispatch {
            self.dispatch
        }

        fn read(&mut self, buf: PoolBuf, offset: u64) {
            if let Some(f) = &self.on_read {
                f(buf, offset);
            }
        }

        fn failed(&mut self, error: &Error) -> Restart {
            self.on_failed.as_mut().map_or(Restart::No, |f| f(error))
        }

        fn workers(&self) -> Option<(usize, OnRead)> {
            let Dispatch::Workers(n) = self.dispatch else {
                return None;
            };
            let on_read = self.on_read.clone().unwrap_or_else(|| Arc::new(|_, _| {}));
            Some((n, on_read))
        }
    }

    impl Callbacks for Local<'_> {
        fn dispatch(&self) -> Dispatch {
            Dispatch::Inline
        }

        fn read(&mut self, buf: PoolBuf, offset: u64) {
            if let Some(f) = &mut self.on_read {
                f(buf, offset);
            }
        }

        fn failed(&mut self, error: &Error) -> Restart {
            self.on_failed.as_mut().map_or(Restart::No, |f| f(error))
        }

        fn workers(&self) -> Option<(usize, OnRead)> {
            None
        }
    }
}
