//! `SqliteMessages`: the stored messages, one SQLite table.
//!
//! Opening is careful with files it does not own: a missing file is created
//! and seeded; a file that is not SQLite, a database of another program (it
//! has tables but not ours, or another `application_id`), or a `messages`
//! table of another shape is refused with an error naming the file, and the
//! file is left exactly as it was (SQLite reads the header before anything is
//! written, and nothing is written before the checks pass).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use retrace::activity::ActivityContext;
use retrace::env::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::AppError;
use crate::{BackendError, MessageStore, SEED_MESSAGES};

/// `PRAGMA application_id` of the example's message database ("RMSG").
pub const MESSAGES_APPLICATION_ID: i64 = 0x524d_5347;
/// `PRAGMA application_id` of retrace's engine database ("RTRC").
const RETRACE_APPLICATION_ID: i64 = 0x5254_5243;
/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT_MS: u64 = 2_000;

/// The message table. Clones share one connection.
#[derive(Clone)]
pub struct SqliteMessages {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMessages")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteMessages {
    /// Opens the database at `path`, creating and seeding it if it is missing
    /// (or empty). Blocks briefly: call it at startup.
    pub fn open(path: &Path) -> Result<SqliteMessages, AppError> {
        let fail = |reason: String| AppError::MessagesDb {
            path: path.to_path_buf(),
            reason,
        };
        check_path(path).map_err(fail)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut connection = Connection::open_with_flags(path, flags)
            .map_err(|error| fail(format!("cannot open it: {error}")))?;
        connection
            .busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|error| fail(error.to_string()))?;
        let seeded = prepare(&mut connection).map_err(fail)?;
        let store = SqliteMessages {
            path: path.to_path_buf(),
            connection: Arc::new(Mutex::new(connection)),
        };
        let count = store.count().map_err(|error| fail(error.to_string()))?;
        assert!(count > 0, "a prepared message table is never empty");
        tracing::info!(path = %path.display(), seeded, count, "message database ready");
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages stored.
    pub fn count(&self) -> Result<u32, BackendError> {
        let connection = self.connection.lock().expect("connection lock");
        connection
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .map_err(|error| self.unavailable(&error))
    }

    /// The text of message `message_id`, if there is one (blocking).
    pub fn read(&self, message_id: u32) -> Result<Option<String>, BackendError> {
        let connection = self.connection.lock().expect("connection lock");
        connection
            .query_row(
                "SELECT text FROM messages WHERE id = ?1",
                [message_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|error| self.unavailable(&error))
    }

    fn unavailable(&self, error: &rusqlite::Error) -> BackendError {
        BackendError::Unavailable(format!("message database {}: {error}", self.path.display()))
    }
}

impl MessageStore for SqliteMessages {
    fn message<'a>(
        &'a self,
        _ctx: &'a ActivityContext,
        message_id: u32,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        let store = self.clone();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || store.read(message_id)).await;
            let read = read.map_err(|error| BackendError::Unavailable(error.to_string()))?;
            read?.ok_or_else(|| {
                BackendError::NotFound(format!("there is no stored message {message_id}"))
            })
        })
    }
}

fn check_path(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("it is a directory, not a database file".to_string());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        return Err(format!("its directory {} does not exist", parent.display()));
    }
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().readonly()
    {
        return Err("the file is read-only".to_string());
    }
    Ok(())
}

/// Checks the file is ours (or new), then creates and seeds the table if
/// needed. Returns whether it seeded. Writes nothing unless every check passed.
fn prepare(connection: &mut Connection) -> Result<bool, String> {
    let not_sqlite = |error: rusqlite::Error| format!("it is not a SQLite database ({error})");
    let application_id: i64 = connection
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(not_sqlite)?;
    let objects: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(not_sqlite)?;
    match application_id {
        0 if objects == 0 => {}
        0 => {
            return Err("it has tables but no message table; it belongs to another program".into());
        }
        RETRACE_APPLICATION_ID => {
            return Err(
                "it is a retrace engine database; give the messages a file of their own".into(),
            );
        }
        MESSAGES_APPLICATION_ID => {
            check_table(connection)?;
            return Ok(false);
        }
        other => {
            return Err(format!(
                "application id {other:#x} belongs to another program"
            ));
        }
    }
    seed(connection).map_err(|error| format!("cannot create the message table: {error}"))?;
    check_table(connection)?;
    Ok(true)
}

fn check_table(connection: &Connection) -> Result<(), String> {
    let shape = connection.query_row("SELECT id, text FROM messages LIMIT 1", [], |row| {
        let id: i64 = row.get(0)?;
        let text: String = row.get(1)?;
        Ok((id, text))
    });
    match shape {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::QueryReturnedNoRows) => Err("the message table is empty".into()),
        Err(error) => Err(format!("the message table has another shape: {error}")),
    }
}

fn seed(connection: &mut Connection) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    transaction.execute_batch(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY NOT NULL, text TEXT NOT NULL) STRICT;",
    )?;
    for (index, text) in SEED_MESSAGES.iter().enumerate() {
        let id = i64::try_from(index + 1).expect("a handful of messages");
        transaction.execute(
            "INSERT INTO messages (id, text) VALUES (?1, ?2)",
            rusqlite::params![id, text],
        )?;
    }
    transaction.pragma_update(None, "application_id", MESSAGES_APPLICATION_ID)?;
    transaction.commit()
}
