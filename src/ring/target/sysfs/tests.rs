use super::*;
use crate::ErrorKind;
use std::fs;

fn fake_device(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir.join("queue")).unwrap();
    for (name, value) in files {
        fs::write(dir.join("queue").join(name), value).unwrap();
    }
}

#[test]
fn reads_a_fake_sysfs_tree() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disk");
    fake_device(
        &disk,
        &[
            ("logical_block_size", "4096\n"),
            ("max_sectors_kb", "1280\n"),
            ("max_segments", "128\n"),
        ],
    );
    let l = limits_from_dir(&disk).unwrap();
    assert_eq!(
        l,
        BlockLimits {
            logical_block_size: 4096,
            max_chunk: 1280 * 1024,
            max_segments: Some(128),
            max_segment_size: None,
        }
    );
    // A partition has no queue/ of its own: the disk's is used.
    let part = disk.join("part1");
    fs::create_dir_all(&part).unwrap();
    assert_eq!(limits_from_dir(&part).unwrap(), l);
}

#[test]
fn malformed_or_missing_limits_are_typed_errors() {
    let t = tempfile::tempdir().unwrap();
    for files in [
        &[("logical_block_size", "512")][..],
        &[("logical_block_size", "x"), ("max_sectors_kb", "4")][..],
        &[("logical_block_size", "1000"), ("max_sectors_kb", "4")][..],
        &[("logical_block_size", "4096"), ("max_sectors_kb", "0")][..],
    ] {
        let d = t
            .path()
            .join(format!("d{}", files.len() + files[0].1.len()));
        fake_device(&d, files);
        let e = limits_from_dir(&d).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput { .. }),
            "{files:?}: {e}"
        );
    }
}

#[test]
fn a_regular_file_is_not_a_block_device() {
    let e = block_device_limits(0).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }));
}

/// The real thing, on whatever block device this machine has.
#[test]
fn reads_a_real_block_device_if_any() {
    let Some(dev) = ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0"]
        .iter()
        .find_map(|p| fs::metadata(p).ok())
    else {
        // CI machines have a root disk: a skip there is a broken environment.
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "test would skip under CI=true: no block device node found"
        );
        eprintln!("SKIP: no block device node found");
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let l = block_device_limits(dev.rdev() as libc::dev_t).unwrap();
    assert!(l.logical_block_size.is_power_of_two() && l.logical_block_size >= 512);
    assert!(l.max_chunk >= u64::from(l.logical_block_size));
}
