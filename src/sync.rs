//! Shim over the synchronization primitives, so the lock-free parts can be model-checked
//! with loom (`RUSTFLAGS="--cfg loom" cargo test --lib --release loom`).

// Every primitive is re-exported whether or not a module uses it in this configuration.
#![allow(unused_imports)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex};

pub(crate) use std::sync::atomic::Ordering;
