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

use crate::db::{Database, PgContext};
use crate::error::usage;
use crate::migrate::engine::OWN_TABLES;

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
    /// Reads the snapshot of `schema` through a fresh connection.
    pub async fn capture(
        db: &Database,
        schema: &str,
        statement_timeout_secs: u64,
    ) -> anyhow::Result<Snapshot> {
        let client = db.connect().await?;
        client
            .batch_execute(&format!(
                "SET search_path = ''; SET statement_timeout = '{statement_timeout_secs}s'"
            ))
            .await
            .pg(|| "setting up the catalog session")?;
        Self::capture_with(&client, schema)
            .await
            .with_context(|| format!("reading the schema of {} ({schema})", db.describe()))
    }

    /// Reads the snapshot on an existing session (whose `search_path` the caller has emptied).
    pub async fn capture_with(client: &Client, schema: &str) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot {
            format: SNAPSHOT_FORMAT,
            schema: schema.to_string(),
            ..Default::default()
        };
        let own: &[&str] = OWN_TABLES;
        for row in client
            .query(
                "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> ALL($2)",
                &[&schema, &own],
            )
            .await
            .pg(|| "listing tables")?
        {
            snap.tables.insert(row.get(0), Table::default());
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
                "SELECT t.relname, con.conname, pg_catalog.pg_get_constraintdef(con.oid, true)
                 FROM pg_catalog.pg_constraint con
                 JOIN pg_catalog.pg_class t ON t.oid = con.conrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = $1",
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

    /// Every difference from `self` to `other`, in a stable order.
    pub fn diff(&self, other: &Snapshot) -> Vec<Change> {
        let mut out = Vec::new();
        if self.schema != other.schema {
            out.push(Change::changed("schema", &self.schema, &other.schema));
        }
        let empty = Table::default();
        for name in keys(&self.tables, &other.tables) {
            let (a, b) = (self.tables.get(name), other.tables.get(name));
            match (a, b) {
                (Some(_), None) => out.push(Change::removed(format!("table {name}"), "")),
                (None, Some(_)) => out.push(Change::added(format!("table {name}"), "")),
                _ => {}
            }
            let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
            diff_columns(name, &a.columns, &b.columns, &mut out);
            diff_map(&format!("index {name}."), &a.indexes, &b.indexes, &mut out);
            diff_map(
                &format!("constraint {name}."),
                &a.constraints,
                &b.constraints,
                &mut out,
            );
            diff_map(
                &format!("trigger {name}."),
                &a.triggers,
                &b.triggers,
                &mut out,
            );
        }
        let seq = |m: &BTreeMap<String, Sequence>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, s)| (k.clone(), serde_json::to_string(s).unwrap_or_default()))
                .collect()
        };
        diff_map(
            "sequence ",
            &seq(&self.sequences),
            &seq(&other.sequences),
            &mut out,
        );
        diff_map("view ", &self.views, &other.views, &mut out);
        let enums = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, String> {
            m.iter().map(|(k, v)| (k.clone(), v.join(", "))).collect()
        };
        diff_map("enum ", &enums(&self.enums), &enums(&other.enums), &mut out);
        diff_map("function ", &self.functions, &other.functions, &mut out);
        out
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

fn describe_column(c: &Column) -> String {
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

fn keys<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> Vec<&'a String> {
    let mut k: Vec<&String> = a.keys().chain(b.keys()).collect();
    k.sort();
    k.dedup();
    k
}

fn diff_map(
    prefix: &str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    out: &mut Vec<Change>,
) {
    for k in keys(a, b) {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(Change::removed(format!("{prefix}{k}"), x)),
            (None, Some(y)) => out.push(Change::added(format!("{prefix}{k}"), y)),
            (Some(x), Some(y)) if x != y => {
                out.push(Change::changed(&format!("{prefix}{k}"), x, y))
            }
            _ => {}
        }
    }
}

fn diff_columns(table: &str, a: &[Column], b: &[Column], out: &mut Vec<Change>) {
    for c in a {
        match b.iter().find(|x| x.name == c.name) {
            None => out.push(Change::removed(
                format!("column {table}.{}", c.name),
                describe_column(c),
            )),
            Some(x) if x != c => out.push(Change::changed(
                &format!("column {table}.{}", c.name),
                &describe_column(c),
                &describe_column(x),
            )),
            _ => {}
        }
    }
    for c in b.iter().filter(|c| !a.iter().any(|x| x.name == c.name)) {
        out.push(Change::added(
            format!("column {table}.{}", c.name),
            describe_column(c),
        ));
    }
    let order = |cols: &[Column], other: &[Column]| -> Vec<String> {
        cols.iter()
            .filter(|c| other.iter().any(|x| x.name == c.name))
            .map(|c| c.name.clone())
            .collect()
    };
    let (oa, ob) = (order(a, b), order(b, a));
    if oa != ob {
        out.push(Change::changed(
            &format!("column order of {table}"),
            &oa.join(", "),
            &ob.join(", "),
        ));
    }
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// `table tasks`, `column tasks.title`, `index tasks.idx_tasks_user_id`.
    pub object: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl Change {
    fn added(object: String, after: impl Into<String>) -> Change {
        let after = after.into();
        Change {
            kind: ChangeKind::Added,
            object,
            before: None,
            after: (!after.is_empty()).then_some(after),
        }
    }
    fn removed(object: String, before: impl Into<String>) -> Change {
        let before = before.into();
        Change {
            kind: ChangeKind::Removed,
            object,
            before: (!before.is_empty()).then_some(before),
            after: None,
        }
    }
    fn changed(object: &str, before: &str, after: &str) -> Change {
        Change {
            kind: ChangeKind::Changed,
            object: object.to_string(),
            before: Some(before.to_string()),
            after: Some(after.to_string()),
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ChangeKind::Added => write!(f, "+ {}", self.object)?,
            ChangeKind::Removed => write!(f, "- {}", self.object)?,
            ChangeKind::Changed => write!(f, "~ {}", self.object)?,
        }
        match (&self.before, &self.after) {
            (Some(b), Some(a)) => write!(
                f,
                "\n    before: {}\n    after:  {}",
                one_line(b),
                one_line(a)
            ),
            (Some(x), None) | (None, Some(x)) => write!(f, ": {}", one_line(x)),
            (None, None) => Ok(()),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
            default: None,
            identity: None,
            generated: None,
        }
    }

    #[test]
    fn diff_reports_each_kind_of_change() {
        let mut a = Snapshot {
            format: 1,
            schema: "public".into(),
            ..Default::default()
        };
        let mut t = Table {
            columns: vec![col("id", "integer"), col("title", "text")],
            ..Default::default()
        };
        t.indexes.insert(
            "idx".into(),
            "CREATE INDEX idx ON public.t USING btree (title)".into(),
        );
        a.tables.insert("t".into(), t);
        let mut b = a.clone();
        assert!(a.diff(&b).is_empty());

        let tb = b.tables.get_mut("t").unwrap();
        tb.columns[1].data_type = "character varying(10)".into();
        tb.columns.push(col("extra", "integer"));
        tb.indexes.clear();
        b.tables.insert("u".into(), Table::default());
        let changes: Vec<String> = a.diff(&b).iter().map(|c| c.to_string()).collect();
        assert_eq!(changes.len(), 4, "{changes:#?}");
        assert!(changes[0].starts_with("~ column t.title"), "{changes:#?}");
        assert!(
            changes[1].starts_with("+ column t.extra: extra integer"),
            "{changes:#?}"
        );
        assert!(changes[2].starts_with("- index t.idx"), "{changes:#?}");
        assert_eq!(changes[3], "+ table u");
    }

    #[test]
    fn column_order_counts() {
        let mut a = Snapshot::default();
        let t = Table {
            columns: vec![col("a", "int"), col("b", "int")],
            ..Default::default()
        };
        a.tables.insert("t".into(), t.clone());
        let mut b = a.clone();
        b.tables.get_mut("t").unwrap().columns.reverse();
        let changes = a.diff(&b);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].object, "column order of t");
    }

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
