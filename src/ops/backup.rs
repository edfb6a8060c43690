//! `backup`: a consistent backup of the requested tables, taken from one REPEATABLE READ
//! snapshot that parallel workers share. Manual and scheduled backups, and the whole-schema
//! backup before a no-transaction downgrade, all go through [`take`]; a backup asked for
//! from the configuration (the command line, `POST /v1/backups`, a schedule) goes through
//! [`back_up`], which holds the migration lock while it runs.

use serde::Serialize;
use tokio_postgres::IsolationLevel;

use crate::backup::manifest::{Kind, Manifest};
use crate::backup::{describe, describe_tables, export, ManifestHeader, Workers};
use crate::config::{BackupConfig, DatabaseConfig};
use crate::context::OpContext;
use crate::error::usage;
use crate::ledger::Ledger;
use crate::migrate::MigrationSet;
use crate::pg::catalog::{data_tables, require_schema, Schemas};
use crate::pg::lock::MigrationLock;
use crate::pg::session::pin_session;
use crate::pg::{Database, PgContext};
use crate::store::Store;

use super::Workspace;

/// A backup of what `options` name, from the configured database into the configured store,
/// under the migration lock: a backup and a migration never interleave, whoever asked for
/// the backup. The wait for the lock ends with `ctx` (SIGTERM) or after
/// `migration_lock_timeout_secs`.
pub async fn back_up(
    ws: &Workspace,
    store: &Store,
    options: &BackupOptions,
    ctx: &OpContext,
) -> anyhow::Result<Manifest> {
    let config = ws.config();
    let db = ws.database()?;
    let client = ctx.unless_cancelled(db.connect()).await?;
    let lock = MigrationLock::acquire(&client, &db, &config.database.schema, &config.database, ctx)
        .await?;
    let taken = take(
        &db,
        &config.database,
        &config.backup,
        store,
        options,
        None,
        ctx,
    )
    .await;
    lock.release(&client).await;
    taken
}

/// What to back up.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOptions {
    pub kind: Kind,
    /// Table names in the configured schema; empty means `[backup] tables`, else every table.
    pub tables: Vec<String>,
    pub label: Option<String>,
    /// For a backup taken before a downgrade: the revision it goes to.
    pub target_revision: Option<String>,
    /// Every data table of every user schema, not only the configured schema's (before a
    /// downgrade that cannot be planned, which may touch any of them).
    pub every_schema: bool,
}

/// Takes the backup and returns its manifest; on failure nothing is left in the store.
pub async fn take(
    db: &Database,
    settings: &DatabaseConfig,
    config: &BackupConfig,
    store: &Store,
    options: &BackupOptions,
    set: Option<&MigrationSet>,
    ctx: &OpContext,
) -> anyhow::Result<Manifest> {
    ctx.unless_cancelled(store.check()).await?;
    let mut client = db.connect().await?;
    pin_session(&client, settings).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg(|| "starting the backup transaction")?;
    require_schema(&tx, &settings.schema).await?;
    let wanted = if options.tables.is_empty() {
        &config.tables
    } else {
        &options.tables
    };
    let specs = if options.every_schema {
        describe(&tx, data_tables(&tx, Schemas::All).await?).await?
    } else {
        describe_tables(&tx, &settings.schema, wanted).await?
    };
    if specs.is_empty() {
        return usage(format!(
            "schema {} has no tables to back up",
            settings.schema
        ));
    }
    let header = ManifestHeader {
        kind: options.kind,
        label: options.label.clone(),
        schema: settings.schema.clone(),
        revision: Ledger::new(&settings.schema)
            .recorded_revision(&tx, set)
            .await?,
        target_revision: options.target_revision.clone(),
        zstd_level: config.zstd_level,
        sequences: Vec::new(),
    };
    let workers = Workers {
        settings,
        extra: config.parallelism.max(1) - 1,
    };
    let manifest = export(&tx, db, Some(workers), store, header, &specs, ctx).await?;
    tx.commit().await.pg(|| "ending the backup transaction")?;
    Ok(manifest)
}
