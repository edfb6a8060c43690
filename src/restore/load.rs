//! Loading entries inside a caller's transaction: checks against the catalog first, then
//! COPY (secondary indexes dropped and rebuilt around it when the table starts empty),
//! sequences moved past what was loaded; column-level entries through a temporary table
//! and `UPDATE ... FROM` by primary key.

use futures_util::SinkExt;
use tokio_postgres::Transaction;

use super::sequences::advance_sequences;
use super::{RestoreMode, TableRestored};
use crate::backup::manifest::{load_order, Manifest, OnRestore, TableEntry};
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
    earlier: &[String],
    ctx: &OpContext,
) -> anyhow::Result<LoadedTables> {
    // 1. Check the plan against the catalog before touching anything.
    let mut targets = Vec::new();
    for entry in entries {
        targets.push(target(tx, manifest, entry).await?);
    }
    if targets.is_empty() {
        return Ok(LoadedTables {
            tables: Vec::new(),
            skipped: Vec::new(),
        });
    }
    let oids: Vec<u32> = targets.iter().map(|t| t.relation.oid).collect();
    let edges = catalog::foreign_keys(tx, &oids).await?;
    let mut slots: Vec<Option<Target>> = targets.into_iter().map(Some).collect();
    let targets: Vec<Target> = load_order(&oids, &edges)
        .into_iter()
        .filter_map(|i| slots[i].take())
        .collect();

    // 2. Lock, and deal with rows already there.
    let names: Vec<String> = targets.iter().map(|t| t.qualified.clone()).collect();
    let lock = mode.lock_mode();
    tx.batch_execute(&format!(
        "LOCK TABLE ONLY {} IN {lock} MODE",
        names.join(", ")
    ))
    .await
    .pg(|| "locking the tables to restore")?;
    let mut skipped = Vec::new();
    let mut merge = Vec::new();
    let mut seeded = Vec::new();
    let mut targets = targets;
    match mode {
        RestoreMode::Fail | RestoreMode::SkipFilled => {
            let mut busy = Vec::new();
            for t in &targets {
                let rows: i64 = tx
                    .query_one(&format!("SELECT count(*) FROM ONLY {}", t.qualified), &[])
                    .await
                    .pg(|| format!("checking whether {} is empty", manifest.label(t.entry)))?
                    .get(0);
                if rows > 0 {
                    busy.push((manifest.label(t.entry), rows));
                }
            }
            if mode == RestoreMode::Fail && !busy.is_empty() {
                let names: Vec<&str> = busy.iter().map(|(n, _)| n.as_str()).collect();
                return refused(format!(
                    "table {} already has rows; nothing was restored. Use --mode truncate to replace them or --mode append to add to them",
                    names.join(", ")
                ));
            }
            // Tables that outlived the downgrade: merge by key, or replace when nothing
            // changed since; anything else with rows is left as it is and reported.
            let mut kept = Vec::new();
            for t in targets {
                let label = manifest.label(t.entry);
                let Some(&(_, rows)) = busy.iter().find(|(n, _)| *n == label) else {
                    kept.push(t);
                    continue;
                };
                let keyed = !t.entry.primary_key.is_empty();
                match t.entry.on_restore {
                    // Rows the down steps changed or deleted come back as they were.
                    OnRestore::Merge if keyed => merge.push(t),
                    // A later copy of a table this re-upgrade already put back.
                    OnRestore::Load if keyed && earlier.contains(&label) => merge.push(t),
                    // Re-created and seeded by an up step (a lookup table): the seed's
                    // rows must match the backup's, the user's own rows go back.
                    OnRestore::Load if keyed => seeded.push(t),
                    OnRestore::Replace if rows == t.entry.rows as i64 => {
                        tx.batch_execute(&format!("TRUNCATE ONLY {}", t.qualified))
                            .await
                            .pg(|| format!("emptying {label} to replace its rows"))?;
                        kept.push(t);
                    }
                    _ => skipped.push((label, rows)),
                }
            }
            targets = kept;
        }
        RestoreMode::Truncate => {
            tx.batch_execute(&format!("TRUNCATE ONLY {}", names.join(", ")))
                .await
                .pg(|| "emptying the tables to restore")?;
        }
        RestoreMode::Append => {}
    }

    // 3. Load, parents before children, with user triggers off.
    let mut report = Vec::new();
    for t in &targets {
        let triggers = disable_triggers(tx, t).await?;
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
        let sql = if columns.is_empty() {
            format!("COPY {} FROM STDIN (FORMAT csv, HEADER)", t.qualified)
        } else {
            format!(
                "COPY {} ({}) FROM STDIN (FORMAT csv, HEADER)",
                t.qualified,
                columns.join(", ")
            )
        };
        let loaded = copy_verified(tx, &sql, store, t.entry, ctx).await?;
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
        let sequences = advance_sequences(tx, &t.relation, t.entry).await?;
        enable_triggers(tx, t, &triggers).await?;
        report.push(TableRestored {
            table: manifest.label(t.entry),
            rows: loaded,
            indexes_rebuilt: rebuilt,
            sequences,
        });
    }
    let merges = merge.iter().map(|t| (t, Finish::Upsert));
    for (t, finish) in merges.chain(seeded.iter().map(|t| (t, Finish::AfterSeed))) {
        let (rows, added) = via_temp_table(tx, store, t, ctx, finish).await?;
        report.push(TableRestored {
            table: manifest.label(t.entry),
            rows: added,
            indexes_rebuilt: Vec::new(),
            sequences: advance_sequences(tx, &t.relation, t.entry).await?,
        });
        match finish {
            Finish::AfterSeed => tracing::info!(
                "{}: the up steps seeded {} row(s) identical to the backup's; the other {added} were put back",
                manifest.label(t.entry),
                rows - added
            ),
            _ => tracing::info!(
                "{}: {added} of {rows} backed-up row(s) were put back as they were before the downgrade",
                manifest.label(t.entry)
            ),
        }
    }
    Ok(LoadedTables {
        tables: report,
        skipped,
    })
}

/// What [`restore_tables`] did.
pub struct LoadedTables {
    pub tables: Vec<TableRestored>,
    /// Tables left alone because they had rows (`SkipFilled`), with their row counts.
    pub skipped: Vec<(String, i64)>,
}

/// Turns off the table's enabled user triggers for the load (an `updated_at` trigger must
/// not rewrite restored rows, a trigger that fills another table must not fill it twice);
/// returns them for [`enable_triggers`]. Foreign-key checks are internal and stay on.
async fn disable_triggers(
    tx: &Transaction<'_>,
    t: &Target<'_>,
) -> anyhow::Result<Vec<catalog::Trigger>> {
    let triggers = catalog::enabled_user_triggers(tx, t.relation.oid).await?;
    for trigger in &triggers {
        tx.batch_execute(&format!(
            "ALTER TABLE {} DISABLE TRIGGER {}",
            t.qualified,
            quote_ident(&trigger.name)
        ))
        .await
        .pg(|| {
            format!(
                "disabling trigger {} of {}",
                trigger.name,
                t.entry.display()
            )
        })?;
    }
    Ok(triggers)
}

/// Turns the triggers [`disable_triggers`] turned off back on, each as it was.
async fn enable_triggers(
    tx: &Transaction<'_>,
    t: &Target<'_>,
    triggers: &[catalog::Trigger],
) -> anyhow::Result<()> {
    for trigger in triggers {
        let how = match trigger.enabled.as_str() {
            "A" => "ENABLE ALWAYS",
            "R" => "ENABLE REPLICA",
            _ => "ENABLE",
        };
        tx.batch_execute(&format!(
            "ALTER TABLE {} {how} TRIGGER {}",
            t.qualified,
            quote_ident(&trigger.name)
        ))
        .await
        .pg(|| format!("enabling trigger {} of {}", trigger.name, t.entry.display()))?;
    }
    Ok(())
}

/// The table `entry` goes into, checked before any row moves: it exists, and every column
/// the backup holds is there and can be written. The one check every restore makes, whole
/// tables and column-level entries alike.
async fn target<'a>(
    tx: &Transaction<'_>,
    manifest: &Manifest,
    entry: &'a TableEntry,
) -> anyhow::Result<Target<'a>> {
    let Some(relation) = catalog::user_table(tx, &entry.schema, &entry.name).await? else {
        return usage(format!(
            "table {} from backup {} does not exist in this database; create it first (`backstop upgrade` to the revision {} it was taken at)",
            entry.display(),
            manifest.id,
            manifest.revision.as_deref().unwrap_or("(none)")
        ));
    };
    let columns = catalog::column_kinds(tx, relation.oid).await?;
    for c in &entry.columns {
        match columns.get(&c.name) {
            None => {
                return usage(format!(
                    "column {}.{} ({}) is in backup {} but not in the table, so the schema no longer fits the backup; add the column, or restore other tables with --table",
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
    Ok(Target {
        entry,
        qualified: relation.qualified(),
        relation,
    })
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
    let t = target(tx, manifest, entry).await?;
    via_temp_table(tx, store, &t, ctx, Finish::UpdateByKey).await
}

/// Streams `entry`'s object into `copy` (a `COPY … FROM STDIN`), checking it against the
/// manifest on the way; only a verified stream may complete the COPY. Returns the rows loaded.
async fn copy_verified(
    tx: &Transaction<'_>,
    copy: &str,
    store: &Store,
    entry: &TableEntry,
    ctx: &OpContext,
) -> anyhow::Result<u64> {
    let what = entry.display();
    let sink = tx
        .copy_in::<_, bytes::Bytes>(copy)
        .await
        .pg(|| format!("starting to load {what}"))?;
    let mut sink = std::pin::pin!(sink.sink_map_err(|e| {
        anyhow::Error::new(PgError::from(e)).context(format!("loading {}", entry.display()))
    }));
    let stats = pump(store, entry, sink.as_mut(), ctx).await?;
    stats.check(entry)?;
    ctx.observer().advance(stats.bytes, stats.rows);
    sink.as_mut()
        .get_pin_mut()
        .finish()
        .await
        .pg(|| format!("finishing the load of {what}"))
}

/// What to do with rows staged in a temporary table.
#[derive(Clone, Copy)]
enum Finish {
    /// Put the non-key columns back into the rows with the same key.
    UpdateByKey,
    /// Insert the rows whose key is missing and set the others to the backup's values:
    /// the backup is the table as it was before the downgrade changed it.
    Upsert,
    /// Insert the rows whose key is missing; a row with the same key must be identical
    /// (the seed of an up step), anything else is a conflict that stops the restore.
    AfterSeed,
}

/// Streams an entry into a temporary table shaped like its columns, then finishes into the
/// target with user triggers off. Returns (rows loaded, rows the finish touched).
async fn via_temp_table(
    tx: &Transaction<'_>,
    store: &Store,
    t: &Target<'_>,
    ctx: &OpContext,
    finish: Finish,
) -> anyhow::Result<(u64, u64)> {
    let entry = t.entry;
    let target = &t.qualified;
    let cols: Vec<String> = entry.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let temp = quote_ident(&format!("backstop_restore_{}", t.relation.oid));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {temp} ON COMMIT DROP AS SELECT {} FROM ONLY {target} WITH NO DATA",
        cols.join(", ")
    ))
    .await
    .pg(|| format!("preparing to restore {}", entry.display()))?;
    let copy = format!(
        "COPY {temp} ({}) FROM STDIN (FORMAT csv, HEADER)",
        cols.join(", ")
    );
    let loaded = copy_verified(tx, &copy, store, entry, ctx).await?;
    if matches!(finish, Finish::AfterSeed) {
        seed_conflicts(tx, t, &temp, ctx).await?;
    }
    let sql = match finish {
        Finish::UpdateByKey => {
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
            format!(
                "UPDATE ONLY {target} AS t SET {} FROM {temp} AS s WHERE {}",
                set.join(", "),
                on.join(" AND ")
            )
        }
        Finish::Upsert => {
            let key: Vec<String> = entry.primary_key.iter().map(|k| quote_ident(k)).collect();
            let set: Vec<String> = entry
                .columns
                .iter()
                .filter(|c| !entry.primary_key.contains(&c.name))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
                .collect();
            // IS DISTINCT FROM: a row already as the backup has it is not touched, so the
            // count says how many rows the restore changed or added.
            let changed: Vec<String> = entry
                .columns
                .iter()
                .filter(|c| !entry.primary_key.contains(&c.name))
                .map(|c| format!("t.{0} IS DISTINCT FROM EXCLUDED.{0}", quote_ident(&c.name)))
                .collect();
            let action = if set.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!(
                    "DO UPDATE SET {} WHERE {}",
                    set.join(", "),
                    changed.join(" OR ")
                )
            };
            format!(
                "INSERT INTO {target} AS t ({0}) OVERRIDING SYSTEM VALUE SELECT {0} FROM {temp} ON CONFLICT ({1}) {action}",
                cols.join(", "),
                key.join(", ")
            )
        }
        Finish::AfterSeed => format!(
            "INSERT INTO {target} ({0}) OVERRIDING SYSTEM VALUE SELECT {0} FROM {temp} ON CONFLICT DO NOTHING",
            cols.join(", ")
        ),
    };
    let triggers = disable_triggers(tx, t).await?;
    let touched = tx
        .execute(&sql, &[])
        .await
        .pg(|| format!("putting the rows of {} back", entry.display()))?;
    enable_triggers(tx, t, &triggers).await?;
    tx.batch_execute(&format!("DROP TABLE {temp}"))
        .await
        .pg(|| "dropping the temporary table")?;
    Ok((loaded, touched))
}

/// Fails when a staged row's key is in the table with other values: the up step seeded
/// something else than the user had, and neither may silently win. Names the table, the
/// key columns, how many rows differ, and (with `-v` only) the first key.
async fn seed_conflicts(
    tx: &Transaction<'_>,
    t: &Target<'_>,
    temp: &str,
    ctx: &OpContext,
) -> anyhow::Result<()> {
    let entry = t.entry;
    let on: Vec<String> = entry
        .primary_key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
        .collect();
    let text = |side: &str| -> String {
        entry
            .columns
            .iter()
            .map(|c| format!("{side}.{}::text", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key: Vec<String> = entry
        .primary_key
        .iter()
        .map(|k| format!("s.{}::text", quote_ident(k)))
        .collect();
    let row = tx
        .query_one(
            &format!(
                "SELECT count(*), (array_agg(ROW({key})::text))[1] FROM {temp} AS s JOIN ONLY {target} AS t ON {on}
                 WHERE ROW({s}) IS DISTINCT FROM ROW({t})",
                key = key.join(", "),
                target = t.qualified,
                on = on.join(" AND "),
                s = text("s"),
                t = text("t"),
            ),
            &[],
        )
        .await
        .pg(|| format!("comparing {} with the rows the up steps seeded", entry.display()))?;
    let differ: i64 = row.get(0);
    if differ == 0 {
        return Ok(());
    }
    let first = if ctx.row_values() {
        format!(
            ", the first with key {}",
            row.get::<_, Option<String>>(1).unwrap_or_default()
        )
    } else {
        " (run with -v to see the first key)".to_string()
    };
    refused(format!(
        "{}: {differ} backed-up row(s) have the same key ({}) as a row the up steps put there but other values{first}; nothing was restored. Leave the table out with --restore-skip {}, or reconcile the seed with the backup and `backstop restore` it",
        entry.display(),
        entry.primary_key.join(", "),
        entry.name
    ))
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
