//! Backups: every table of one backup from one snapshot, streamed to the store as
//! zstd-compressed CSV, with the manifest written last.
//!
//! [`backup`] opens a REPEATABLE READ, READ ONLY transaction, reads the catalog and the
//! sequence state from it, and exports the tables either itself or, with
//! `[backup] parallelism` > 1, through worker connections that import its snapshot with
//! `SET TRANSACTION SNAPSHOT`. [`export::export_table`] only needs a transaction, so a
//! caller that already holds one (with its own locks) can export from it too.

pub mod export;
pub mod manifest;
pub mod read;

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use bytes::Bytes;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Transaction};

use crate::config::{BackupConfig, DatabaseConfig};
use crate::db::{qualified, Database, PgContext};
use crate::error::usage;
use crate::migrate::engine::OWN_TABLES;
use crate::progress::Progress;
use crate::store::Store;
use export::{export_table, ExportJob, TableSpec};
use manifest::{
    new_backup_id, ColumnEntry, DatabaseIdentity, Kind, Manifest, SequenceEntry, TableEntry,
    MANIFEST_FORMAT,
};

/// The value settings of [`pin_session`] for one transaction (`SET LOCAL`), for exports and
/// restores that run inside a migration's transaction.
pub const EXPORT_SETTINGS: &str = "SET LOCAL DateStyle = ISO; SET LOCAL IntervalStyle = postgres;
     SET LOCAL extra_float_digits = 3; SET LOCAL client_encoding = 'UTF8'; SET LOCAL bytea_output = 'hex'";

/// Puts the migration session's own settings back for the SQL that follows.
pub const RESET_EXPORT_SETTINGS: &str =
    "SET LOCAL DateStyle TO DEFAULT; SET LOCAL IntervalStyle TO DEFAULT;
     SET LOCAL extra_float_digits TO DEFAULT; SET LOCAL bytea_output TO DEFAULT";

/// Pins the settings that change how values print and parse, as pg_dump does, so the CSV
/// written by one session reads back identically in another (guarantee 6).
pub async fn pin_session(client: &Client, settings: &DatabaseConfig) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
             SET client_encoding = 'UTF8'; SET bytea_output = 'hex'; SET search_path = '';
             SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;
             SET lock_timeout = '{}s'",
            settings.lock_timeout_secs
        ))
        .await
        .pg(|| "setting up the export session")
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub kind: Kind,
    /// Table names in the configured schema; empty means `[backup] tables`, else every table.
    pub tables: Vec<String>,
    pub label: Option<String>,
    pub show_progress: bool,
}

/// Reads the names, columns, keys, sizes and owned sequences of `tables` (every user table
/// of `schema` when empty) from the transaction's snapshot.
pub async fn describe_tables(
    client: &impl GenericClient,
    schema: &str,
    tables: &[String],
) -> anyhow::Result<Vec<TableSpec>> {
    let own: &[&str] = OWN_TABLES;
    let rows = client
        .query(
            "SELECT c.oid, c.relname, pg_catalog.pg_relation_size(c.oid)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> ALL($2)
             ORDER BY c.relname",
            &[&schema, &own],
        )
        .await
        .pg(|| format!("listing the tables of schema {schema}"))?;
    let mut found: Vec<(u32, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if !tables.is_empty() {
        let missing: Vec<&String> = tables
            .iter()
            .filter(|t| !found.iter().any(|f| &f.1 == *t))
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return usage(format!(
                "no table {} in schema {schema}; `backstop schema` lists the tables",
                names.join(", ")
            ));
        }
        found.retain(|f| tables.contains(&f.1));
    }
    let mut specs = Vec::new();
    for (oid, name, size) in found {
        manifest::check_identifier(&name)
            .map_err(|e| anyhow::anyhow!("cannot back up table {e}"))?;
        let columns = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .pg(|| format!("reading the columns of {name}"))?
            .iter()
            .map(|r| ColumnEntry { name: r.get(0), data_type: r.get(1) })
            .collect();
        let primary_key = client
            .query(
                "SELECT a.attname::text FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = $1 AND i.indisprimary
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&oid],
            )
            .await
            .pg(|| format!("reading the primary key of {name}"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sequences = Vec::new();
        for r in client
            .query(
                "SELECT sn.nspname::text, sc.relname::text, a.attname::text
                 FROM pg_catalog.pg_depend d
                 JOIN pg_catalog.pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S'
                 JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.refobjid = $1 AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .pg(|| format!("reading the sequences of {name}"))?
        {
            let (sschema, sname, column): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let state = client
                .query_one(&format!("SELECT last_value, is_called FROM {}", qualified(&sschema, &sname)), &[])
                .await
                .pg(|| format!("reading sequence {sname}"))?;
            sequences.push(SequenceEntry {
                name: sname,
                column,
                last_value: state.get(0),
                is_called: state.get(1),
            });
        }
        specs.push(TableSpec {
            scope: manifest::Scope::Table,
            schema: schema.to_string(),
            name,
            columns,
            primary_key,
            estimated_bytes: size.max(0) as u64,
            sequences,
        });
    }
    Ok(specs)
}

/// The database's name, version and (when readable) system identifier.
pub async fn identity(client: &Client) -> anyhow::Result<DatabaseIdentity> {
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version')",
            &[],
        )
        .await
        .pg(|| "reading the database identity")?;
    // pg_control_system() may be restricted; ask first, because a failed call would abort
    // the transaction a downgrade runs in. The identity is still useful without it.
    let system_identifier = client
        .query_one(
            "SELECT CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
                    THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) END",
            &[],
        )
        .await
        .pg(|| "reading the system identifier")?
        .get(0);
    Ok(DatabaseIdentity {
        name: row.get(0),
        system_identifier,
        server_version: row.get(1),
    })
}

/// Exports `specs` one after the other from `tx`'s snapshot.
pub async fn export_sequential(
    tx: &Transaction<'_>,
    job: ExportJob<'_>,
    specs: &[TableSpec],
) -> anyhow::Result<Vec<TableEntry>> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        out.push(export_table(tx, job, spec).await?);
    }
    Ok(out)
}

/// Exports tables from `specs` until none is left, taking the next index from `next`.
async fn take_tables(
    tx: &Transaction<'_>,
    next: &AtomicUsize,
    job: ExportJob<'_>,
    specs: &[TableSpec],
) -> anyhow::Result<Vec<(usize, TableEntry)>> {
    let mut done = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(spec) = specs.get(i) else { break };
        match export_table(tx, job, spec).await {
            Ok(entry) => done.push((i, entry)),
            Err(e) => {
                // Nobody takes another table; the others finish the one they have.
                next.store(specs.len(), Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Exports `specs` from `tx` itself plus `extra` worker connections that import its
/// snapshot, so every table comes from the one snapshot `tx` holds.
async fn export_parallel(
    db: &Database,
    settings: &DatabaseConfig,
    tx: &Transaction<'_>,
    extra: usize,
    job: ExportJob<'_>,
    specs: &[TableSpec],
) -> anyhow::Result<Vec<TableEntry>> {
    let snapshot: String = tx
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
        .pg(|| "exporting the snapshot for parallel workers")?
        .get(0);
    let next = AtomicUsize::new(0);
    let worker = || async {
        let mut client = db.connect().await?;
        pin_session(&client, settings).await?;
        let wtx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .pg(|| "starting an export worker")?;
        wtx.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT {}",
            crate::db::quote_literal(&snapshot)
        ))
        .await
        .pg(|| "importing the backup snapshot")?;
        let done = take_tables(&wtx, &next, job, specs).await?;
        wtx.commit().await.pg(|| "ending an export worker")?;
        anyhow::Ok(done)
    };
    // Every worker runs to its end, failed or not: dropping one mid-upload could let its
    // last request land after the caller has cleaned the backup's folder up.
    let (own, others) = futures_util::future::join(
        take_tables(tx, &next, job, specs),
        futures_util::future::join_all((0..extra).map(|_| worker())),
    )
    .await;
    let mut all: Vec<(usize, TableEntry)> = own?;
    for o in others {
        all.extend(o?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, e)| e).collect())
}

/// Writes the manifest (create-only) and reads it back, so a backup only counts once its
/// manifest is durable and parses.
pub async fn write_manifest(store: &Store, manifest: &Manifest) -> anyhow::Result<()> {
    let key = Manifest::manifest_key(&manifest.id);
    let data = serde_json::to_vec_pretty(manifest).context("encoding the manifest")?;
    store.put(&key, Bytes::from(data), true).await?;
    let back = store.get(&key).await.context("reading the manifest back")?;
    let parsed = Manifest::parse(&back, &manifest.id).context("reading the manifest back")?;
    if &parsed != manifest {
        anyhow::bail!(
            "the manifest read back from {} differs from the one written",
            store.describe()
        );
    }
    Ok(())
}

/// Removes whatever a failed backup left in the store.
pub async fn discard(store: &Store, backup_id: &str) {
    match store.list(&format!("{backup_id}/")).await {
        Ok(objects) => {
            let keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
            if let Err(e) = store.delete(&keys).await {
                tracing::warn!("could not remove the partial backup {backup_id}: {e:#}; `backstop backups prune` removes it later");
            }
        }
        Err(e) => tracing::warn!("could not list the partial backup {backup_id}: {e:#}"),
    }
}

/// Takes a consistent backup of the requested tables and returns its manifest.
pub async fn backup(
    db: &Database,
    settings: &DatabaseConfig,
    config: &BackupConfig,
    store: &Store,
    request: &BackupRequest,
) -> anyhow::Result<Manifest> {
    backup_with_target(db, settings, config, store, request, None).await
}

/// [`backup`], recording the revision a downgrade is about to go to.
pub async fn backup_with_target(
    db: &Database,
    settings: &DatabaseConfig,
    config: &BackupConfig,
    store: &Store,
    request: &BackupRequest,
    target_revision: Option<String>,
) -> anyhow::Result<Manifest> {
    store.check().await?;
    let mut client = db.connect().await?;
    pin_session(&client, settings).await?;
    let identity = identity(&client).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg(|| "starting the backup transaction")?;
    let wanted = if request.tables.is_empty() {
        config.tables.clone()
    } else {
        request.tables.clone()
    };
    let specs = describe_tables(&tx, &settings.schema, &wanted).await?;
    if specs.is_empty() {
        return usage(format!(
            "schema {} has no tables to back up",
            settings.schema
        ));
    }
    let revision = crate::migrate::engine::recorded_revision(&tx, &settings.schema).await?;
    let id = new_backup_id(request.kind, time::OffsetDateTime::now_utc());
    let total: u64 = specs.iter().map(|s| s.estimated_bytes).sum();
    let progress = Progress::new("backup", total, request.show_progress);
    let workers = config.parallelism.min(specs.len());
    let job = ExportJob {
        store,
        backup_id: &id,
        zstd_level: config.zstd_level,
        progress: &progress,
    };
    let exported = if workers > 1 {
        export_parallel(db, settings, &tx, workers - 1, job, &specs).await
    } else {
        export_sequential(&tx, job, &specs).await
    };
    progress.finish();
    let tables = match exported {
        Ok(t) => t,
        Err(e) => {
            discard(store, &id).await;
            return Err(
                e.context("the backup failed and was removed; the database was not changed")
            );
        }
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.clone(),
        kind: request.kind,
        label: request.label.clone(),
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        database: identity,
        schema: settings.schema.clone(),
        revision,
        target_revision,
        zstd_level: config.zstd_level,
        tables,
    };
    if let Err(e) = write_manifest(store, &manifest).await {
        discard(store, &id).await;
        return Err(e.context("writing the manifest failed; the backup was removed"));
    }
    tx.commit().await.pg(|| "ending the backup transaction")?;
    Ok(manifest)
}
