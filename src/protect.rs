//! What a downgrade would destroy, found by running it: the down SQL runs inside a savepoint,
//! the catalog of every user schema is compared before and after, and the savepoint is
//! rolled back. No SQL text is parsed, so any statement that drops, rewrites or empties
//! data is caught, in whatever schema (a `DROP SCHEMA … CASCADE`, an `ON DELETE CASCADE`
//! into another schema).
//!
//! A table counts as lost when it is dropped, when its storage is replaced (TRUNCATE, a
//! rewriting ALTER such as a type change), or when the down SQL deletes or updates rows in
//! it. Columns count as lost when they are dropped; then the primary key plus those columns
//! are enough to put the values back after a re-upgrade, unless the key itself is dropped.
//! A sequence no column owns counts as lost when it is dropped or reset.
//!
//! Locks taken inside the savepoint end with it, so [`plan`] locks every table the down SQL
//! touched (in a stable order, bounded by `lock_timeout`) and plans again under those
//! locks: no row can arrive between the plan and the real down SQL.

use std::collections::BTreeSet;

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use anyhow::Context;

use crate::backup::describe;
use crate::backup::export::{row_security_refusal, TableSpec};
use crate::backup::manifest::{ColumnEntry, FreeSequenceEntry, OnRestore, Scope};
use crate::error::{err, Kind};
use crate::migrate::PlannedStep;
use crate::pg::catalog::{
    data_tables_by_oid, locked_relations, primary_key, sequence_state, storage_state, FreeSequence,
};
use crate::pg::session::TransactionGuard;
use crate::pg::{PgContext, PgError};

/// One table the downgrade would take data from.
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub schema: String,
    pub table: String,
    #[serde(skip)]
    pub oid: u32,
    pub scope: Scope,
    /// Dropped columns (for `scope = columns`).
    pub columns: Vec<String>,
    pub reason: String,
    /// Filled in once the table is locked.
    pub rows: Option<i64>,
    pub estimated_bytes: i64,
}

impl Loss {
    /// `schema.table`.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// What running the down SQL would do, and what to export before it does, found under
/// locks that keep it true until it runs: the downgrade executes this value as it was
/// printed (`--dry-run` prints it and rolls back).
#[derive(Debug, Clone, Serialize)]
pub struct DowngradePlan {
    pub losses: Vec<Loss>,
    /// Sequences no column owns that the down SQL drops or resets.
    pub sequences: Vec<String>,
    /// Every table the down SQL touches, locked against writes until the downgrade ends
    /// (`schema.table`, in lock order).
    pub locked: Vec<String>,
    /// What the backup exports: the lost part of each table that has rows.
    #[serde(skip)]
    pub export: Vec<TableSpec>,
    /// The lost sequences with the state to put back.
    #[serde(skip)]
    pub export_sequences: Vec<FreeSequenceEntry>,
}

impl DowngradePlan {
    /// Whether the downgrade destroys anything a backup has to keep.
    pub fn needs_backup(&self) -> bool {
        !self.export.is_empty() || !self.export_sequences.is_empty()
    }
}

const DROPPED: &str = "table dropped";

/// How many times the plan may find tables it did not lock yet before giving up.
const PLAN_ROUNDS: usize = 3;

/// Plans the downgrade inside `tx`: runs `steps` in a savepoint to find what they touch,
/// locks those tables against writes, and plans again under the locks until the set of
/// touched tables is stable. Leaves `tx` as it was, plus the locks.
pub async fn plan(tx: &Transaction<'_>, steps: &[PlannedStep]) -> anyhow::Result<DowngradePlan> {
    let mut locked: BTreeSet<u32> = BTreeSet::new();
    let mut names: Vec<String> = Vec::new();
    for _ in 0..PLAN_ROUNDS {
        let (losses, lost_sequences, touched) = run_in_savepoint(tx, steps).await?;
        let new: Vec<u32> = touched.difference(&locked).copied().collect();
        if new.is_empty() {
            let mut losses = losses;
            widen_unmatchable(tx, &mut losses).await?;
            measure(tx, &mut losses).await?;
            let export = export_specs(tx, &losses).await?;
            let mut export_sequences = Vec::new();
            for s in &lost_sequences {
                let (last_value, is_called) = sequence_state(tx, &s.schema, &s.name).await?;
                export_sequences.push(FreeSequenceEntry {
                    schema: s.schema.clone(),
                    name: s.name.clone(),
                    last_value,
                    is_called,
                });
            }
            return Ok(DowngradePlan {
                sequences: lost_sequences
                    .iter()
                    .map(|s| format!("{}.{}", s.schema, s.name))
                    .collect(),
                losses,
                locked: names,
                export,
                export_sequences,
            });
        }
        for table in data_tables_by_oid(tx, &new).await? {
            lock(tx, &table.qualified(), &table.display()).await?;
            names.push(table.display());
        }
        locked.extend(new);
    }
    anyhow::bail!(
        "the down SQL touched different tables each of the {PLAN_ROUNDS} times it was planned, so what it destroys cannot be pinned down; nothing was changed"
    )
}

/// The part of each table with rows that the backup must hold (tables the downgrade
/// empties of nothing need no copy).
async fn export_specs(tx: &Transaction<'_>, losses: &[Loss]) -> anyhow::Result<Vec<TableSpec>> {
    let at_risk: Vec<&Loss> = losses.iter().filter(|l| l.rows.unwrap_or(0) > 0).collect();
    if at_risk.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<u32> = at_risk.iter().map(|l| l.oid).collect();
    let described = describe(tx, data_tables_by_oid(tx, &oids).await?).await?;
    let mut specs = Vec::new();
    for loss in at_risk {
        let whole = described
            .iter()
            .find(|s| s.schema == loss.schema && s.name == loss.table)
            .context("a table vanished while planning")?;
        specs.extend(spec_for(loss, whole));
    }
    Ok(specs)
}

/// Blocks writes to one table until the transaction ends; a wait past `lock_timeout` says
/// which table is busy.
async fn lock(tx: &Transaction<'_>, qualified: &str, display: &str) -> anyhow::Result<()> {
    if let Err(e) = tx
        .batch_execute(&format!("LOCK TABLE {qualified} IN SHARE MODE"))
        .await
    {
        let pg = PgError::from(e);
        if pg.code.as_ref() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return Err(err(
                Kind::LockHeld,
                format!(
                    "table busy: {display} is in use by another session (the downgrade must block writes to it while it backs it up) and the wait passed [database] lock_timeout_secs; nothing was changed; retry when it is idle or raise lock_timeout_secs"
                ),
            ));
        }
        return Err(anyhow::Error::new(pg).context(format!("locking {display}")));
    }
    Ok(())
}

type Found = (Vec<Loss>, Vec<FreeSequence>, BTreeSet<u32>);

/// Runs `steps` inside a savepoint, compares, rolls back: what they destroy, and which
/// tables they touched (took a lock stronger than a read on).
async fn run_in_savepoint(tx: &Transaction<'_>, steps: &[PlannedStep]) -> anyhow::Result<Found> {
    let before = storage_state(tx).await?;
    tx.batch_execute("SAVEPOINT backstop_plan")
        .await
        .pg(|| "starting the downgrade plan")?;
    let guard = TransactionGuard::start(tx).await?;
    let mut ran = Ok(());
    for step in steps {
        let outcome = tx.batch_execute(&step.sql).await;
        if outcome.is_ok() {
            let what = format!(
                "{} of {}, run to plan the backup,",
                step.script.name, step.revision
            );
            guard.check(tx, &what).await?;
        }
        if let Err(e) = outcome {
            let pg = PgError::from(e);
            let place = pg
                .line_in(&step.sql)
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default();
            let kind = if pg.code.as_ref() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                Kind::LockHeld
            } else {
                Kind::Internal
            };
            let what = format!("{} of {} failed{place}", step.script.name, step.revision);
            ran = Err(anyhow::Error::new(pg).context(crate::error::Error::new(kind, what)));
            break;
        }
    }
    let after = match &ran {
        Ok(()) => Some((storage_state(tx).await, locked_relations(tx).await)),
        Err(_) => None,
    };
    tx.batch_execute("ROLLBACK TO SAVEPOINT backstop_plan; RELEASE SAVEPOINT backstop_plan")
        .await
        .pg(|| "undoing the downgrade plan")?;
    ran?;
    let (after, touched) = after.expect("set when the steps ran");
    let (after, touched) = (after?, touched?);

    let mut losses = Vec::new();
    for (oid, (table, filenode)) in &before.tables {
        let mut loss = |scope: Scope, columns: Vec<String>, reason: String| {
            losses.push(Loss {
                schema: table.schema.clone(),
                table: table.name.clone(),
                oid: *oid,
                scope,
                columns,
                reason,
                rows: None,
                estimated_bytes: 0,
            })
        };
        let Some((_, new_filenode)) = after.tables.get(oid) else {
            loss(Scope::Table, Vec::new(), DROPPED.into());
            continue;
        };
        if new_filenode != filenode {
            loss(
                Scope::Table,
                Vec::new(),
                "table rewritten or truncated".into(),
            );
            continue;
        }
        let changed = after.writes.get(oid).copied().unwrap_or(0)
            - before.writes.get(oid).copied().unwrap_or(0);
        if changed > 0 {
            loss(
                Scope::Table,
                Vec::new(),
                format!("{changed} row(s) deleted or updated"),
            );
            continue;
        }
        let dropped: Vec<String> = before
            .columns
            .iter()
            .filter(|((o, n), _)| o == oid && !after.columns.contains_key(&(*o, *n)))
            .map(|(_, c)| c.clone())
            .collect();
        if !dropped.is_empty() {
            let reason = format!("column(s) {} dropped", dropped.join(", "));
            loss(Scope::Columns, dropped, reason);
        }
    }
    let lost_sequences = before
        .free_sequences
        .iter()
        .filter(|(oid, (_, node))| after.free_sequences.get(oid).is_none_or(|(_, n)| n != node))
        .map(|(_, (s, _))| s.clone())
        .collect();
    // Only tables that existed before count (new ones need no lock, and indexes, sequences
    // and catalogs are not tables); every lost table is touched, whatever pg_locks says.
    let touched = touched
        .into_iter()
        .filter(|o| before.tables.contains_key(o))
        .chain(losses.iter().map(|l| l.oid))
        .collect();
    Ok((losses, lost_sequences, touched))
}

/// A column-level loss whose rows cannot be matched back by key after a re-upgrade (no
/// primary key, or the down SQL drops a key column, which the re-upgrade would refill with
/// new values) becomes a whole-table loss.
async fn widen_unmatchable(tx: &Transaction<'_>, losses: &mut [Loss]) -> anyhow::Result<()> {
    for loss in losses.iter_mut().filter(|l| l.scope == Scope::Columns) {
        let key = primary_key(tx, loss.oid).await?;
        let why = if key.is_empty() {
            "the table has no primary key to match rows by"
        } else if key.iter().any(|k| loss.columns.contains(k)) {
            "the primary key goes with them"
        } else {
            continue;
        };
        tracing::warn!(
            "{}: column(s) {} dropped and {why}, so the whole table is backed up",
            loss.display(),
            loss.columns.join(", ")
        );
        loss.scope = Scope::Table;
        loss.reason = format!("{}; {why}", loss.reason);
    }
    Ok(())
}

/// Counts what is in the lost tables; they are locked, so the count stays true. Row-level
/// security is off for the count: a policy must not make a table look empty.
async fn measure(tx: &Transaction<'_>, losses: &mut [Loss]) -> anyhow::Result<()> {
    tx.batch_execute("SET LOCAL row_security = off")
        .await
        .pg(|| "turning row-level security off for the count")?;
    for loss in losses.iter_mut() {
        let r = tx
            .query_one(
                &format!(
                    "SELECT count(*), pg_catalog.pg_relation_size($1::pg_catalog.oid) FROM ONLY {}",
                    crate::pg::qualified(&loss.schema, &loss.table)
                ),
                &[&loss.oid],
            )
            .await
            .map_err(|e| row_security_refusal(e, &loss.display()))?;
        loss.rows = Some(r.get(0));
        loss.estimated_bytes = r.get(1);
    }
    tx.batch_execute("SET LOCAL row_security TO DEFAULT")
        .await
        .pg(|| "turning row-level security back on")?;
    Ok(())
}

/// The export spec for a loss: the whole table, or for a column-level loss the primary key
/// plus the dropped columns; with how a re-upgrade puts it back.
fn spec_for(loss: &Loss, whole: &TableSpec) -> Option<TableSpec> {
    let mut spec = match loss.scope {
        Scope::Table => whole.clone(),
        Scope::Columns => column_spec(loss, whole)?,
    };
    spec.on_restore = if spec.scope == Scope::Columns || loss.reason == DROPPED {
        OnRestore::Load
    } else if !loss.columns.is_empty() || whole.primary_key.is_empty() {
        OnRestore::Replace
    } else {
        OnRestore::Merge
    };
    Some(spec)
}

/// The export spec for a column-level loss: the primary key plus the dropped columns.
/// The whole table is backed up instead when rows cannot be matched back by key: it has no
/// primary key, or the downgrade drops a key column (the re-upgrade would make new keys);
/// [`plan`] already reports those as whole-table losses. `None` when nothing needs saving
/// (only generated columns were dropped; they are recomputed).
fn column_spec(loss: &Loss, whole: &TableSpec) -> Option<TableSpec> {
    let key_dropped = whole.primary_key.iter().any(|k| loss.columns.contains(k));
    if whole.primary_key.is_empty() || key_dropped {
        return Some(whole.clone());
    }
    let saved: Vec<&ColumnEntry> = whole
        .columns
        .iter()
        .filter(|c| loss.columns.contains(&c.name))
        .collect();
    if saved.is_empty() {
        return None;
    }
    let mut columns: Vec<ColumnEntry> = whole
        .primary_key
        .iter()
        .filter_map(|k| whole.columns.iter().find(|c| &c.name == k).cloned())
        .collect();
    columns.extend(
        saved
            .into_iter()
            .filter(|c| !whole.primary_key.contains(&c.name))
            .cloned(),
    );
    Some(TableSpec {
        scope: Scope::Columns,
        columns,
        sequences: Vec::new(),
        ..whole.clone()
    })
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case table reads best as tuples
mod tests {
    use super::*;

    fn spec(pk: &[&str], cols: &[&str]) -> TableSpec {
        TableSpec {
            scope: Scope::Table,
            oid: 1,
            schema: "s".into(),
            name: "t".into(),
            parent: None,
            columns: cols
                .iter()
                .map(|c| ColumnEntry {
                    name: c.to_string(),
                    data_type: "text".into(),
                })
                .collect(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            estimated_bytes: 0,
            stored_estimate: 0,
            sequences: Vec::new(),
            on_restore: OnRestore::Load,
        }
    }

    fn loss(dropped: &[&str]) -> Loss {
        Loss {
            schema: "s".into(),
            table: "t".into(),
            oid: 1,
            scope: Scope::Columns,
            columns: dropped.iter().map(|s| s.to_string()).collect(),
            reason: String::new(),
            rows: None,
            estimated_bytes: 0,
        }
    }

    #[test]
    fn column_backups_only_when_the_key_survives() {
        // (primary key, dropped columns) -> exported columns and scope, or None
        let cases: &[(&[&str], &[&str], Option<(Scope, &[&str])>)] = &[
            (&["id"], &["note"], Some((Scope::Columns, &["id", "note"]))),
            (
                &["a", "b"],
                &["note"],
                Some((Scope::Columns, &["a", "b", "note"])),
            ),
            (
                &["id"],
                &["id"],
                Some((Scope::Table, &["id", "note", "gen"])),
            ),
            (
                &["a", "b"],
                &["b", "note"],
                Some((Scope::Table, &["a", "b", "note", "gen"])),
            ),
            (&[], &["note"], Some((Scope::Table, &["note", "gen"]))),
            // Only a generated column (not in the export's columns) was dropped.
            (&["id"], &["gen_only"], None),
        ];
        for (pk, dropped, want) in cases {
            let mut cols: Vec<&str> = pk.to_vec();
            cols.extend(["note", "gen"]);
            cols.retain(|c| *c != "gen" || !dropped.contains(&"gen_only"));
            let whole = spec(pk, &cols);
            let got = column_spec(&loss(dropped), &whole).map(|s| {
                (
                    s.scope,
                    s.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                )
            });
            let want = want.map(|(scope, c)| (scope, c.iter().map(|s| s.to_string()).collect()));
            assert_eq!(got, want, "pk {pk:?}, dropped {dropped:?}");
        }
    }
}
