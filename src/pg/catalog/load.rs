//! What a load needs to know about a table: the indexes it may drop and rebuild, the
//! sequences its columns (or its parents' columns) own, and the triggers to keep quiet.

use tokio_postgres::GenericClient;

use super::{Relation, WITH_ANCESTORS};
use crate::pg::error::PgContext;

/// An index no constraint depends on, which a load may drop and rebuild.
#[derive(Debug, Clone)]
pub struct SecondaryIndex {
    pub schema: String,
    pub name: String,
    pub definition: String,
}

/// The indexes of a table that back no constraint, belong to no other object and are not
/// a partition of a partitioned index (those cannot be dropped on their own).
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
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = x.indexrelid AND d.deptype = 'i')
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = x.indexrelid)",
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

/// A sequence a column owns (serial or identity), on the table or on one of its ancestors
/// (a partition's ids come from its parent's sequence).
#[derive(Debug, Clone)]
pub struct SerialColumn {
    /// `"schema"."table"` of the table whose column owns the sequence.
    pub owner: String,
    pub column: String,
    /// The sequence, as `pg_get_serial_sequence` names it.
    pub sequence: String,
}

pub async fn serial_columns(
    client: &impl GenericClient,
    relation: &Relation,
) -> anyhow::Result<Vec<SerialColumn>> {
    Ok(client
        .query(
            &format!(
                "{WITH_ANCESTORS}
                 SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                        a.attname::text,
                        pg_catalog.pg_get_serial_sequence(
                            pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), a.attname)
                 FROM up JOIN pg_catalog.pg_class c ON c.oid = up.oid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            &[&relation.oid],
        )
        .await
        .pg(|| format!("finding the sequences of {}", relation.name))?
        .iter()
        .filter_map(|r| {
            Some(SerialColumn {
                owner: r.get(0),
                column: r.get(1),
                sequence: r.get::<_, Option<String>>(2)?,
            })
        })
        .collect())
}

/// An enabled user trigger: name and `tgenabled` (`O` origin, `A` always, `R` replica).
#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub enabled: String,
}

/// The user triggers of a table that would fire on a load (not internal ones such as
/// foreign-key checks, and not ones already disabled).
pub async fn enabled_user_triggers(
    client: &impl GenericClient,
    oid: u32,
) -> anyhow::Result<Vec<Trigger>> {
    Ok(client
        .query(
            "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger
             WHERE tgrelid = $1 AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname",
            &[&oid],
        )
        .await
        .pg(|| "reading the triggers of a table")?
        .iter()
        .map(|r| Trigger {
            name: r.get(0),
            enabled: r.get(1),
        })
        .collect())
}
