//! The ceiling the disk puts on durable throughput: raw rusqlite inserts of rows shaped like the
//! SDK queue (WAL, synchronous=FULL, 1,000 rows per transaction) at several body sizes, with no
//! engine work at all. `cargo run --release -p trailmark-core --example sqlite_ceiling`.

use std::time::Instant;

fn main() -> rusqlite::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    for size in [100usize, 250, 450, 800] {
        let mut conn = rusqlite::Connection::open(dir.path().join(format!("ceiling-{size}.db")))?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE events (seq INTEGER PRIMARY KEY, held INTEGER NOT NULL,
                                  created_at INTEGER NOT NULL, body BLOB NOT NULL);",
        )?;
        let body = vec![b'x'; size];
        let rows = 300_000i64;
        let started = Instant::now();
        for chunk in 0..rows / 1000 {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO events VALUES (?1, 0, ?2, ?3)")?;
                for i in 0..1000 {
                    insert.execute(rusqlite::params![chunk * 1000 + i, i, body])?;
                }
            }
            tx.commit()?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{size:>4}-byte rows: {:.0} rows/s ({:.0} MB/s of row data)",
            rows as f64 / secs,
            rows as f64 * size as f64 / secs / 1e6
        );
    }
    Ok(())
}
