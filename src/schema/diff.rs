//! Differences between two snapshots, one line per object, in a stable order.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{describe_column, Column, Sequence, Snapshot, Table};

/// Differences a caller chooses to accept.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Columns in another order (a column dropped and added again lands at the end) are
    /// the same table: PostgreSQL cannot reorder columns, so a down and up pair cannot
    /// restore the order without rebuilding the table.
    pub allow_column_order: bool,
}

impl Snapshot {
    /// Every difference from `self` to `other`, in a stable order.
    pub fn diff(&self, other: &Snapshot) -> Vec<Change> {
        self.diff_with(other, DiffOptions::default())
    }

    /// Every difference from `self` to `other` that `options` does not accept. Function
    /// and view definitions that differ only in whitespace are the same.
    pub fn diff_with(&self, other: &Snapshot, options: DiffOptions) -> Vec<Change> {
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
            diff_columns(name, &a.columns, &b.columns, options, &mut out);
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
        diff_map(
            "view ",
            &squeezed(&self.views),
            &squeezed(&other.views),
            &mut out,
        );
        let enums = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, String> {
            m.iter().map(|(k, v)| (k.clone(), v.join(", "))).collect()
        };
        diff_map("enum ", &enums(&self.enums), &enums(&other.enums), &mut out);
        diff_map(
            "function ",
            &squeezed(&self.functions),
            &squeezed(&other.functions),
            &mut out,
        );
        out
    }
}

/// Definitions with every run of whitespace made one space: re-indenting a function body
/// or a view is not a change of the schema.
fn squeezed(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), one_line(v))).collect()
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

fn diff_columns(
    table: &str,
    a: &[Column],
    b: &[Column],
    options: DiffOptions,
    out: &mut Vec<Change>,
) {
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
    if oa != ob && !options.allow_column_order {
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
        let accepted = DiffOptions {
            allow_column_order: true,
        };
        assert!(a.diff_with(&b, accepted).is_empty());
    }

    #[test]
    fn reindented_functions_and_views_are_the_same() {
        let mut a = Snapshot::default();
        a.functions.insert(
            "f()".into(),
            "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n    RETURN 1;\nEND $$".into(),
        );
        a.views.insert("v".into(), " SELECT 1 AS one;".into());
        let mut b = a.clone();
        b.functions.insert(
            "f()".into(),
            "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n\tRETURN 1;\nEND $$".into(),
        );
        b.views.insert("v".into(), "SELECT 1 AS one;\n".into());
        assert!(a.diff(&b).is_empty(), "{:?}", a.diff(&b));
        b.functions.insert(
            "f()".into(),
            "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n    RETURN 2;\nEND $$".into(),
        );
        assert_eq!(a.diff(&b).len(), 1);
    }
}
