//! Recovery of the store: torn tails, bad crcs, a crash between any two steps of the atomic
//! writes and of compaction (simulated by truncating files and leaving temporary files as a
//! crash would).

use super::*;
use raft::storage::Storage;

fn entry(index: u64, term: u64, data: &str) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_data(data.as_bytes().to_vec().into());
    e
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn datas(store: &DiskStore) -> Vec<String> {
    let s = store.storage();
    let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
    if last < first {
        return Vec::new();
    }
    s.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| String::from_utf8(e.get_data().to_vec()).unwrap())
        .collect()
}

#[test]
fn entries_and_hard_state_survive_a_reopen_and_a_new_store_keeps_its_voters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1, 2, 3]).unwrap();
        store.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        store.set_hard_state(&hard_state(1, 2, 2)).unwrap();
    }
    let store = DiskStore::open(dir.path(), &[9]).unwrap();
    assert_eq!(datas(&store), ["a", "b"]);
    let state = store.storage().initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(1, 2, 2));
    assert_eq!(
        state.conf_state.voters,
        vec![1, 2, 3],
        "the first start's voters are kept"
    );
    assert_eq!(store.recovery.truncated_bytes, 0);
}

#[test]
fn a_second_controller_on_one_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DiskStore::open(dir.path(), &[1]).unwrap();
    let e = DiskStore::open(dir.path(), &[1]).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn a_torn_tail_is_cut_at_every_length_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let full_len;
    let first_len;
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store.append(&[entry(1, 1, "first")]).unwrap();
        first_len = fs::metadata(dir.path().join("log.0")).unwrap().len();
        store.append(&[entry(2, 1, "second")]).unwrap();
        full_len = fs::metadata(dir.path().join("log.0")).unwrap().len();
    }
    let pristine = fs::read(dir.path().join("log.0")).unwrap();
    for cut in first_len..full_len {
        fs::write(dir.path().join("log.0"), &pristine[..cut as usize]).unwrap();
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(datas(&store), ["first"], "cut at {cut}");
        assert_eq!(store.recovery.truncated_bytes, cut - first_len);
        store.append(&[entry(2, 2, "again")]).unwrap();
        drop(store);
        let store = DiskStore::open(dir.path(), &[1]).unwrap();
        assert_eq!(datas(&store), ["first", "again"], "cut at {cut}");
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_is_a_bad_crc_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store
            .append(&[entry(1, 1, "first"), entry(2, 1, "second")])
            .unwrap();
    }
    let path = dir.path().join("log.0");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let store = DiskStore::open(dir.path(), &[1]).unwrap();
    assert_eq!(datas(&store), ["first"]);
    assert!(store.recovery.truncated_bytes > 0);
}

#[test]
fn a_rewritten_tail_replaces_the_entries_it_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store
            .append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
            .unwrap();
        store.append(&[entry(2, 2, "B")]).unwrap();
        assert_eq!(datas(&store), ["a", "B"]);
    }
    assert_eq!(
        datas(&DiskStore::open(dir.path(), &[1]).unwrap()),
        ["a", "B"]
    );
}

#[test]
fn a_commit_past_the_log_end_is_corruption_not_clamped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        store.set_hard_state(&hard_state(1, 1, 2)).unwrap();
    }
    let path = dir.path().join("log.0");
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    // Entry 2 was committed, so it was durable: losing it is corruption, refused.
    let error = DiskStore::open(dir.path(), &[1]).err().expect("refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(
        error.to_string().contains("committed entries are lost"),
        "{error}"
    );
}

#[test]
fn a_bad_record_followed_by_a_valid_one_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store
            .append(&[
                entry(1, 1, "first"),
                entry(2, 1, "second"),
                entry(3, 1, "third"),
            ])
            .unwrap();
    }
    let path = dir.path().join("log.0");
    let mut bytes = fs::read(&path).unwrap();
    let first = frame(&entry(1, 1, "first").write_to_bytes().unwrap()).len();
    bytes[first + RECORD_HEADER_BYTES + 2] ^= 0x10; // inside the second record's payload
    fs::write(&path, &bytes).unwrap();
    let error = DiskStore::open(dir.path(), &[1]).err().expect("refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("not a torn tail"), "{error}");
}

#[test]
fn a_crash_during_an_atomic_write_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store.append(&[entry(1, 1, "a")]).unwrap();
        store.set_hard_state(&hard_state(3, 1, 1)).unwrap();
    }
    // The crash came after the temporary file was (partly) written, before the rename.
    fs::write(dir.path().join("hardstate.tmp"), b"\x05\x00\x00\x00garbage").unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"").unwrap();
    let store = DiskStore::open(dir.path(), &[1]).unwrap();
    assert_eq!(
        store.storage().initial_state().unwrap().hard_state,
        hard_state(3, 1, 1)
    );
    assert!(!dir.path().join("hardstate.tmp").exists());
}

#[test]
fn a_corrupt_hard_state_is_an_error_not_a_silent_reset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        store.set_hard_state(&hard_state(3, 1, 0)).unwrap();
    }
    let path = dir.path().join("hardstate");
    let mut bytes = fs::read(&path).unwrap();
    bytes[RECORD_HEADER_BYTES] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let e = DiskStore::open(dir.path(), &[1]).err().unwrap();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn compaction_keeps_the_tail_and_survives_a_crash_between_its_two_writes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = ConfState::from((vec![1], vec![]));
    {
        let mut store = DiskStore::open(dir.path(), &[1]).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &format!("e{i}"))).collect();
        store.append(&entries).unwrap();
        store.set_hard_state(&hard_state(1, 1, 10)).unwrap();
        store.compact(7, &conf, b"state-at-7".to_vec()).unwrap();
        assert_eq!(datas(&store), ["e8", "e9", "e10"]);
        assert_eq!(store.entries_since_snapshot(), 3);
    }
    let store = DiskStore::open(dir.path(), &[1]).unwrap();
    assert_eq!(datas(&store), ["e8", "e9", "e10"]);
    assert_eq!(store.snapshot_data().unwrap(), (7, b"state-at-7".to_vec()));
    assert_eq!(store.recovery.snapshot_index, 7);
    drop(store);

    // A crash after the snapshot was replaced but before the log was rewritten: the old log
    // still holds the entries the snapshot covers.
    let old_log: Vec<u8> = (1..=10)
        .flat_map(|i| frame(&entry(i, 1, &format!("e{i}")).write_to_bytes().unwrap()))
        .collect();
    fs::write(dir.path().join("log.0"), &old_log).unwrap();
    let store = DiskStore::open(dir.path(), &[1]).unwrap();
    assert_eq!(
        datas(&store),
        ["e8", "e9", "e10"],
        "the snapshot's own log is read, the old one ignored"
    );
    assert!(!dir.path().join("log.0").exists(), "and removed");
    drop(store);

    // A crash after the new log was written and before the snapshot: the old snapshot and
    // its log stand, the unused new log is removed.
    let fresh = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(fresh.path(), &[1]).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &format!("e{i}"))).collect();
        store.append(&entries).unwrap();
        store.set_hard_state(&hard_state(1, 1, 10)).unwrap();
    }
    fs::write(fresh.path().join("log.7"), &old_log[..0]).unwrap();
    let store = DiskStore::open(fresh.path(), &[1]).unwrap();
    assert_eq!(datas(&store).len(), 10);
    assert!(!fresh.path().join("log.7").exists());
}

#[test]
fn a_crash_after_a_leader_snapshot_never_keeps_the_old_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = leader_snapshot(20, 3);
    {
        let mut store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
        store.append(&[entry(1, 1, "a")]).unwrap();
        store.set_hard_state(&hard_state(1, 1, 1)).unwrap();
        store.apply_snapshot(&snapshot).unwrap();
    }
    // The old log as a crash before its removal would leave it, holding entries past the
    // snapshot from a term the leader's log replaced.
    let stale: Vec<u8> = (1..=22)
        .flat_map(|i| frame(&entry(i, 1, "stale").write_to_bytes().unwrap()))
        .collect();
    fs::write(dir.path().join("log.0"), stale).unwrap();
    let store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
    assert!(
        datas(&store).is_empty(),
        "no entry after the snapshot survives"
    );
    let state = store.storage().initial_state().unwrap();
    assert_eq!(
        state.hard_state.term, 3,
        "the term is never below the snapshot's"
    );
}

fn leader_snapshot(index: u64, term: u64) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.set_data(b"leader-state".to_vec().into());
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot
        .mut_metadata()
        .set_conf_state(ConfState::from((vec![1, 2], vec![])));
    snapshot
}

#[test]
fn a_snapshot_from_the_leader_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
    store.append(&[entry(1, 1, "a")]).unwrap();
    let mut snapshot = Snapshot::default();
    snapshot.set_data(b"leader-state".to_vec().into());
    snapshot.mut_metadata().index = 20;
    snapshot.mut_metadata().term = 3;
    snapshot
        .mut_metadata()
        .set_conf_state(ConfState::from((vec![1, 2], vec![])));
    store.apply_snapshot(&snapshot).unwrap();
    // Served at once to a follower that needs it (raft-rs panics on an empty one).
    let served = store.storage().snapshot(0, 0).unwrap();
    assert_eq!(served.get_metadata().index, 20);
    assert_eq!(served.get_data(), b"leader-state");
    store.append(&[entry(21, 3, "after")]).unwrap();
    drop(store);
    let store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
    assert_eq!(datas(&store), ["after"]);
    assert_eq!(
        store.snapshot_data().unwrap(),
        (20, b"leader-state".to_vec())
    );
}

#[test]
fn a_crash_after_a_leader_snapshot_and_before_its_hard_state_keeps_commit_at_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
        store.set_hard_state(&hard_state(2, 2, 0)).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 9;
        snapshot.mut_metadata().term = 2;
        snapshot
            .mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2], vec![])));
        store.apply_snapshot(&snapshot).unwrap();
        // The crash: the hard state with commit 9 was never written.
    }
    let store = DiskStore::open(dir.path(), &[1, 2]).unwrap();
    let state = store.storage().initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.commit), (2, 9));
}
