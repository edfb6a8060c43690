//! Backups: tables streamed to the store as zstd-compressed CSV, with the manifest written
//! last; and what is already in a store (its catalog, verification, retention).
//!
//! [`export`] is the one export path. Manual, scheduled and pre-downgrade backups all call
//! it with a transaction that holds the snapshot (and, for a downgrade, the locks) and a
//! [`ManifestHeader`]; it exports the tables (itself, or with worker connections that import
//! the transaction's snapshot with `SET TRANSACTION SNAPSHOT`), writes the manifest, reads
//! it back, and removes everything it wrote when anything fails.

pub mod catalog;
pub mod export;
pub mod leftovers;
pub mod manifest;
pub mod prune;
pub mod read;
pub mod verify;

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use bytes::Bytes;
use tokio_postgres::{GenericClient, IsolationLevel, Transaction};

use crate::config::DatabaseConfig;
use crate::context::OpContext;
use crate::error::{refused, usage};
use crate::pg::catalog::{self as pg_catalog, Schemas};
use crate::pg::session::pin_session;
use crate::pg::{quote_literal, Database, PgContext};
use crate::store::Store;
use export::{export_table, ExportJob, TableSpec};
pub use leftovers::Leftovers;
use manifest::{
    new_backup_id, ColumnEntry, DatabaseIdentity, Kind, Manifest, Scope, SequenceEntry, TableEntry,
    MANIFEST_FORMAT,
};

/// What a manifest says about a backup besides its tables.
#[derive(Debug, Clone)]
pub struct ManifestHeader {
    pub kind: Kind,
    pub label: Option<String>,
    pub schema: String,
    /// The migration revision when the backup was taken.
    pub revision: Option<String>,
    /// For pre-downgrade backups: the revision the downgrade goes to.
    pub target_revision: Option<String>,
    pub zstd_level: i32,
    /// Sequences no column owns to save with the tables.
    pub sequences: Vec<manifest::FreeSequenceEntry>,
}

/// Worker connections that may share the exporting transaction's snapshot.
#[derive(Clone, Copy)]
pub struct Workers<'a> {
    pub settings: &'a DatabaseConfig,
    /// Connections besides the exporting transaction itself.
    pub extra: usize,
}

/// Describes the data tables of `schema` named in `tables` (`table` or `schema.table`;
/// every data table of `schema` when empty) from the transaction's snapshot. A partitioned
/// table named here stands for its partitions.
pub async fn describe_tables(
    client: &impl GenericClient,
    schema: &str,
    tables: &[String],
) -> anyhow::Result<Vec<TableSpec>> {
    let mut found = pg_catalog::data_tables(client, Schemas::One(schema)).await?;
    if !tables.is_empty() {
        let named = |t: &String, r: &pg_catalog::Relation| r.is_named(t, schema);
        let missing: Vec<&str> = tables
            .iter()
            .filter(|t| !found.iter().any(|f| named(t, f)))
            .map(|s| s.as_str())
            .collect();
        if !missing.is_empty() {
            return usage(format!(
                "no table {} in schema {schema}; `backstop schema` lists the tables",
                missing.join(", ")
            ));
        }
        found.retain(|f| tables.iter().any(|t| named(t, f)));
    }
    describe(client, found).await
}

/// Describes the given data tables; refuses tables whose rows cannot be saved exactly.
pub async fn describe(
    client: &impl GenericClient,
    relations: Vec<pg_catalog::Relation>,
) -> anyhow::Result<Vec<TableSpec>> {
    let mut specs = Vec::new();
    for relation in relations {
        manifest::check_identifier(&relation.name)
            .map_err(|e| anyhow::anyhow!("cannot back up table {e}"))?;
        manifest::check_identifier(&relation.schema)
            .map_err(|e| anyhow::anyhow!("cannot back up schema {e}"))?;
        let lo = pg_catalog::large_object_columns(client, relation.oid).await?;
        if !lo.is_empty() {
            return refused(format!(
                "table {} has large-object columns ({}): their values point into pg_largeobject, which a backup of the table's rows does not hold, so it could not be restored exactly; back those up with pg_dump, or move the data into bytea columns",
                relation.display(),
                lo.join(", ")
            ));
        }
        specs.push(spec(pg_catalog::shape(client, relation).await?));
    }
    Ok(specs)
}

fn spec(shape: pg_catalog::TableShape) -> TableSpec {
    TableSpec {
        scope: Scope::Table,
        oid: shape.relation.oid,
        schema: shape.relation.schema,
        name: shape.relation.name,
        parent: shape.relation.parent,
        columns: shape
            .columns
            .into_iter()
            .map(|c| ColumnEntry {
                name: c.name,
                data_type: c.data_type,
            })
            .collect(),
        primary_key: shape.primary_key,
        estimated_bytes: shape.relation.heap_bytes.max(0) as u64,
        stored_estimate: shape.relation.table_bytes.max(0) as u64,
        sequences: shape
            .sequences
            .into_iter()
            .map(|s| SequenceEntry {
                schema: s.schema,
                name: s.name,
                column: s.column,
                last_value: s.last_value,
                is_called: s.is_called,
            })
            .collect(),
        on_restore: manifest::OnRestore::Load,
    }
}

/// The identity a manifest records for the database `client` talks to.
pub async fn identity(client: &impl GenericClient) -> anyhow::Result<DatabaseIdentity> {
    let id = pg_catalog::identity(client).await?;
    Ok(DatabaseIdentity {
        name: id.database,
        system_identifier: id.system_identifier,
        server_version: id.server_version,
    })
}

/// The one export path: exports `specs` from `tx`'s snapshot (with `workers` sharing it),
/// writes the manifest and reads it back. On any failure everything written is removed and
/// the error says so; the database is never changed.
pub async fn export(
    tx: &Transaction<'_>,
    db: &Database,
    workers: Option<Workers<'_>>,
    store: &Store,
    header: ManifestHeader,
    specs: &[TableSpec],
    ctx: &OpContext,
) -> anyhow::Result<Manifest> {
    let leftovers = Leftovers::new();
    match export_deferred(tx, db, workers, store, header, specs, &leftovers, ctx).await {
        Ok(m) => Ok(m),
        Err(e) => {
            let what = leftovers.clean(store, cleanup_bound(store, ctx)).await;
            Err(e.context(format!("{what}; the database was not changed")))
        }
    }
}

/// How long the clean-up of a failed backup may take: half the store's patience (its
/// requests are small; a store that answers at all answers them at once), and only a few
/// seconds once the operation was interrupted. A failed backup thus ends within one and a
/// half patience of the store's last answer.
pub fn cleanup_bound(store: &Store, ctx: &OpContext) -> std::time::Duration {
    let half = (store.patience() / 2).max(std::time::Duration::from_secs(2));
    if ctx.is_cancelled() {
        half.min(leftovers::CLEANUP_AFTER_INTERRUPT)
    } else {
        half
    }
}

/// [`export`], leaving what a failure wrote in `leftovers` for the caller to clean up
/// once it has let the database go (a downgrade rolls back first, releasing its locks).
#[allow(clippy::too_many_arguments)]
pub async fn export_deferred(
    tx: &Transaction<'_>,
    db: &Database,
    workers: Option<Workers<'_>>,
    store: &Store,
    header: ManifestHeader,
    specs: &[TableSpec],
    leftovers: &Leftovers,
    ctx: &OpContext,
) -> anyhow::Result<Manifest> {
    // Values print the same whichever session the caller set up (guarantee 6).
    let pinned = crate::pg::session::PinnedValues::pin(tx).await?;
    let manifest = export_pinned(tx, db, workers, store, header, specs, leftovers, ctx).await?;
    pinned.restore(tx).await?;
    Ok(manifest)
}

#[allow(clippy::too_many_arguments)]
async fn export_pinned(
    tx: &Transaction<'_>,
    db: &Database,
    workers: Option<Workers<'_>>,
    store: &Store,
    header: ManifestHeader,
    specs: &[TableSpec],
    leftovers: &Leftovers,
    ctx: &OpContext,
) -> anyhow::Result<Manifest> {
    let identity = identity(tx).await?;
    // The manifest records the load order, for readers without backstop too.
    let oids: Vec<u32> = specs.iter().map(|s| s.oid).collect();
    let edges = pg_catalog::foreign_keys(tx, &oids).await?;
    let load_order: Vec<String> = manifest::load_order(&oids, &edges)
        .into_iter()
        .map(|i| format!("{}.{}", specs[i].schema, specs[i].name))
        .collect();
    let id = new_backup_id(header.kind, time::OffsetDateTime::now_utc());
    let job = ExportJob {
        store,
        backup_id: &id,
        zstd_level: header.zstd_level,
        ctx,
        db,
        leftovers,
    };
    ctx.observer()
        .begin("backup", specs.iter().map(|s| s.estimated_bytes).sum());
    // From the lease on, whatever fails leaves this folder to be removed.
    leftovers.backup(&id);
    let work = async {
        // The lease tells `prune` this folder is being written. A store that cannot take
        // it will not take the tables either, so the backup stops here.
        ctx.unless_cancelled(catalog::write_lease(store, &id))
            .await?;
        let tables = match workers {
            Some(w) if w.extra > 0 && specs.len() > 1 => {
                export_parallel(tx, db, w, job, specs).await
            }
            _ => export_sequential(tx, job, specs).await,
        }?;
        ctx.unless_cancelled(check_objects(store, &id, &tables))
            .await?;
        anyhow::Ok(tables)
    };
    // The lease is refreshed until the tables are stored and checked (the refresher never
    // ends on its own).
    let exported = tokio::select! {
        r = work => r,
        _ = catalog::keep_lease(store, &id) => unreachable!("the lease is kept until the work ends"),
    };
    ctx.observer().end();
    let tables = exported?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.clone(),
        kind: header.kind,
        label: header.label,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        database: identity,
        schema: header.schema,
        revision: header.revision,
        target_revision: header.target_revision,
        zstd_level: header.zstd_level,
        tables,
        load_order,
        sequences: header.sequences,
    };
    ctx.unless_cancelled(write_manifest(store, &manifest))
        .await
        .context("writing the manifest")?;
    catalog::drop_lease(store, &id).await;
    Ok(manifest)
}

async fn export_sequential(
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

/// Exports `specs` from `tx` itself plus worker connections that import its snapshot, so
/// every table comes from the one snapshot `tx` holds.
async fn export_parallel(
    tx: &Transaction<'_>,
    db: &Database,
    workers: Workers<'_>,
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
        pin_session(&client, workers.settings).await?;
        let wtx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .pg(|| "starting an export worker")?;
        wtx.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot)
        ))
        .await
        .pg(|| "importing the backup snapshot")?;
        let done = take_tables(&wtx, &next, job, specs).await?;
        wtx.commit().await.pg(|| "ending an export worker")?;
        anyhow::Ok(done)
    };
    let extra = workers.extra.min(specs.len() - 1);
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
async fn write_manifest(store: &Store, manifest: &Manifest) -> anyhow::Result<()> {
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

/// Every table object is in the store with the size written, before a manifest may say so.
async fn check_objects(store: &Store, id: &str, tables: &[TableEntry]) -> anyhow::Result<()> {
    let stored = store.list(&format!("{id}/")).await?;
    for t in tables {
        match stored.iter().find(|o| o.key == t.key) {
            Some(o) if o.size == t.compressed_bytes => {}
            Some(o) => anyhow::bail!(
                "{} holds {} bytes in {} but {} were written",
                t.key,
                o.size,
                store.describe(),
                t.compressed_bytes
            ),
            None => anyhow::bail!(
                "{} is not in {} although its upload reported success",
                t.key,
                store.describe()
            ),
        }
    }
    Ok(())
}
