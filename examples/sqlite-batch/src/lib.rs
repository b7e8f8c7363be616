//! `sqlite-batch`: a batch handler that writes each batch of events to SQLite in one
//! transaction.
//!
//! ```toml
//! [[bindings]]
//! events = ["Order.*"]
//! plugin = "sqlite-batch"
//! config = { path = "/var/lib/orders/orders.db" }
//! [bindings.batch]
//! max_size = 50       # at most 50 events per transaction
//! max_wait_ms = 100   # the first waits at most 100 ms for the rest
//! ```
//!
//! Every message with a JSON body becomes a row of `events (message_id PRIMARY KEY, event,
//! body, stored_at)`; the batch is one transaction, so ten messages cost one commit (one
//! fsync) rather than ten. A row that is there already (a redelivered duplicate) is kept as
//! it was: the insert is idempotent by message id. A body that is not JSON is dead-lettered
//! on its own while the rest of its batch is stored; if the transaction fails (the disk is
//! full, the file is locked) the whole batch is left for redelivery.

use std::sync::Mutex;

use iniesta_plugin_api::{
    export_plugin, BatchHandler, BatchResult, Config, Context, Message, Outcome,
};
use rusqlite::Connection;

/// Writes batches of events to one SQLite file.
pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// From the binding's config: `path`, the database file (created with its table).
    pub fn new(config: Config) -> Result<Store, String> {
        let path = config
            .get_str("path")
            .ok_or("config needs `path`, the SQLite file to write")?;
        let connection = Connection::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS events (
                     message_id TEXT PRIMARY KEY,
                     event TEXT NOT NULL,
                     body TEXT NOT NULL,
                     stored_at INTEGER NOT NULL DEFAULT (unixepoch())
                 );",
            )
            .map_err(|e| format!("cannot set up {path}: {e}"))?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
    }
}

impl BatchHandler for Store {
    fn handle_batch(&self, messages: &[Message<'_>], ctx: &Context<'_>) -> BatchResult {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let transaction = connection.transaction()?;
        let mut results = Vec::with_capacity(messages.len());
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO events (message_id, event, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (message_id) DO NOTHING",
            )?;
            for message in messages {
                match message.json::<serde_json::Value>() {
                    Ok(body) => {
                        insert.execute((message.id(), message.event(), body.to_string()))?;
                        results.push(Ok(Outcome::Ack));
                    }
                    Err(e) => {
                        results.push(Ok(Outcome::dead_letter(format!(
                            "the body is not JSON: {e}"
                        ))));
                    }
                }
            }
        }
        transaction.commit()?;
        ctx.debug(&format!("stored a batch of {}", messages.len()));
        Ok(results)
    }
}

export_plugin! {
    name: "sqlite-batch",
    batch_handlers: {
        "sqlite-batch" => Store::new,
    },
}
