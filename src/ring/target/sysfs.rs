//! What sysfs tells about a block device: its queue limits, and what storage lies under
//! it (a partition's disk, a loop device's backing file).

use std::io;
use std::path::{Path, PathBuf};

use super::{FdInfo, FdKind};
use crate::error::{Error, Result};

/// A block device's transfer limits, from `/sys/dev/block/MAJ:MIN/queue/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// `logical_block_size`: the alignment direct I/O needs (offsets, lengths, buffers).
    pub logical_block_size: u32,
    /// `max_sectors_kb` × 1024: the largest request the block layer sends the device
    /// in one piece.
    pub max_chunk: u64,
    /// `max_segments`: most memory segments in one request, if the file exists.
    pub max_segments: Option<u32>,
    /// `max_segment_size`: largest memory segment, if the file exists.
    pub max_segment_size: Option<u64>,
}

/// The default chunk limits of the block device `st_rdev` (from `fstat`/`stat` of a block
/// device node; for a partition, its disk's limits).
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if `st_rdev` names no block
/// device in sysfs (a regular file's `st_rdev` is 0) or a limit file is malformed; the OS
/// error if a file cannot be read otherwise.
pub fn block_device_limits(st_rdev: libc::dev_t) -> Result<BlockLimits> {
    let dir = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(st_rdev),
        libc::minor(st_rdev)
    ));
    if !dir.exists() {
        return Err(Error::invalid(
            "sysfs: not a block device (no /sys/dev/block entry)",
        ));
    }
    limits_from_dir(&dir)
}

/// Read the limits under `dir` (a `/sys/dev/block/MAJ:MIN` directory): its `queue/`, or for
/// a partition, which has none, the disk's (`../queue`).
fn limits_from_dir(dir: &Path) -> Result<BlockLimits> {
    let mut queue = dir.join("queue");
    if !queue.is_dir() {
        queue = dir.join("../queue");
    }
    let logical_block_size = read_number(&queue.join("logical_block_size"))?
        .ok_or(Error::invalid("sysfs: no queue/logical_block_size"))?;
    let max_sectors_kb = read_number(&queue.join("max_sectors_kb"))?
        .ok_or(Error::invalid("sysfs: no queue/max_sectors_kb"))?;
    let logical_block_size = u32::try_from(logical_block_size)
        .ok()
        .filter(|b| b.is_power_of_two())
        .ok_or(Error::invalid("sysfs: malformed logical_block_size"))?;
    let max_chunk = max_sectors_kb
        .checked_mul(1024)
        .filter(|m| *m >= u64::from(logical_block_size))
        .ok_or(Error::invalid("sysfs: malformed max_sectors_kb"))?;
    let max_segments = read_number(&queue.join("max_segments"))?
        .map(|n| u32::try_from(n).map_err(|_| Error::invalid("sysfs: malformed max_segments")))
        .transpose()?;
    let max_segment_size = read_number(&queue.join("max_segment_size"))?;
    Ok(BlockLimits {
        logical_block_size,
        max_chunk,
        max_segments,
        max_segment_size,
    })
}

/// What a target's bytes ultimately are, as far as sysfs tells: a file (`st_dev`,
/// `st_ino`) or a whole block device (`st_rdev`), with the offset of the target's byte 0
/// in it. Two targets whose bytes are the same storage resolve to the same `Storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// A file (or a block device node, by its own inode when nothing else is known).
    File(u64, u64),
    /// A whole block device.
    Disk(u64),
}

/// Where `info`'s byte 0 lies: a partition is resolved to its disk (sysfs `start`, in
/// 512-byte sectors), a loop device to its backing file (`loop/backing_file`,
/// `loop/offset`), repeatedly (a loop device over a partition of another loop device...).
/// Stops at what sysfs does not describe (device-mapper and other stacked devices resolve
/// to themselves).
pub(crate) fn storage_of(info: &FdInfo) -> (Storage, u64) {
    if info.kind != FdKind::BlockDevice {
        return (Storage::File(info.dev_ino.0, info.dev_ino.1), 0);
    }
    let mut rdev = info.rdev;
    let mut base: u64 = 0;
    // A few levels at most: each step moves down one layer of the stack.
    for _ in 0..8 {
        let dir = PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        if dir.join("partition").exists() {
            // A partition: its disk is the parent directory in sysfs.
            let (Ok(Some(start)), Some(disk)) = (
                read_number(&dir.join("start")),
                read_dev(&dir.join("../dev")),
            ) else {
                break;
            };
            base = base.saturating_add(start.saturating_mul(512));
            rdev = disk;
            continue;
        }
        let backing = std::fs::read_to_string(dir.join("loop/backing_file"));
        if let Ok(path) = backing {
            let offset = read_number(&dir.join("loop/offset"))
                .ok()
                .flatten()
                .unwrap_or(0);
            let Ok(st) = std::fs::metadata(path.trim_end_matches('\n')) else {
                break;
            };
            use std::os::unix::fs::MetadataExt;
            base = base.saturating_add(offset);
            if st.file_type().is_file() {
                return (Storage::File(st.dev(), st.ino()), base);
            }
            if std::os::unix::fs::FileTypeExt::is_block_device(&st.file_type()) {
                rdev = st.rdev();
                continue;
            }
        }
        break;
    }
    (Storage::Disk(rdev), base)
}

/// A `MAJ:MIN` device number from a sysfs `dev` file.
fn read_dev(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let (maj, min) = s.trim().split_once(':')?;
    Some(libc::makedev(maj.parse().ok()?, min.parse().ok()?))
}

/// A decimal number from a sysfs file; `None` if the file does not exist.
fn read_number(path: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid("sysfs: malformed queue limit")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::from_io(&e)),
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

/// The default chunk for a transfer between these targets: the smallest `max_chunk` of
/// the block devices among them (from sysfs), or `None` when none is a block device (or
/// sysfs has no answer).
pub fn default_max_chunk<'a>(infos: impl IntoIterator<Item = &'a FdInfo>) -> Option<u64> {
    infos
        .into_iter()
        .filter(|i| i.kind == FdKind::BlockDevice)
        .filter_map(|i| block_device_limits(i.rdev as libc::dev_t).ok())
        .map(|l| l.max_chunk)
        .min()
}
