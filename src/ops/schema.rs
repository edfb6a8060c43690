//! `schema [--json]` and `schema diff A B`: the canonical snapshot of the configured schema,
//! and the difference between two written snapshots.

use std::path::Path;

use crate::config::DatabaseConfig;
use crate::pg::Database;
use crate::schema::{Change, Snapshot};

/// The snapshot of the configured schema, as it stands now.
pub async fn snapshot(db: &Database, settings: &DatabaseConfig) -> anyhow::Result<Snapshot> {
    Snapshot::capture(db, settings).await
}

/// Every difference from the snapshot in file `a` to the one in file `b`.
pub fn diff(a: &Path, b: &Path) -> anyhow::Result<Vec<Change>> {
    Ok(Snapshot::read(a)?.diff(&Snapshot::read(b)?))
}
