//! Loading entries inside a caller's transaction: checks against the catalog first, then
//! COPY (secondary indexes dropped and rebuilt around it when the table starts empty),
//! sequences moved past what was loaded; column-level entries through a temporary table
//! and `UPDATE ... FROM` by primary key.

use futures_util::SinkExt;
use tokio_postgres::Transaction;

use super::plan::load_order;
use super::{RestoreMode, TableRestored};
use crate::backup::manifest::{Manifest, TableEntry};
use crate::backup::read::pump;
use crate::context::OpContext;
use crate::error::{refused, usage, verification};
use crate::pg::catalog::{self, Relation};
use crate::pg::{qualified, quote_ident, PgContext, PgError};
use crate::store::Store;

struct Target<'a> {
    entry: &'a TableEntry,
    relation: Relation,
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
    ctx: &OpContext,
) -> anyhow::Result<Vec<TableRestored>> {
    let schema = &manifest.schema;
    // 1. Check the plan against the catalog before touching anything.
    let mut targets = Vec::new();
    for entry in entries {
        let Some(relation) = catalog::user_table(tx, schema, &entry.name).await? else {
            return usage(format!(
                "table {schema}.{} from backup {} does not exist in this database; create it first (`backstop upgrade` to the revision {} it was taken at)",
                entry.name,
                manifest.id,
                manifest.revision.as_deref().unwrap_or("(none)")
            ));
        };
        let columns = catalog::column_kinds(tx, relation.oid).await?;
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
            qualified: qualified(schema, &entry.name),
            relation,
        });
    }
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<u32> = targets.iter().map(|t| t.relation.oid).collect();
    let edges = catalog::foreign_keys(tx, &oids).await?;
    let mut slots: Vec<Option<Target>> = targets.into_iter().map(Some).collect();
    let targets: Vec<Target> = load_order(&oids, &edges)
        .into_iter()
        .filter_map(|i| slots[i].take())
        .collect();

    // 2. Lock, and deal with rows already there.
    let names: Vec<&str> = targets.iter().map(|t| t.qualified.as_str()).collect();
    let lock = mode.lock_mode();
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
        let rebuild = if mode.loads_into_empty() {
            drop_secondary_indexes(tx, t).await?
        } else {
            Vec::new()
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
        let stats = pump(store, t.entry, sink.as_mut(), ctx).await?;
        stats.check(t.entry)?;
        ctx.observer().advance(stats.bytes, stats.rows);
        // Only a verified stream is allowed to complete the COPY.
        let loaded = sink
            .as_mut()
            .get_pin_mut()
            .finish()
            .await
            .pg(|| format!("finishing the load of {}", t.entry.name))?;
        if loaded != t.entry.rows {
            return verification(format!(
                "table {}: PostgreSQL loaded {loaded} rows but the backup holds {}",
                t.entry.name, t.entry.rows
            ));
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

/// Loads a column-level backup into a temporary table shaped like the target's columns, then
/// `UPDATE ... FROM` it by primary key. Returns (rows loaded, rows matched).
pub async fn restore_columns(
    tx: &Transaction<'_>,
    store: &Store,
    manifest: &Manifest,
    entry: &TableEntry,
    ctx: &OpContext,
) -> anyhow::Result<(u64, u64)> {
    let target = qualified(&manifest.schema, &entry.name);
    let Some(relation) = catalog::user_table(tx, &manifest.schema, &entry.name).await? else {
        return usage(format!(
            "table {} of backup {} does not exist after the upgrade",
            entry.name, manifest.id
        ));
    };
    let present = catalog::column_kinds(tx, relation.oid).await?;
    if let Some(c) = entry
        .columns
        .iter()
        .find(|c| !present.contains_key(&c.name))
    {
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
    let stats = pump(store, entry, sink.as_mut(), ctx).await?;
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

/// Drops the indexes that back no constraint, returning (name, definition) to rebuild.
async fn drop_secondary_indexes(
    tx: &Transaction<'_>,
    t: &Target<'_>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for index in catalog::secondary_indexes(tx, t.relation.oid).await? {
        tx.batch_execute(&format!(
            "DROP INDEX {}",
            qualified(&index.schema, &index.name)
        ))
        .await
        .pg(|| format!("dropping index {} for the load", index.name))?;
        out.push((index.name, index.definition));
    }
    Ok(out)
}

/// Moves each sequence owned by a column of the table past the restored maximum, the value
/// saved at backup time and its own current value, whichever is largest.
async fn advance_sequences(tx: &Transaction<'_>, t: &Target<'_>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (column, sequence) in catalog::serial_columns(tx, &t.relation).await? {
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
