//! Catalog queries, in one place, so the rules for which relations count are decided once.
//!
//! A *user table* is an ordinary or partitioned table (`relkind` `r` or `p`) of the schema
//! that is not one of backstop's own bookkeeping tables. Backups, downgrade planning,
//! restores, snapshots and generated fixtures all ask [`user_tables`], never the catalog
//! directly, so a change to that rule (partitions, more schemas) happens here and only here.
//! Everything reads through the caller's client, so inside its snapshot and locks.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

mod changes;
mod load;

pub use changes::{locked_relations, sequence_state, storage_state, FreeSequence, StorageState};
pub use load::{
    column_sequences, enabled_user_triggers, secondary_indexes, ColumnSequence, SecondaryIndex,
    Trigger,
};

use super::error::PgContext;
use super::sql::qualified;

/// The ledger's table of applied revisions (see [`crate::ledger`]), created in the configured schema on first use.
pub const BOOKKEEPING_TABLE: &str = "backstop_migrations";

/// Every backed-up downgrade.
pub const DOWNGRADES_TABLE: &str = "backstop_downgrades";

/// Every scheduled slot a daemon ran, failed or found missed.
pub const SLOTS_TABLE: &str = "backstop_schedule_slots";

/// Alembic's record of the current revision, which the rendered SQL of an Alembic project
/// keeps in step: bookkeeping like backstop's own, not data.
pub const ALEMBIC_VERSION_TABLE: &str = "alembic_version";

/// Bookkeeping tables (backstop's own, Alembic's, and those of the tools in
/// [`crate::migrate::Tool`]), left out of schema snapshots, backups, downgrade plans and
/// emptiness checks: restoring one would rewind the record of what ran, not data.
pub const OWN_TABLES: &[&str] = &[
    BOOKKEEPING_TABLE,
    DOWNGRADES_TABLE,
    SLOTS_TABLE,
    ALEMBIC_VERSION_TABLE,
    "__diesel_schema_migrations",
    "schema_migrations",
    "_sqlx_migrations",
];

/// Schemas that belong to users: not the system's, not temporary, not TOAST.
pub(super) const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// Relations that an extension created belong to the extension, not to the user.
pub(super) const NOT_EXTENSION_MEMBER: &str = "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Where to look for tables.
#[derive(Debug, Clone, Copy)]
pub enum Schemas<'a> {
    /// One schema (the configured one, for backups and snapshots).
    One(&'a str),
    /// Every user schema (what a downgrade may destroy).
    All,
}

/// One user table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// On-disk size of the heap, in bytes.
    pub heap_bytes: i64,
    /// Heap and TOAST (no indexes), in bytes: the most its rows can take on disk, so a
    /// fair upper bound of their compressed CSV.
    pub table_bytes: i64,
    /// A partition of a partitioned table (its rows are also its parent's).
    pub is_partition: bool,
    /// The table it is a partition of, or inherits from, as `schema.name`.
    pub parent: Option<String>,
}

impl Relation {
    /// `"schema"."name"`, for SQL.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `schema.name`, for messages and manifests.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether `named` (as a user writes it in `[backup] tables`, a schedule or `--table`:
    /// `name` or `schema.name`, in `schema`) means this table, or the partitioned table it
    /// is a partition of: the one rule every place that matches names uses.
    pub fn is_named(&self, named: &str, schema: &str) -> bool {
        let bare = named.strip_prefix(&format!("{schema}.")).unwrap_or(named);
        bare == self.name || self.parent.as_deref() == Some(&format!("{schema}.{bare}"))
    }
}

/// User tables: ordinary and partitioned tables (`relkind` `r`, `p`) that are neither
/// backstop's own nor an extension's, in `schemas`, ordered by schema and name (the order
/// locks are taken in).
async fn tables(
    client: &impl GenericClient,
    schemas: Schemas<'_>,
    extra: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<Relation>> {
    let own: &[&str] = OWN_TABLES;
    let schema = match schemas {
        Schemas::One(s) => Some(s),
        Schemas::All => None,
    };
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&schema, &own];
    all.extend_from_slice(params);
    Ok(client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, pg_catalog.pg_relation_size(c.oid),
                        c.relispartition, pg_catalog.pg_table_size(c.oid),
                        (SELECT pn.nspname || '.' || pc.relname FROM pg_catalog.pg_inherits i
                           JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
                           JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
                          WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1)
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND c.relname <> ALL($2) AND {NOT_EXTENSION_MEMBER}
                   AND CASE WHEN $1::text IS NULL THEN {USER_SCHEMA} ELSE n.nspname = $1::text END
                   {extra}
                 ORDER BY n.nspname, c.relname"
            ),
            &all,
        )
        .await
        .pg(|| match schema {
            Some(s) => format!("listing the tables of schema {s}"),
            None => "listing the tables of every schema".to_string(),
        })?
        .iter()
        .map(|r| Relation {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            heap_bytes: r.get(3),
            is_partition: r.get(4),
            table_bytes: r.get(5),
            parent: r.get(6),
        })
        .collect())
}

/// Every user table of `schema`, partitioned parents and their partitions alike (what a
/// schema snapshot describes).
pub async fn user_tables(
    client: &impl GenericClient,
    schema: &str,
) -> anyhow::Result<Vec<Relation>> {
    tables(client, Schemas::One(schema), "", &[]).await
}

/// Tables and partitioned parents of every user schema, for what fills them all.
pub async fn all_user_tables(client: &impl GenericClient) -> anyhow::Result<Vec<Relation>> {
    tables(client, Schemas::All, "", &[]).await
}

/// The tables that hold rows themselves: partitions and plain tables, not partitioned
/// parents. Exported with `ONLY`, each row is saved exactly once, in the table it lives in.
pub async fn data_tables(
    client: &impl GenericClient,
    schemas: Schemas<'_>,
) -> anyhow::Result<Vec<Relation>> {
    tables(client, schemas, "AND c.relkind = 'r'", &[]).await
}

/// The data tables with these oids.
pub async fn data_tables_by_oid(
    client: &impl GenericClient,
    oids: &[u32],
) -> anyhow::Result<Vec<Relation>> {
    tables(
        client,
        Schemas::All,
        "AND c.relkind = 'r' AND c.oid = ANY($3)",
        &[&oids],
    )
    .await
}

/// The user table `schema.name`, if there is one.
pub async fn user_table(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> anyhow::Result<Option<Relation>> {
    Ok(
        tables(client, Schemas::One(schema), "AND c.relname = $3", &[&name])
            .await?
            .pop(),
    )
}

/// A column as a backup stores it: name and SQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data_type: String,
}

/// A sequence a column takes its values from (owned, or called by its default) and its
/// state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSequence {
    pub schema: String,
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

/// Reads the columns, primary key and the sequences its columns use (with their state) of
/// `relation`.
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
    let primary_key = primary_key(client, oid).await?;
    let mut sequences = Vec::new();
    for used in column_sequences(client, oid).await? {
        let state = client
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", used.qualified()),
                &[],
            )
            .await
            .pg(|| format!("reading sequence {}.{}", used.schema, used.name))?;
        sequences.push(OwnedSequence {
            schema: used.schema,
            name: used.name,
            column: used.column,
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

/// The primary key's columns, in key order; empty when there is none.
pub async fn primary_key(client: &impl GenericClient, oid: u32) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = $1 AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .pg(|| "reading a primary key")?
        .iter()
        .map(|r| r.get(0))
        .collect())
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

/// The table and every table it is a partition of or inherits from, as SQL producing oids.
pub(super) const WITH_ANCESTORS: &str = "WITH RECURSIVE up(oid) AS (
         SELECT $1::pg_catalog.oid
         UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid)";

/// Columns that reference large objects (`oid` or the `lo` extension type): their values
/// are pointers into `pg_largeobject`, which a table's rows do not carry.
pub async fn large_object_columns(
    client: &impl GenericClient,
    oid: u32,
) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND (t.oid = 'pg_catalog.oid'::pg_catalog.regtype OR t.typname = 'lo'
                    OR t.typbasetype = 'pg_catalog.oid'::pg_catalog.regtype)
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .pg(|| "reading the column types of a table")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Fails with a usage error when `schema` does not exist: backstop never creates the
/// configured schema (a typo would otherwise get a second copy of every table).
pub async fn require_schema(client: &impl GenericClient, schema: &str) -> anyhow::Result<()> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .pg(|| format!("looking up schema {schema}"))?
        .get(0);
    if !exists {
        return crate::error::usage(format!(
            "[database] schema {schema:?} does not exist in this database; create it (CREATE SCHEMA {}) or set [database] schema to one that exists; nothing was changed",
            crate::pg::quote_ident(schema)
        ));
    }
    Ok(())
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
