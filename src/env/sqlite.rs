//! SQLite storage (placeholder; being written).

/// SQLite-backed storage.
#[derive(Debug)]
pub struct SqliteStorage;
