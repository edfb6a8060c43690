//! Catalog queries, in one place, so the rules for which relations count are decided once.
//!
//! A *user table* is an ordinary or partitioned table (`relkind` `r` or `p`) of the schema
//! that is not one of backstop's own bookkeeping tables. Backups, downgrade planning,
//! restores, snapshots and generated fixtures all ask [`user_tables`], never the catalog
//! directly, so a change to that rule (partitions, more schemas) happens here and only here.
//! Everything reads through the caller's client, so inside its snapshot and locks.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use super::error::PgContext;
use super::sql::qualified;

/// The ledger's table of applied revisions (see [`crate::ledger`]), created in the configured schema on first use.
pub const BOOKKEEPING_TABLE: &str = "backstop_migrations";

/// Every backed-up downgrade.
pub const DOWNGRADES_TABLE: &str = "backstop_downgrades";

/// backstop's own tables, left out of schema snapshots, backups and emptiness checks.
pub const OWN_TABLES: &[&str] = &[BOOKKEEPING_TABLE, DOWNGRADES_TABLE];

/// The relation kinds that hold rows backstop saves: ordinary and partitioned tables.
const TABLE_KINDS: &str = "('r', 'p')";

/// One user table.
#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// On-disk size of the heap, in bytes.
    pub heap_bytes: i64,
    /// A partition of a partitioned table (its rows are also its parent's).
    pub is_partition: bool,
}

/// Every user table of `schema`, by name.
pub async fn user_tables(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<Vec<Relation>> {
    let own: &[&str] = OWN_TABLES;
    Ok(client
        .query(
            &format!(
                "SELECT c.oid, c.relname::text, pg_catalog.pg_relation_size(c.oid), c.relispartition
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN {TABLE_KINDS} AND c.relname <> ALL($2)
                 ORDER BY c.relname"
            ),
            &[&schema, &own],
        )
        .await
        .pg(|| format!("listing the tables of schema {schema}"))?
        .iter()
        .map(|r| Relation {
            oid: r.get(0),
            schema: schema.to_string(),
            name: r.get(1),
            heap_bytes: r.get(2),
            is_partition: r.get(3),
        })
        .collect())
}

/// The user table `schema.name`, if there is one.
pub async fn user_table(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> anyhow::Result<Option<Relation>> {
    Ok(user_tables(client, schema)
        .await?
        .into_iter()
        .find(|r| r.name == name))
}

/// A column as a backup stores it: name and SQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data_type: String,
}

/// A sequence owned by a column (serial or identity) and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSequence {
    pub name: String,
    pub column: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// What a backup needs to know about a table.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub relation: Relation,
    /// Every column except generated ones, in column order.
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub sequences: Vec<OwnedSequence>,
}

/// Reads the columns, primary key and owned sequences (with their state) of `relation`.
pub async fn shape(client: &impl GenericClient, relation: Relation) -> anyhow::Result<TableShape> {
    let (oid, name) = (relation.oid, relation.name.clone());
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
        .map(|r| Column {
            name: r.get(0),
            data_type: r.get(1),
        })
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
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}",
                    qualified(&sschema, &sname)
                ),
                &[],
            )
            .await
            .pg(|| format!("reading sequence {sname}"))?;
        sequences.push(OwnedSequence {
            name: sname,
            column,
            last_value: state.get(0),
            is_called: state.get(1),
        });
    }
    Ok(TableShape {
        relation,
        columns,
        primary_key,
        sequences,
    })
}

/// Which server and database a session talks to.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub database: String,
    /// `pg_control_system().system_identifier`, when the role may read it.
    pub system_identifier: Option<String>,
    pub server_version: String,
}

/// The database's name, version and (when readable) system identifier.
pub async fn identity(client: &impl GenericClient) -> anyhow::Result<ServerIdentity> {
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
    Ok(ServerIdentity {
        database: row.get(0),
        system_identifier,
        server_version: row.get(1),
    })
}

/// Every live column of a table: name → whether it is generated.
pub async fn column_kinds(
    client: &impl GenericClient,
    oid: u32,
) -> anyhow::Result<BTreeMap<String, bool>> {
    Ok(client
        .query(
            "SELECT attname::text, attgenerated <> '' FROM pg_catalog.pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .pg(|| "reading the columns of a table")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Foreign keys among `oids`: (referencing table, referenced table), self-references left out.
pub async fn foreign_keys(
    client: &impl GenericClient,
    oids: &[u32],
) -> anyhow::Result<Vec<(u32, u32)>> {
    Ok(client
        .query(
            "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint
             WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1) AND conrelid <> confrelid",
            &[&oids],
        )
        .await
        .pg(|| "reading foreign keys")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// An index no constraint depends on, which a load may drop and rebuild.
#[derive(Debug, Clone)]
pub struct SecondaryIndex {
    pub schema: String,
    pub name: String,
    pub definition: String,
}

/// The indexes of a table that back no constraint and belong to no other object.
pub async fn secondary_indexes(
    client: &impl GenericClient,
    oid: u32,
) -> anyhow::Result<Vec<SecondaryIndex>> {
    Ok(client
        .query(
            "SELECT n.nspname::text, i.relname::text, pg_catalog.pg_get_indexdef(x.indexrelid)
             FROM pg_catalog.pg_index x
             JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace
             WHERE x.indrelid = $1
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = x.indexrelid)
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = x.indexrelid AND d.deptype = 'i')",
            &[&oid],
        )
        .await
        .pg(|| "reading the indexes of a table")?
        .iter()
        .map(|r| SecondaryIndex {
            schema: r.get(0),
            name: r.get(1),
            definition: r.get(2),
        })
        .collect())
}

/// (column, sequence) for every column of the table that owns a sequence.
pub async fn serial_columns(
    client: &impl GenericClient,
    relation: &Relation,
) -> anyhow::Result<Vec<(String, String)>> {
    let name = qualified(&relation.schema, &relation.name);
    Ok(client
        .query(
            "SELECT a.attname::text, pg_catalog.pg_get_serial_sequence($1, a.attname)
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&name, &relation.oid],
        )
        .await
        .pg(|| format!("finding the sequences of {}", relation.name))?
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
        .collect())
}

/// Where each user table's data stands inside the current transaction, to compare before
/// and after running SQL in a savepoint.
#[derive(Debug, Default)]
pub struct StorageState {
    /// oid → (name, relfilenode)
    pub tables: BTreeMap<u32, (String, u32)>,
    /// (oid, attnum) → name, for live columns
    pub columns: BTreeMap<(u32, i16), String>,
    /// oid → rows deleted + updated in this transaction so far
    pub writes: BTreeMap<u32, i64>,
}

pub async fn storage_state(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<StorageState> {
    let mut state = StorageState::default();
    let own: &[&str] = OWN_TABLES;
    for r in client
        .query(
            &format!(
                "SELECT c.oid, c.relname::text, c.relfilenode FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN {TABLE_KINDS} AND c.relname <> ALL($2)"
            ),
            &[&schema, &own],
        )
        .await
        .pg(|| "reading the catalog")?
    {
        state.tables.insert(r.get(0), (r.get(1), r.get(2)));
    }
    let oids: Vec<u32> = state.tables.keys().copied().collect();
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
    Ok(state)
}

/// Tables, views and materialized views of `schema` other than backstop's own, by name:
/// what makes a database "already managed" by something else.
pub async fn existing_relations(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<Vec<String>> {
    let own: &[&str] = OWN_TABLES;
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname <> ALL($2)
             ORDER BY c.relname",
            &[&schema, &own],
        )
        .await
        .pg(|| "listing existing tables")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The schema of an `alembic_version` table (the configured schema first), if any.
pub async fn alembic_schema(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT n.nspname::text FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = 'alembic_version' AND c.relkind = 'r'
             ORDER BY (n.nspname = $1) DESC LIMIT 1",
            &[&schema],
        )
        .await
        .pg(|| "looking for alembic_version")?
        .map(|r| r.get(0)))
}
