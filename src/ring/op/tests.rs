use super::*;

#[test]
fn user_data_round_trip_and_sentinels_distinct() {
    let id = OpId::new(3, 12345, 77);
    assert_eq!(id.index(), 12345);
    assert_eq!(id.gen(), 77);
    assert!(!sentinel::is_sentinel(id.user_data()));
    assert!(sentinel::is_sentinel(sentinel::CANCEL));
    assert!(sentinel::is_sentinel(sentinel::TIMEOUT));
    assert_ne!(sentinel::CANCEL, sentinel::TIMEOUT);
    assert_eq!(next_gen(u32::MAX - 1), 0);
}
