use super::*;

#[test]
fn errno_mapping() {
    assert!(Error::from_errno(libc::ECANCELED).is_cancelled());
    assert!(Error::from_errno(libc::ETIME).is_timed_out());
    assert_eq!(
        Error::from_errno(libc::EIO).kind(),
        ErrorKind::Os(libc::EIO)
    );
    let io: io::Error = Error::from_errno(libc::EIO).into();
    assert_eq!(io.raw_os_error(), Some(libc::EIO));
}

#[test]
fn display_names_numbers() {
    let e = Error::new(ErrorKind::Misaligned {
        what: "offset",
        value: 7,
        align: 512,
    });
    let s = e.to_string();
    assert!(s.contains("offset 7") && s.contains("512"), "{s}");
}

#[test]
fn typed_input_errors_say_what_went_wrong() {
    let s = |k| Error::new(k).to_string();
    let wrong = s(ErrorKind::WrongTargetKind {
        need: "a file or block device",
        have: FdKind::Pipe,
    });
    assert!(wrong.contains("a file or block device") && wrong.contains("pipe"));
    let range = s(ErrorKind::OutOfRange {
        what: "max_in_flight",
        min: 1,
        max: 1024,
    });
    assert!(range.contains("max_in_flight") && range.contains("1..=1024"));
    let open = s(ErrorKind::OutOfRange {
        what: "max chunk",
        min: 512,
        max: u64::MAX,
    });
    assert!(open.contains("at least 512"), "{open}");
    let pool = s(ErrorKind::PoolTooSmall {
        what: "pending_reads",
        need: 9,
        have: 8,
    });
    assert!(pool.contains("pending_reads") && pool.contains('9') && pool.contains('8'));
}

#[test]
fn os_errors_name_the_errno_once() {
    let s = Error::from_errno(libc::EPIPE).to_string();
    assert_eq!(s.matches("os error 32").count(), 1, "{s}");
}

#[test]
fn error_is_small() {
    assert!(std::mem::size_of::<Error>() <= 32);
    assert!(std::mem::size_of::<Result<u32>>() <= 32);
}

#[test]
fn debug_names_the_errno() {
    assert_eq!(
        format!("{:?}", Error::from_errno(libc::ENOSPC)),
        "Os(ENOSPC)"
    );
    assert_eq!(format!("{:?}", Error::from_errno(libc::EIO)), "Os(EIO)");
    // Unknown numbers fall back to the number.
    assert_eq!(format!("{:?}", Error::from_errno(4000)), "Os(4000)");
    // Other kinds keep their derived form.
    assert_eq!(
        format!(
            "{:?}",
            Error::new(ErrorKind::ZeroLength { what: "transfer" })
        ),
        r#"ZeroLength { what: "transfer" }"#
    );
    assert_eq!(
        format!("{:?}", Error::from_errno(libc::ECANCELED)),
        "Cancelled"
    );
}

#[test]
fn from_io_error_for_question_mark() {
    fn open(path: &std::path::Path) -> Result<std::fs::File> {
        Ok(std::fs::File::open(path)?)
    }
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir.path().join("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Os(libc::ENOENT));
    // Round trip: one of ours through io::Error comes back unchanged.
    let ours = Error::new(ErrorKind::BufferTooSmall { need: 9, have: 8 });
    let back: Error = io::Error::from(ours).into();
    assert_eq!(back, ours);
    // A std-made error with no errno is typed, not lost.
    let other: Error = io::Error::other("x").into();
    assert!(matches!(other.kind(), ErrorKind::InvalidInput { .. }));
}
