//! Restore: the tables of a backup back into the database, all in one transaction (which
//! the caller owns and commits), or nothing.
//!
//! [`plan`] picks the entries (pure); [`load`] checks them against the catalog before any
//! row moves, loads whole tables with `COPY ... FROM STDIN` in foreign-key order, and puts
//! column-level entries back by primary key. While streaming, the SHA-256, the header and the
//! row count are checked against the manifest, and any difference fails the load, so the
//! caller's transaction rolls back.

mod load;
pub mod plan;
mod sequences;

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::Transaction;

use crate::backup::manifest::Manifest;
use crate::context::OpContext;
use crate::store::Store;
pub use plan::RestorePlan;

/// What to do with rows already in a target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Refuse (exit 4) if any target table has rows.
    Fail,
    /// Empty the target tables first (in the same transaction).
    Truncate,
    /// Add the backup's rows to what is there.
    Append,
    /// Leave tables that already have rows as they are and say so (a re-upgrade whose
    /// up.sql seeded a table, a table a whole-schema downgrade did not touch).
    SkipFilled,
}

/// One table put back.
#[derive(Debug, Clone, Serialize)]
pub struct TableRestored {
    pub table: String,
    pub rows: u64,
    pub indexes_rebuilt: Vec<String>,
    /// `sequence = value` after the restore.
    pub sequences: Vec<String>,
}

/// What [`load`] put back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loaded {
    pub tables: Vec<TableRestored>,
    /// Tables left as they were because they already had rows (`SkipFilled`).
    pub skipped: Vec<String>,
    /// Sequences no column owns, as set after the load (`schema.name = value`).
    pub sequences: Vec<String>,
    /// Rows of column-level entries whose row no longer exists, and the like.
    pub warnings: Vec<String>,
}

impl Loaded {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Loads what `plan` picked from `manifest` inside `tx` (which the caller commits or rolls
/// back): whole tables first, then column-level entries by primary key, whatever the mode.
/// `earlier` names the tables an earlier backup of the same re-upgrade already put back: a
/// later backup holds them as they were later, so its rows win, key by key.
pub async fn load(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    plan: &RestorePlan<'_>,
    mode: RestoreMode,
    earlier: &[String],
    ctx: &OpContext,
) -> anyhow::Result<Loaded> {
    // Values parse the same whichever session the caller set up (guarantee 6).
    let pinned = crate::pg::session::PinnedValues::pin(tx).await?;
    let loaded = load_pinned(tx, store, manifest, plan, mode, earlier, ctx).await?;
    pinned.restore(tx).await?;
    Ok(loaded)
}

async fn load_pinned(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    plan: &RestorePlan<'_>,
    mode: RestoreMode,
    earlier: &[String],
    ctx: &OpContext,
) -> anyhow::Result<Loaded> {
    ctx.observer()
        .begin("restore", plan.tables().map(|t| t.bytes).sum());
    let result = async {
        let whole = load::restore_tables(tx, store, manifest, &plan.whole, mode, earlier, ctx).await?;
        let mut loaded = Loaded {
            tables: whole.tables,
            skipped: whole.skipped.iter().map(|(t, _)| t.clone()).collect(),
            warnings: Vec::new(),
            sequences: Vec::new(),
        };
        for (table, rows) in &whole.skipped {
            let w = format!(
                "{table} already has {rows} row(s), so backup {} was not loaded into it; `backstop restore {} --table {table} --mode truncate` (or append) loads it, --restore-skip {table} leaves it out",
                manifest.id, manifest.id
            );
            tracing::warn!("{w}");
            loaded.warnings.push(w);
        }
        for entry in &plan.columns {
            let (rows, matched) = load::restore_columns(tx, store, manifest, entry, ctx).await?;
            if matched < rows {
                let values: Vec<&str> = entry
                    .columns
                    .iter()
                    .filter(|c| !entry.primary_key.contains(&c.name))
                    .map(|c| c.name.as_str())
                    .collect();
                let w = format!(
                    "{} of {rows} backed-up rows of {} no longer exist, so their {} values were not put back",
                    rows - matched,
                    manifest.label(entry),
                    values.join(", ")
                );
                tracing::warn!("{w}");
                loaded.warnings.push(w);
            }
            loaded.tables.push(TableRestored {
                table: manifest.label(entry),
                rows: matched,
                indexes_rebuilt: Vec::new(),
                sequences: Vec::new(),
            });
        }
        loaded.sequences = sequences::restore_free_sequences(tx, manifest).await?;
        anyhow::Ok(loaded)
    }
    .await;
    ctx.observer().end();
    result.with_context(|| format!("restoring backup {}", manifest.id))
}
