//! What SQL run in a transaction changed: the storage, columns and row writes of every data
//! table, the sequences no column owns, and the tables it locked. Downgrade planning compares
//! these before and after running the down SQL in a savepoint.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use super::{data_tables, Relation, Schemas, NOT_EXTENSION_MEMBER, USER_SCHEMA};
use crate::pg::error::PgContext;
use crate::pg::sql::qualified;

/// Where each data table of every user schema stands inside the current transaction, to
/// compare before and after running SQL in a savepoint.
#[derive(Debug, Default)]
pub struct StorageState {
    /// oid → (table, relfilenode)
    pub tables: BTreeMap<u32, (Relation, u32)>,
    /// (oid, attnum) → name, for live columns
    pub columns: BTreeMap<(u32, i16), String>,
    /// oid → rows deleted + updated in this transaction so far
    pub writes: BTreeMap<u32, i64>,
    /// oid → (sequence, relfilenode), for sequences no column owns
    pub free_sequences: BTreeMap<u32, (FreeSequence, u32)>,
}

/// A sequence that no column owns (an application's own counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSequence {
    pub schema: String,
    pub name: String,
}

pub async fn storage_state(client: &impl GenericClient) -> anyhow::Result<StorageState> {
    let mut state = StorageState::default();
    let tables = data_tables(client, Schemas::All).await?;
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let filenodes: BTreeMap<u32, u32> = client
        .query(
            "SELECT oid, relfilenode FROM pg_catalog.pg_class WHERE oid = ANY($1)",
            &[&oids],
        )
        .await
        .pg(|| "reading the catalog")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for t in tables {
        let node = filenodes.get(&t.oid).copied().unwrap_or(0);
        state.tables.insert(t.oid, (t, node));
    }
    for r in client
        .query(
            "SELECT attrelid, attnum, attname::text FROM pg_catalog.pg_attribute
             WHERE attrelid = ANY($1) AND attnum > 0 AND NOT attisdropped",
            &[&oids],
        )
        .await
        .pg(|| "reading the catalog's columns")?
    {
        state.columns.insert((r.get(0), r.get(1)), r.get(2));
    }
    for r in client
        .query(
            "SELECT relid, n_tup_upd + n_tup_del FROM pg_catalog.pg_stat_xact_user_tables WHERE relid = ANY($1)",
            &[&oids],
        )
        .await
        .pg(|| "reading this transaction's row changes")?
    {
        state.writes.insert(r.get(0), r.get(1));
    }
    for r in client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relfilenode
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'S' AND {USER_SCHEMA} AND {NOT_EXTENSION_MEMBER}
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i'))"
            ),
            &[],
        )
        .await
        .pg(|| "reading the sequences")?
    {
        let seq = FreeSequence {
            schema: r.get(1),
            name: r.get(2),
        };
        state.free_sequences.insert(r.get(0), (seq, r.get(3)));
    }
    Ok(state)
}

/// A sequence's `last_value` and `is_called`.
pub async fn sequence_state(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> anyhow::Result<(i64, bool)> {
    let row = client
        .query_one(
            &format!(
                "SELECT last_value, is_called FROM {}",
                qualified(schema, name)
            ),
            &[],
        )
        .await
        .pg(|| format!("reading sequence {schema}.{name}"))?;
    Ok((row.get(0), row.get(1)))
}

/// Relations this session holds a lock stronger than a read on: what the SQL run so far
/// in this transaction touched. Read without joining the catalog, so tables the SQL
/// dropped (invisible in this transaction now) are there too.
pub async fn locked_relations(client: &impl GenericClient) -> anyhow::Result<Vec<u32>> {
    Ok(client
        .query(
            "SELECT DISTINCT l.relation FROM pg_catalog.pg_locks l
             WHERE l.locktype = 'relation' AND l.pid = pg_catalog.pg_backend_pid() AND l.granted
               AND l.mode <> 'AccessShareLock' AND l.database = (
                   SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            &[],
        )
        .await
        .pg(|| "reading the locks this session holds")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
