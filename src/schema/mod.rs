//! Canonical schema snapshots and their differences.
//!
//! A snapshot is what the original procedure inspected by hand in `information_schema` and
//! `pg_indexes`, read from `pg_catalog` instead: tables, columns (type, nullability, default,
//! identity, generation), indexes (definition), constraints, triggers, sequences, views,
//! enums and functions of one schema. Everything is keyed and sorted so the same schema always
//! serialises to the same JSON; backstop's own bookkeeping is left out. The session runs with
//! an empty `search_path`, so every name in a definition is schema-qualified the same way
//! whatever the caller's settings.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::DatabaseConfig;
use crate::error::usage;
use crate::ledger::OWN_TABLES;
use crate::pg::catalog::user_tables;
use crate::pg::session::catalog_session;
use crate::pg::{Database, PgContext};

mod diff;

pub use diff::{Change, ChangeKind, DiffOptions};

/// Version of the snapshot JSON; bumped when the layout changes.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The schema of one PostgreSQL schema (namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    pub schema: String,
    pub tables: BTreeMap<String, Table>,
    pub sequences: BTreeMap<String, Sequence>,
    pub views: BTreeMap<String, String>,
    pub enums: BTreeMap<String, Vec<String>>,
    /// `name(argument types)` → definition.
    pub functions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Columns in their physical order, which `SELECT *` and `COPY` follow.
    pub columns: Vec<Column>,
    /// Index name → `CREATE INDEX` definition.
    pub indexes: BTreeMap<String, String>,
    /// Constraint name → definition (`PRIMARY KEY (id)`, `FOREIGN KEY ...`).
    pub constraints: BTreeMap<String, String>,
    /// Trigger name → `CREATE TRIGGER` definition.
    pub triggers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    pub default: Option<String>,
    /// `always` or `by default` for identity columns.
    pub identity: Option<String>,
    /// The expression of a generated (stored) column.
    pub generated: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    #[serde(rename = "type")]
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// `table.column` for sequences owned by a serial or identity column.
    pub owned_by: Option<String>,
}

impl Snapshot {
    /// Reads the snapshot of the configured schema through a fresh catalog session.
    pub async fn capture(db: &Database, settings: &DatabaseConfig) -> anyhow::Result<Snapshot> {
        let client = db.connect().await?;
        catalog_session(&client, settings).await?;
        Self::capture_with(&client, &settings.schema)
            .await
            .with_context(|| {
                format!(
                    "reading the schema of {} ({})",
                    db.describe(),
                    settings.schema
                )
            })
    }

    /// Reads the snapshot on an existing session (whose `search_path` the caller has emptied).
    pub async fn capture_with(client: &Client, schema: &str) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot {
            format: SNAPSHOT_FORMAT,
            schema: schema.to_string(),
            ..Default::default()
        };
        for relation in user_tables(client, schema).await? {
            snap.tables.insert(relation.name, Table::default());
        }
        for row in client
            .query(
                "SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                        CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
                        CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' END,
                        CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END
                 FROM pg_catalog.pg_attribute a
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY c.relname, a.attnum",
                &[&schema],
            )
            .await
            .pg(|| "listing columns")?
        {
            if let Some(t) = snap.tables.get_mut(row.get::<_, &str>(0)) {
                t.columns.push(Column {
                    name: row.get(1),
                    data_type: row.get(2),
                    nullable: row.get(3),
                    default: row.get(4),
                    identity: row.get(5),
                    generated: row.get(6),
                });
            }
        }
        for row in client
            .query(
                "SELECT t.relname, i.relname, pg_catalog.pg_get_indexdef(i.oid)
                 FROM pg_catalog.pg_index x
                 JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
                 JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = $1",
                &[&schema],
            )
            .await
            .pg(|| "listing indexes")?
        {
            if let Some(t) = snap.tables.get_mut(row.get::<_, &str>(0)) {
                t.indexes.insert(row.get(1), row.get(2));
            }
        }
        for row in client
            .query(
                // PostgreSQL 18 records every NOT NULL as a constraint (contype 'n'); the
                // ones it named itself, and those a partition or child inherits, are column
                // nullability, which the columns carry, so a snapshot reads the same on
                // every version. A NOT NULL a migration named, or made NO INHERIT or NOT
                // VALID, stays.
                "SELECT t.relname, con.conname, pg_catalog.pg_get_constraintdef(con.oid, true)
                 FROM pg_catalog.pg_constraint con
                 JOIN pg_catalog.pg_class t ON t.oid = con.conrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = $1
                   AND NOT (con.contype = 'n' AND con.convalidated AND NOT con.connoinherit
                            AND (NOT con.conislocal OR con.conname = t.relname || '_' || (
                                SELECT a.attname FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
                            ) || '_not_null'))",
                &[&schema],
            )
            .await
            .pg(|| "listing constraints")?
        {
            if let Some(t) = snap.tables.get_mut(row.get::<_, &str>(0)) {
                t.constraints.insert(row.get(1), row.get(2));
            }
        }
        for row in client
            .query(
                "SELECT t.relname, tg.tgname, pg_catalog.pg_get_triggerdef(tg.oid, true)
                 FROM pg_catalog.pg_trigger tg
                 JOIN pg_catalog.pg_class t ON t.oid = tg.tgrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = $1 AND NOT tg.tgisinternal",
                &[&schema],
            )
            .await
            .pg(|| "listing triggers")?
        {
            if let Some(t) = snap.tables.get_mut(row.get::<_, &str>(0)) {
                t.triggers.insert(row.get(1), row.get(2));
            }
        }
        for row in client
            .query(
                "SELECT c.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
                        s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                        (SELECT tc.relname || '.' || a.attname
                           FROM pg_catalog.pg_depend dep
                           JOIN pg_catalog.pg_class tc ON tc.oid = dep.refobjid
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = dep.refobjid AND a.attnum = dep.refobjsubid
                          WHERE dep.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.objid = c.oid
                            AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                            AND dep.deptype IN ('a', 'i') LIMIT 1)
                 FROM pg_catalog.pg_sequence s
                 JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1",
                &[&schema],
            )
            .await
            .pg(|| "listing sequences")?
        {
            let owned_by: Option<String> = row.get(8);
            if owned_by.as_deref().is_some_and(|o| OWN_TABLES.iter().any(|t| o.starts_with(&format!("{t}.")))) {
                continue;
            }
            snap.sequences.insert(
                row.get(0),
                Sequence {
                    data_type: row.get(1),
                    start: row.get(2),
                    increment: row.get(3),
                    min: row.get(4),
                    max: row.get(5),
                    cache: row.get(6),
                    cycle: row.get(7),
                    owned_by,
                },
            );
        }
        for row in client
            .query(
                "SELECT c.relname, CASE c.relkind WHEN 'm' THEN 'MATERIALIZED ' ELSE '' END || pg_catalog.pg_get_viewdef(c.oid, true)
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('v', 'm')",
                &[&schema],
            )
            .await
            .pg(|| "listing views")?
        {
            snap.views.insert(row.get(0), row.get(1));
        }
        for row in client
            .query(
                "SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                 FROM pg_catalog.pg_type t
                 JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                 WHERE n.nspname = $1 GROUP BY t.typname",
                &[&schema],
            )
            .await
            .pg(|| "listing enum types")?
        {
            snap.enums.insert(row.get(0), row.get(1));
        }
        for row in client
            .query(
                "SELECT p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
                        pg_catalog.pg_get_functiondef(p.oid)
                 FROM pg_catalog.pg_proc p
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                 LEFT JOIN pg_catalog.pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
                 WHERE n.nspname = $1 AND p.prokind IN ('f', 'p') AND d.objid IS NULL",
                &[&schema],
            )
            .await
            .pg(|| "listing functions")?
        {
            snap.functions.insert(row.get(0), row.get(1));
        }
        Ok(snap)
    }

    /// Reads a snapshot written by `backstop schema --json`.
    pub fn read(path: &Path) -> anyhow::Result<Snapshot> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return usage(format!(
                    "cannot read schema snapshot {}: {e}",
                    path.display()
                ))
            }
        };
        match serde_json::from_str::<Snapshot>(&text) {
            Ok(s) if s.format == SNAPSHOT_FORMAT => Ok(s),
            Ok(s) => usage(format!(
                "{} is a snapshot of format {}, this backstop reads format {SNAPSHOT_FORMAT}; take it again with `backstop schema --json`",
                path.display(),
                s.format
            )),
            Err(e) => usage(format!(
                "{} is not a backstop schema snapshot (line {}, column {}: {e}); write one with `backstop schema --json > FILE`",
                path.display(),
                e.line(),
                e.column()
            )),
        }
    }

    /// Human-readable listing, one object per line.
    pub fn render(&self) -> String {
        let mut s = format!("schema {}\n", self.schema);
        for (name, t) in &self.tables {
            s.push_str(&format!("\ntable {name}\n"));
            for c in &t.columns {
                s.push_str(&format!("  column {}\n", describe_column(c)));
            }
            for (n, d) in &t.indexes {
                s.push_str(&format!("  index {n}: {d}\n"));
            }
            for (n, d) in &t.constraints {
                s.push_str(&format!("  constraint {n}: {d}\n"));
            }
            for (n, d) in &t.triggers {
                s.push_str(&format!("  trigger {n}: {d}\n"));
            }
        }
        if !self.sequences.is_empty() {
            s.push('\n');
        }
        for (n, q) in &self.sequences {
            s.push_str(&format!(
                "sequence {n} {} start {} increment {}{}\n",
                q.data_type,
                q.start,
                q.increment,
                q.owned_by
                    .as_deref()
                    .map(|o| format!(" owned by {o}"))
                    .unwrap_or_default()
            ));
        }
        for (n, d) in &self.views {
            s.push_str(&format!("view {n}: {}\n", d.trim()));
        }
        for (n, labels) in &self.enums {
            s.push_str(&format!("enum {n}: {}\n", labels.join(", ")));
        }
        for n in self.functions.keys() {
            s.push_str(&format!("function {n}\n"));
        }
        s
    }
}

pub(crate) fn describe_column(c: &Column) -> String {
    let mut s = format!("{} {}", c.name, c.data_type);
    if !c.nullable {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if let Some(i) = &c.identity {
        s.push_str(&format!(" GENERATED {} AS IDENTITY", i.to_uppercase()));
    }
    if let Some(g) = &c.generated {
        s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_is_stable() {
        let mut a = Snapshot {
            format: 1,
            schema: "s".into(),
            ..Default::default()
        };
        a.tables.insert("z".into(), Table::default());
        a.tables.insert("a".into(), Table::default());
        let j = serde_json::to_string(&a).unwrap();
        let back: Snapshot = serde_json::from_str(&j).unwrap();
        assert_eq!(a, back);
        assert!(j.find("\"a\"").unwrap() < j.find("\"z\"").unwrap());
    }
}
