//! SQLite files that several processes open at once (the local broker, the egress outbox):
//! how long a statement waits for another process's write lock, and the switch to WAL mode,
//! which SQLite refuses at once, without the busy handler, while another process holds the file.

use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for another process's write lock before failing with
/// "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Switch the file to WAL mode (it stays so: later opens find it set). The switch needs the
/// file to itself and SQLite answers "database is locked" at once, without the busy handler,
/// while another process holds it (opening it, or switching it too): retry with a short
/// backoff up to [`BUSY_TIMEOUT`].
pub fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::debug!(
                        mode,
                        "the SQLite file stays in its journal mode (no WAL here)"
                    );
                }
                return Ok(());
            }
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}
