//! Sequences after a restore: each one a restored column takes its values from (owned, or
//! called by its default) moved past what was loaded and past its saved state, and the free
//! ones a downgrade dropped set to their saved state, so the next insert never collides
//! with a restored row.

use tokio_postgres::Transaction;

use crate::backup::manifest::{Manifest, TableEntry};
use crate::pg::catalog::{self, Relation};
use crate::pg::{qualified, quote_ident, PgContext};

/// Moves each sequence a column of the table (or of a table it is a partition of) takes its
/// values from, owned or called by a default, past the restored maximum, the value saved at
/// backup time and its own current value, whichever is largest.
pub(super) async fn advance_sequences(
    tx: &Transaction<'_>,
    relation: &Relation,
    entry: &TableEntry,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for used in catalog::column_sequences(tx, relation.oid).await? {
        let mut floors = Vec::new();
        if used.integer {
            let max: Option<i64> = tx
                .query_one(
                    &format!(
                        "SELECT max({})::bigint FROM {}",
                        quote_ident(&used.column),
                        used.owner
                    ),
                    &[],
                )
                .await
                .pg(|| format!("reading the largest {} of {}", used.column, used.owner))?
                .get(0);
            floors.extend(max.map(|m| (m, true)));
        }
        if let Some(s) = entry.sequences.iter().find(|s| {
            s.column == used.column
                && s.name == used.name
                && (s.schema.is_empty() || s.schema == used.schema)
        }) {
            floors.push((s.last_value, s.is_called));
        }
        let (value, called) = advance(tx, &used.qualified(), &floors).await?;
        out.push(format!(
            "{}.{} = {value}{}",
            used.schema,
            used.name,
            if called { "" } else { " (not yet used)" }
        ));
    }
    Ok(out)
}

/// Sets the saved sequences that no column owns to their saved state, unless they are
/// already past it; ones that do not exist (any more) are left out.
pub async fn restore_free_sequences(
    tx: &Transaction<'_>,
    manifest: &Manifest,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for s in &manifest.sequences {
        let name = qualified(&s.schema, &s.name);
        let exists: bool = tx
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&name])
            .await
            .pg(|| format!("looking up sequence {}.{}", s.schema, s.name))?
            .get(0);
        if exists {
            let (value, _) = advance(tx, &name, &[(s.last_value, s.is_called)]).await?;
            out.push(format!("{}.{} = {value}", s.schema, s.name));
        }
    }
    Ok(out)
}

/// Moves `sequence` to the largest of its own state and `floors` ((value, is_called)
/// pairs; the next value handed out is value + called), never back. Returns the state.
async fn advance(
    tx: &Transaction<'_>,
    sequence: &str,
    floors: &[(i64, bool)],
) -> anyhow::Result<(i64, bool)> {
    let row = tx
        .query_one(
            &format!("SELECT last_value, is_called FROM {sequence}"),
            &[],
        )
        .await
        .pg(|| format!("reading sequence {sequence}"))?;
    let current: (i64, bool) = (row.get(0), row.get(1));
    let target = floors
        .iter()
        .copied()
        .chain([current])
        .max_by_key(|(v, c)| (*v as i128) + i128::from(*c))
        .unwrap_or(current);
    if target != current {
        tx.query_one(
            "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
            &[&sequence, &target.0, &target.1],
        )
        .await
        .pg(|| format!("advancing sequence {sequence}"))?;
    }
    Ok(target)
}
