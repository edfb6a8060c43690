//! Restore: every table of a backup back in one transaction, or nothing.
//!
//! The plan is checked before any row moves: the backup's tables must exist, each backup
//! column must exist in its table (and not be generated there), and with `--mode fail` every
//! target table must be empty. Tables load in foreign-key order with
//! `COPY ... FROM STDIN (FORMAT csv, HEADER)`; while streaming, the SHA-256, the header and the
//! row count are checked against the manifest, and any difference rolls everything back.
//! Into an empty table, secondary indexes are dropped first and rebuilt after the load (inside
//! the same transaction), which roughly halves the load time. Finally every sequence owned by
//! a restored column is moved past the restored maximum and the state saved at backup time.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use futures_util::SinkExt;
use serde::Serialize;
use tokio_postgres::Transaction;

use crate::backup::manifest::{check_backup_id, Manifest, Scope, TableEntry};
use crate::backup::read::pump;
use crate::backup::{identity, pin_session};
use crate::config::DatabaseConfig;
use crate::db::{qualified, quote_ident, Database, PgContext, PgError};
use crate::error::{refused, usage};
use crate::progress::Progress;
use crate::store::Store;

/// What to do with rows already in a target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Refuse (exit 4) if any target table has rows.
    Fail,
    /// Empty the target tables first (in the same transaction).
    Truncate,
    /// Add the backup's rows to what is there.
    Append,
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup_id: String,
    /// Subset of the backup's tables; empty means all.
    pub tables: Vec<String>,
    pub mode: RestoreMode,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRestored {
    pub table: String,
    pub rows: u64,
    pub indexes_rebuilt: Vec<String>,
    /// `sequence = value` after the restore.
    pub sequences: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub database: String,
    pub mode: RestoreMode,
    pub tables: Vec<TableRestored>,
    pub warnings: Vec<String>,
}

/// Reads and validates a backup's manifest.
pub async fn load_manifest(store: &Store, id: &str) -> anyhow::Result<Manifest> {
    check_backup_id(id)?;
    let key = Manifest::manifest_key(id);
    let data = match store.get(&key).await {
        Ok(d) => d,
        Err(e) => {
            let exists = store
                .list(&format!("{id}/"))
                .await
                .map(|o| !o.is_empty())
                .unwrap_or(false);
            let why = if exists {
                "it has no manifest, so it is an incomplete upload and cannot be restored"
            } else {
                "`backstop backups list` shows the backups there"
            };
            return Err(e.context(format!("no backup {id} in {} ({why})", store.describe())));
        }
    };
    Manifest::parse(&data, id)
}

/// Restores `request` into `db`, all tables in one transaction.
pub async fn restore(
    db: &Database,
    settings: &DatabaseConfig,
    store: &Store,
    request: &RestoreRequest,
) -> anyhow::Result<RestoreReport> {
    let manifest = load_manifest(store, &request.backup_id).await?;
    if manifest.schema != settings.schema {
        return usage(format!(
            "backup {} holds schema {}, but the configured schema is {}; set [database] schema to restore it",
            manifest.id, manifest.schema, settings.schema
        ));
    }
    let entries = select_tables(&manifest, &request.tables)?;
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
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let progress = Progress::new("restore", total, request.show_progress);
    // Column-level entries (from pre-downgrade backups) go back by primary key whatever the mode.
    let (whole, columns): (Vec<&TableEntry>, Vec<&TableEntry>) =
        entries.iter().partition(|e| e.scope == Scope::Table);
    let loaded = async {
        let mut tables = restore_tables(&tx, store, &manifest, &whole, request.mode, &progress).await?;
        for entry in columns {
            let (rows, matched) = restore_columns(&tx, store, &manifest, entry).await?;
            if matched < rows {
                warnings.push(format!(
                    "{} of {rows} backed-up rows of {} no longer exist, so their values were not put back",
                    rows - matched,
                    entry.name
                ));
            }
            tables.push(TableRestored {
                table: entry.name.clone(),
                rows: matched,
                indexes_rebuilt: Vec::new(),
                sequences: Vec::new(),
            });
        }
        anyhow::Ok(tables)
    }
    .await;
    progress.finish();
    let tables = loaded.context("the restore was rolled back; the database is unchanged")?;
    tx.commit()
        .await
        .pg(|| "committing the restore")
        .context("the restore was rolled back; the database is unchanged")?;
    Ok(RestoreReport {
        backup_id: manifest.id.clone(),
        database: db.describe(),
        mode: request.mode,
        tables,
        warnings,
    })
}

fn select_tables<'a>(
    manifest: &'a Manifest,
    wanted: &[String],
) -> anyhow::Result<Vec<&'a TableEntry>> {
    if wanted.is_empty() {
        return Ok(manifest.tables.iter().collect());
    }
    let mut out = Vec::new();
    for w in wanted {
        match manifest.table(w) {
            Some(t) => out.push(t),
            None => {
                let have: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
                return usage(format!(
                    "backup {} has no table {w}; it holds {}",
                    manifest.id,
                    have.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

struct Target<'a> {
    entry: &'a TableEntry,
    oid: u32,
    qualified: String,
}

/// Loads `entries` inside `tx` (which the caller commits or rolls back). Usable inside a
/// larger transaction, such as an upgrade that restores as it re-creates the tables.
pub async fn restore_tables(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    entries: &[&TableEntry],
    mode: RestoreMode,
    progress: &Progress,
) -> anyhow::Result<Vec<TableRestored>> {
    let schema = &manifest.schema;
    // 1. Check the plan against the catalog before touching anything.
    let mut targets = Vec::new();
    for entry in entries {
        let row = tx
            .query_opt(
                "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[schema, &entry.name],
            )
            .await
            .pg(|| format!("looking up table {}", entry.name))?;
        let Some(row) = row else {
            return usage(format!(
                "table {schema}.{} from backup {} does not exist in this database; create it first (`backstop upgrade` to the revision {} it was taken at)",
                entry.name,
                manifest.id,
                manifest.revision.as_deref().unwrap_or("(none)")
            ));
        };
        let oid: u32 = row.get(0);
        let columns: BTreeMap<String, bool> = tx
            .query(
                "SELECT attname::text, attgenerated <> '' FROM pg_catalog.pg_attribute
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .pg(|| format!("reading the columns of {}", entry.name))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for c in &entry.columns {
            match columns.get(&c.name) {
                None => {
                    return usage(format!(
                        "column {}.{} ({}) is in backup {} but not in the table; add the column, or restore other tables with --table",
                        entry.name, c.name, c.data_type, manifest.id
                    ))
                }
                Some(true) => {
                    return usage(format!(
                        "column {}.{} is in backup {} but is a generated column in the table, which cannot be loaded",
                        entry.name, c.name, manifest.id
                    ))
                }
                Some(false) => {}
            }
        }
        targets.push(Target {
            entry,
            oid,
            qualified: qualified(schema, &entry.name),
        });
    }
    let targets = foreign_key_order(tx, targets).await?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }

    // 2. Lock, and deal with rows already there.
    let names: Vec<&str> = targets.iter().map(|t| t.qualified.as_str()).collect();
    let lock = match mode {
        RestoreMode::Append => "SHARE ROW EXCLUSIVE",
        _ => "ACCESS EXCLUSIVE",
    };
    tx.batch_execute(&format!("LOCK TABLE {} IN {lock} MODE", names.join(", ")))
        .await
        .pg(|| "locking the tables to restore")?;
    match mode {
        RestoreMode::Fail => {
            let mut busy = Vec::new();
            for t in &targets {
                let has_rows: bool = tx
                    .query_one(
                        &format!("SELECT EXISTS (SELECT 1 FROM {})", t.qualified),
                        &[],
                    )
                    .await
                    .pg(|| format!("checking whether {} is empty", t.entry.name))?
                    .get(0);
                if has_rows {
                    busy.push(t.entry.name.as_str());
                }
            }
            if !busy.is_empty() {
                return refused(format!(
                    "table {} already has rows; nothing was restored. Use --mode truncate to replace them or --mode append to add to them",
                    busy.join(", ")
                ));
            }
        }
        RestoreMode::Truncate => {
            tx.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
                .await
                .pg(|| "emptying the tables to restore")?;
        }
        RestoreMode::Append => {}
    }

    // 3. Load, parents before children.
    let mut report = Vec::new();
    for t in &targets {
        let rebuild = if mode == RestoreMode::Append {
            Vec::new()
        } else {
            drop_secondary_indexes(tx, t).await?
        };
        let columns: Vec<String> = t
            .entry
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT csv, HEADER)",
            t.qualified,
            columns.join(", ")
        );
        let sink = tx
            .copy_in::<_, bytes::Bytes>(sql.as_str())
            .await
            .pg(|| format!("starting to load {}", t.entry.name))?;
        let name = t.entry.name.clone();
        let mut sink = std::pin::pin!(sink
            .sink_map_err(
                move |e| anyhow::Error::new(PgError::from(e)).context(format!("loading {name}"))
            ));
        let stats = pump(store, t.entry, sink.as_mut()).await?;
        stats.check(t.entry)?;
        progress.add(stats.bytes, stats.rows);
        // Only a verified stream is allowed to complete the COPY.
        let loaded = sink
            .as_mut()
            .get_pin_mut()
            .finish()
            .await
            .pg(|| format!("finishing the load of {}", t.entry.name))?;
        if loaded != t.entry.rows {
            return Err(crate::error::Error::Verification(format!(
                "table {}: PostgreSQL loaded {loaded} rows but the backup holds {}",
                t.entry.name, t.entry.rows
            ))
            .into());
        }
        let mut rebuilt = Vec::new();
        for (index, definition) in rebuild {
            tx.batch_execute(&definition)
                .await
                .pg(|| format!("rebuilding index {index}"))?;
            rebuilt.push(index);
        }
        let sequences = advance_sequences(tx, t).await?;
        report.push(TableRestored {
            table: t.entry.name.clone(),
            rows: loaded,
            indexes_rebuilt: rebuilt,
            sequences,
        });
    }
    Ok(report)
}

/// Puts a pre-downgrade backup back inside `tx`, right after the up steps re-created its
/// tables and columns: whole tables load with COPY, dropped columns come back by primary key.
pub async fn restore_into(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    skip: &[String],
) -> anyhow::Result<crate::migrate::engine::Restored> {
    let (wanted, skipped): (Vec<&TableEntry>, Vec<&TableEntry>) = manifest
        .tables
        .iter()
        .partition(|t| !skip.contains(&t.name));
    let whole: Vec<&TableEntry> = wanted
        .iter()
        .copied()
        .filter(|t| t.scope == Scope::Table)
        .collect();
    let mut rows = 0;
    let mut warnings = Vec::new();
    let progress = Progress::hidden();
    for t in restore_tables(tx, store, manifest, &whole, RestoreMode::Fail, &progress)
        .await
        .with_context(|| {
            format!(
                "restoring backup {} (skip a table with --restore-skip TABLE)",
                manifest.id
            )
        })?
    {
        rows += t.rows;
    }
    for entry in wanted.iter().filter(|t| t.scope == Scope::Columns) {
        let (loaded, matched) = restore_columns(tx, store, manifest, entry)
            .await
            .with_context(|| {
                format!(
                    "restoring backup {} (skip a table with --restore-skip TABLE)",
                    manifest.id
                )
            })?;
        if matched < loaded {
            warnings.push(format!(
                "{} of {loaded} backed-up rows of {} no longer exist, so their {} values were not put back",
                loaded - matched,
                entry.name,
                entry.columns.iter().filter(|c| !entry.primary_key.contains(&c.name)).map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        rows += matched;
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(crate::migrate::engine::Restored {
        backup_id: manifest.id.clone(),
        tables: wanted.iter().map(|t| t.name.clone()).collect(),
        rows,
        skipped: skipped.iter().map(|t| t.name.clone()).collect(),
        warnings,
    })
}

/// Loads a column-level backup into a temporary table shaped like the target's columns, then
/// `UPDATE ... FROM` it by primary key. Returns (rows loaded, rows matched).
pub async fn restore_columns(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    entry: &TableEntry,
) -> anyhow::Result<(u64, u64)> {
    let target = qualified(&manifest.schema, &entry.name);
    let present: Vec<String> = tx
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&manifest.schema, &entry.name],
        )
        .await
        .pg(|| format!("reading the columns of {}", entry.name))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if present.is_empty() {
        return usage(format!(
            "table {} of backup {} does not exist after the upgrade",
            entry.name, manifest.id
        ));
    }
    if let Some(c) = entry.columns.iter().find(|c| !present.contains(&c.name)) {
        return usage(format!(
            "column {}.{} ({}) of backup {} does not exist after the upgrade; the re-applied schema no longer fits the backup",
            entry.name, c.name, c.data_type, manifest.id
        ));
    }
    let cols: Vec<String> = entry.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let temp = quote_ident(&format!("backstop_restore_{}", entry.name));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {temp} ON COMMIT DROP AS SELECT {} FROM {target} WITH NO DATA",
        cols.join(", ")
    ))
    .await
    .pg(|| format!("preparing to restore the columns of {}", entry.name))?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(
            format!(
                "COPY {temp} ({}) FROM STDIN (FORMAT csv, HEADER)",
                cols.join(", ")
            )
            .as_str(),
        )
        .await
        .pg(|| format!("starting to load the columns of {}", entry.name))?;
    let mut sink = std::pin::pin!(sink.sink_map_err(|e| anyhow::Error::new(PgError::from(e))));
    let stats = pump(store, entry, sink.as_mut()).await?;
    stats.check(entry)?;
    let loaded = sink
        .as_mut()
        .get_pin_mut()
        .finish()
        .await
        .pg(|| format!("loading the columns of {}", entry.name))?;
    let set: Vec<String> = entry
        .columns
        .iter()
        .filter(|c| !entry.primary_key.contains(&c.name))
        .map(|c| format!("{0} = s.{0}", quote_ident(&c.name)))
        .collect();
    let on: Vec<String> = entry
        .primary_key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
        .collect();
    let matched = tx
        .execute(
            &format!(
                "UPDATE {target} AS t SET {} FROM {temp} AS s WHERE {}",
                set.join(", "),
                on.join(" AND ")
            ),
            &[],
        )
        .await
        .pg(|| format!("putting the columns of {} back", entry.name))?;
    tx.batch_execute(&format!("DROP TABLE {temp}"))
        .await
        .pg(|| "dropping the temporary table")?;
    Ok((loaded, matched))
}

/// Orders targets so referenced tables load before the tables that reference them.
async fn foreign_key_order<'a>(
    tx: &Transaction<'_>,
    targets: Vec<Target<'a>>,
) -> anyhow::Result<Vec<Target<'a>>> {
    let oids: Vec<u32> = targets.iter().map(|t| t.oid).collect();
    let edges: Vec<(u32, u32)> = tx
        .query(
            "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint
             WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1) AND conrelid <> confrelid",
            &[&oids],
        )
        .await
        .pg(|| "reading foreign keys")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut remaining = targets;
    let mut ordered = Vec::new();
    let mut placed = BTreeSet::new();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|t| {
            edges
                .iter()
                .filter(|(child, _)| *child == t.oid)
                .all(|(_, parent)| placed.contains(parent))
        });
        // A cycle: take the next table and rely on deferrable constraints.
        let i = ready.unwrap_or(0);
        let t = remaining.remove(i);
        placed.insert(t.oid);
        ordered.push(t);
    }
    Ok(ordered)
}

/// Drops the indexes that back no constraint, returning their definitions to rebuild.
async fn drop_secondary_indexes(
    tx: &Transaction<'_>,
    t: &Target<'_>,
) -> anyhow::Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            "SELECT n.nspname::text, i.relname::text, pg_catalog.pg_get_indexdef(x.indexrelid)
             FROM pg_catalog.pg_index x
             JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace
             WHERE x.indrelid = $1
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = x.indexrelid)
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = x.indexrelid AND d.deptype = 'i')",
            &[&t.oid],
        )
        .await
        .pg(|| format!("reading the indexes of {}", t.entry.name))?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, name, definition): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        tx.batch_execute(&format!("DROP INDEX {}", qualified(&schema, &name)))
            .await
            .pg(|| format!("dropping index {name} for the load"))?;
        out.push((name, definition));
    }
    Ok(out)
}

/// Moves each sequence owned by a column of the table past the restored maximum, the value
/// saved at backup time and its own current value, whichever is largest.
async fn advance_sequences(tx: &Transaction<'_>, t: &Target<'_>) -> anyhow::Result<Vec<String>> {
    let owned = tx
        .query(
            "SELECT a.attname::text, pg_catalog.pg_get_serial_sequence($1, a.attname)
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&t.qualified, &t.oid],
        )
        .await
        .pg(|| format!("finding the sequences of {}", t.entry.name))?;
    let mut out = Vec::new();
    for r in owned {
        let (column, sequence): (String, Option<String>) = (r.get(0), r.get(1));
        let Some(sequence) = sequence else { continue };
        let saved = t.entry.sequences.iter().find(|s| s.column == column);
        let row = tx
            .query_one(
                &format!(
                    "SELECT (SELECT max({col})::bigint FROM {table}), last_value, is_called FROM {sequence}",
                    col = quote_ident(&column),
                    table = t.qualified
                ),
                &[],
            )
            .await
            .pg(|| format!("reading sequence {sequence}"))?;
        let (max, current, current_called): (Option<i64>, i64, bool) =
            (row.get(0), row.get(1), row.get(2));
        // (value, is_called) pairs; the next value handed out is value + called.
        let mut candidates = vec![(current, current_called)];
        if let Some(m) = max {
            candidates.push((m, true));
        }
        if let Some(s) = saved {
            candidates.push((s.last_value, s.is_called));
        }
        let (value, called) = candidates
            .into_iter()
            .max_by_key(|(v, c)| (*v as i128) + i128::from(*c))
            .unwrap_or((current, current_called));
        if (value, called) != (current, current_called) {
            tx.query_one(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&sequence, &value, &called],
            )
            .await
            .pg(|| format!("advancing sequence {sequence}"))?;
        }
        out.push(format!(
            "{sequence} = {value}{}",
            if called { "" } else { " (not yet used)" }
        ));
    }
    Ok(out)
}
