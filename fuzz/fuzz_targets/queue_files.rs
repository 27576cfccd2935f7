//! The native SDK's queue files read back (ADR 0022): what a crash, a damaged disk or a
//! hostile app-data backup can leave at the queue's path.
//!
//! * `sqlite_file::read_queue_bytes`: an SQLite database and its write-ahead log (the queue of
//!   SDKs before ADR 0022, imported on open), split from the input at its first byte.
//! * `FileStore::open` on a queue file with the input as its records, then a commit and a
//!   reopen.
//!
//! Properties: nothing panics, loops or allocates beyond the input; an SQLite read returns no
//! more body bytes than the input holds; a queue file that opens takes a commit and reopens
//! with exactly one event more, its tail cut at most once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trailmark_core::EventStore;
use trailmark_core::store::sqlite_file::read_queue_bytes;
use trailmark_core::store::{FileStore, StoredEvent, WriteBatch};

fuzz_target!(|data: &[u8]| {
    let [split, size, reserved, rest @ ..] = data else { return };
    // SQLite: the start of a real header (a page size of 512 B to 64 KiB and the reserved
    // bytes from the input), then the input as the rest of the database and the log (without
    // the header every input is refused at once).
    let at = (*split as usize * rest.len()) / 256;
    let page_size: u32 = 512 << (size % 8);
    let mut db = b"SQLite format 3\0".to_vec();
    db.extend_from_slice(&(if page_size == 65_536 { 1u16 } else { page_size as u16 }).to_be_bytes());
    db.extend_from_slice(&[1, 1, reserved % 64, 0x40, 0x20, 0x20]);
    db.extend_from_slice(&rest[..at]);
    let wal = rest[at..].to_vec();
    let total = db.len() + wal.len();
    if let Ok(queue) = read_queue_bytes(db, wal) {
        assert!(queue.events.iter().map(|e| e.body.len()).sum::<usize>() <= total);
    }

    // The queue file: the magic, then the input.
    let dir = std::env::temp_dir().join(format!("tm-fuzz-queue-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("q");
    let mut file = b"TMQUEUE1".to_vec();
    file.extend_from_slice(rest);
    std::fs::write(&path, &file).unwrap();
    let Ok(mut store) = FileStore::open(&path) else { return };
    let before = store.load().unwrap().entries;
    let seqs: Vec<u64> = before.iter().map(|e| e.seq).collect();
    let bodies = store.read(&seqs).unwrap();
    assert_eq!(bodies.len(), seqs.len());
    let seq = before.last().map_or(1, |e| e.seq.saturating_add(1));
    let fresh = (seq != u64::MAX).then_some(seq);
    if let Some(seq) = fresh {
        let event = StoredEvent { seq, held: false, created_at: 0, body: b"{}".to_vec() };
        store.commit(&WriteBatch { inserts: vec![event], ..WriteBatch::default() }).unwrap();
    }
    drop(store);
    let mut store = FileStore::open(&path).unwrap();
    assert_eq!(store.cut_at_open(), 0, "a reopened file has nothing to cut");
    let after = store.load().unwrap().entries;
    assert_eq!(after.len(), before.len() + usize::from(fresh.is_some()));
});
