//! What a downgrade would destroy, found by running it: the down SQL runs inside a savepoint,
//! the catalog is compared before and after, and the savepoint is rolled back. No SQL text is
//! parsed, so any statement that drops, rewrites or empties data is caught.
//!
//! A table counts as lost when it is dropped, when its storage is replaced (TRUNCATE, a
//! rewriting ALTER such as a type change), or when the down SQL deletes or updates rows in
//! it. Columns count as lost when they are dropped; then the primary key plus those columns
//! are enough to put the values back after a re-upgrade.

use serde::Serialize;
use tokio_postgres::Transaction;

use crate::backup::export::TableSpec;
use crate::backup::manifest::{ColumnEntry, Scope};
use crate::migrate::PlannedStep;
use crate::pg::catalog::storage_state;
use crate::pg::{qualified, PgContext, PgError};

/// One table the downgrade would take data from.
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
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

/// Runs `steps` inside a savepoint, compares, rolls back. The transaction is left as it was.
pub async fn find_losses(
    tx: &Transaction<'_>,
    schema: &str,
    steps: &[PlannedStep],
) -> anyhow::Result<Vec<Loss>> {
    let before = storage_state(tx, schema).await?;
    tx.batch_execute("SAVEPOINT backstop_plan")
        .await
        .pg(|| "starting the downgrade plan")?;
    let mut ran = Ok(());
    for step in steps {
        if let Err(e) = tx.batch_execute(&step.sql).await {
            let pg = PgError::from(e);
            let place = pg
                .line_in(&step.sql)
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default();
            ran = Err(anyhow::anyhow!(
                "down.sql of {} failed{place}: {}",
                step.revision,
                pg.message
            ));
            break;
        }
    }
    let after = match &ran {
        Ok(()) => Some(storage_state(tx, schema).await),
        Err(_) => None,
    };
    tx.batch_execute("ROLLBACK TO SAVEPOINT backstop_plan; RELEASE SAVEPOINT backstop_plan")
        .await
        .pg(|| "undoing the downgrade plan")?;
    ran?;
    let after = after.expect("set when the steps ran")?;

    let mut losses = Vec::new();
    for (oid, (name, filenode)) in &before.tables {
        let mut loss = |scope: Scope, columns: Vec<String>, reason: String| {
            losses.push(Loss {
                table: name.clone(),
                oid: *oid,
                scope,
                columns,
                reason,
                rows: None,
                estimated_bytes: 0,
            })
        };
        let Some((_, new_filenode)) = after.tables.get(oid) else {
            loss(Scope::Table, Vec::new(), "table dropped".into());
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
    Ok(losses)
}

/// Locks the lost tables against writes (readers go on), then counts what is in them.
/// In READ COMMITTED, every statement after the lock sees all rows that can ever be there.
pub async fn lock_and_measure(
    tx: &Transaction<'_>,
    schema: &str,
    losses: &mut [Loss],
) -> anyhow::Result<()> {
    if losses.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = losses.iter().map(|l| qualified(schema, &l.table)).collect();
    tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", names.join(", ")))
        .await
        .pg(|| "locking the tables the downgrade changes")?;
    for (loss, name) in losses.iter_mut().zip(&names) {
        let r = tx
            .query_one(
                &format!(
                    "SELECT count(*), pg_catalog.pg_relation_size($1::text::regclass) FROM {name}"
                ),
                &[name],
            )
            .await
            .pg(|| format!("counting the rows of {}", loss.table))?;
        loss.rows = Some(r.get(0));
        loss.estimated_bytes = r.get(1);
    }
    Ok(())
}

/// The export spec for a column-level loss: the primary key plus the dropped columns. A
/// table without a primary key cannot be matched back, so it is backed up whole. `None` when
/// nothing needs saving (only generated columns were dropped; they are recomputed).
pub fn column_spec(loss: &Loss, whole: &TableSpec) -> Option<TableSpec> {
    if whole.primary_key.is_empty() {
        tracing::warn!(
            "table {} has no primary key, so the whole table is backed up instead of columns {}",
            loss.table,
            loss.columns.join(", ")
        );
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
