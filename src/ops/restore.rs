//! `restore BACKUP_ID [--table T]... [--mode fail|truncate|append]`: every table of a backup
//! back in one transaction, or nothing (guarantee 2).

use anyhow::Context;
use serde::Serialize;

use crate::backup::catalog::load_manifest;
use crate::backup::identity;
use crate::config::DatabaseConfig;
use crate::context::OpContext;
use crate::error::usage;
use crate::pg::session::pin_session;
use crate::pg::{Database, PgContext};
use crate::restore::plan::plan;
use crate::restore::{load, RestoreMode, TableRestored};
use crate::store::Store;

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub backup_id: String,
    /// Subset of the backup's tables; empty means all.
    pub tables: Vec<String>,
    pub mode: RestoreMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub database: String,
    pub mode: RestoreMode,
    pub tables: Vec<TableRestored>,
    pub warnings: Vec<String>,
}

const ROLLED_BACK: &str = "the restore was rolled back; the database is unchanged";

pub async fn restore(
    db: &Database,
    settings: &DatabaseConfig,
    store: &Store,
    options: &RestoreOptions,
    ctx: &OpContext,
) -> anyhow::Result<RestoreReport> {
    let manifest = load_manifest(store, &options.backup_id).await?;
    if manifest.schema != settings.schema {
        return usage(format!(
            "backup {} holds schema {}, but the configured schema is {}; set [database] schema to restore it",
            manifest.id, manifest.schema, settings.schema
        ));
    }
    let chosen = plan(&manifest, &options.tables, &[])?;
    let mut client = db.connect().await?;
    pin_session(&client, settings).await?;
    let mut warnings = Vec::new();
    let here = identity(&client).await?;
    if here.name != manifest.database.name
        || (here.system_identifier.is_some()
            && manifest.database.system_identifier.is_some()
            && here.system_identifier != manifest.database.system_identifier)
    {
        let w = format!(
            "backup {} was taken from database {}; restoring into {here}",
            manifest.id, manifest.database
        );
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let tx = client
        .transaction()
        .await
        .pg(|| "starting the restore transaction")?;
    let loaded = load(&tx, store, &manifest, &chosen, options.mode, &[], ctx)
        .await
        .context(ROLLED_BACK)?;
    tx.commit()
        .await
        .pg(|| "committing the restore")
        .context(ROLLED_BACK)?;
    warnings.extend(loaded.warnings);
    Ok(RestoreReport {
        backup_id: manifest.id.clone(),
        database: db.describe(),
        mode: options.mode,
        tables: loaded.tables,
        warnings,
    })
}
