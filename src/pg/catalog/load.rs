//! What a load needs to know about a table: the indexes it may drop and rebuild, the
//! sequences its columns (or its parents' columns) take their values from, and the triggers
//! to keep quiet.

use tokio_postgres::GenericClient;

use super::WITH_ANCESTORS;
use crate::pg::error::PgContext;
use crate::pg::sql::qualified;

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

/// A sequence a column of the table (or of a table it is a partition of) hands its values
/// from: one the column owns (serial, identity, `OWNED BY`) or one its default calls
/// (`DEFAULT nextval('invoice_no')`, owned by nothing). A restore must move each past what
/// it loaded, or the next insert collides with a restored row.
#[derive(Debug, Clone)]
pub struct ColumnSequence {
    /// `"schema"."table"` of the table whose column it is.
    pub owner: String,
    pub column: String,
    /// The column holds integers, so its largest value bounds the sequence.
    pub integer: bool,
    pub schema: String,
    pub name: String,
}

impl ColumnSequence {
    /// `"schema"."sequence"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

pub async fn column_sequences(
    client: &impl GenericClient,
    oid: u32,
) -> anyhow::Result<Vec<ColumnSequence>> {
    Ok(client
        .query(
            &format!(
                "{WITH_ANCESTORS},
                 used(rel, att, seq) AS (
                     SELECT d.refobjid, d.refobjsubid, d.objid FROM pg_catalog.pg_depend d
                     WHERE d.refobjid IN (SELECT oid FROM up) AND d.refobjsubid > 0
                       AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
                     UNION
                     SELECT ad.adrelid, ad.adnum, d.refobjid FROM pg_catalog.pg_attrdef ad
                     JOIN pg_catalog.pg_depend d ON d.objid = ad.oid
                       AND d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                     WHERE ad.adrelid IN (SELECT oid FROM up))
                 SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                        a.attname::text,
                        a.atttypid IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                                       'pg_catalog.int8'::pg_catalog.regtype),
                        sn.nspname::text, s.relname::text
                 FROM used
                 JOIN pg_catalog.pg_class s ON s.oid = used.seq AND s.relkind = 'S'
                 JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
                 JOIN pg_catalog.pg_class c ON c.oid = used.rel
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = used.rel AND a.attnum = used.att
                   AND NOT a.attisdropped
                 ORDER BY 1, a.attnum, 4, 5"
            ),
            &[&oid],
        )
        .await
        .pg(|| "finding the sequences the table's columns use")?
        .iter()
        .map(|r| ColumnSequence {
            owner: r.get(0),
            column: r.get(1),
            integer: r.get(2),
            schema: r.get(3),
            name: r.get(4),
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
