//! The restore plan, pure: which entries of a backup load whole and which go back by
//! primary key, in which order, and what the mode means for each table.

use super::RestoreMode;
use crate::backup::manifest::{Manifest, Scope, TableEntry};
use crate::error::usage;

/// What a restore of (part of) a backup will do.
#[derive(Debug)]
pub struct RestorePlan<'a> {
    /// Entries that load whole, with COPY.
    pub whole: Vec<&'a TableEntry>,
    /// Column-level entries of pre-downgrade backups: put back by primary key.
    pub columns: Vec<&'a TableEntry>,
    /// Entries left out on request.
    pub skipped: Vec<&'a TableEntry>,
}

impl RestorePlan<'_> {
    /// Every entry that will be loaded.
    pub fn tables(&self) -> impl Iterator<Item = &TableEntry> {
        self.whole.iter().chain(&self.columns).copied()
    }
}

/// Picks the entries of `manifest` to restore: `wanted` (all when empty) minus `skip`.
/// A wanted table the backup does not hold is a usage error naming what it holds.
pub fn plan<'a>(
    manifest: &'a Manifest,
    wanted: &[String],
    skip: &[String],
) -> anyhow::Result<RestorePlan<'a>> {
    if let Some(w) = wanted.iter().find(|w| manifest.table(w).is_none()) {
        let have: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
        return usage(format!(
            "backup {} has no table {w}; it holds {}",
            manifest.id,
            have.join(", ")
        ));
    }
    let mut out = RestorePlan {
        whole: Vec::new(),
        columns: Vec::new(),
        skipped: Vec::new(),
    };
    for t in &manifest.tables {
        if !wanted.is_empty() && !wanted.iter().any(|w| t.is(w)) {
            continue;
        }
        if skip.iter().any(|s| t.is(s)) {
            out.skipped.push(t);
        } else if t.scope == Scope::Table {
            out.whole.push(t);
        } else {
            out.columns.push(t);
        }
    }
    Ok(out)
}

impl RestoreMode {
    /// The lock a load takes: appending lets readers and other sessions' reads go on.
    pub fn lock_mode(self) -> &'static str {
        match self {
            RestoreMode::Append => "SHARE ROW EXCLUSIVE",
            RestoreMode::Fail | RestoreMode::Truncate | RestoreMode::SkipFilled => {
                "ACCESS EXCLUSIVE"
            }
        }
    }

    /// Whether the tables are empty when the load starts, so dropping the secondary indexes
    /// and rebuilding them afterwards is worth it.
    pub fn loads_into_empty(self) -> bool {
        self != RestoreMode::Append
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::Kind;

    fn entry(name: &str, scope: Scope) -> TableEntry {
        TableEntry {
            schema: "public".into(),
            name: name.into(),
            parent: None,
            scope,
            columns: vec![],
            primary_key: vec![],
            rows: 0,
            bytes: 0,
            compressed_bytes: 0,
            key: String::new(),
            sha256: String::new(),
            sequences: vec![],
            on_restore: Default::default(),
        }
    }

    #[test]
    fn plan_splits_whole_tables_columns_and_skips() {
        let m = Manifest {
            tables: vec![
                entry("a", Scope::Table),
                entry("b", Scope::Columns),
                entry("c", Scope::Table),
            ],
            ..Manifest::empty("b", Kind::PreDowngrade, "")
        };
        let names = |v: &[&TableEntry]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        // (wanted, skip) -> (whole, columns, skipped)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (&[], &[], &["a", "c"], &["b"], &[]),
            (&[], &["c"], &["a"], &["b"], &["c"]),
            (&["b"], &[], &[], &["b"], &[]),
        ];
        for (wanted, skip, whole, columns, skipped) in cases {
            let w: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
            let s: Vec<String> = skip.iter().map(|s| s.to_string()).collect();
            let p = plan(&m, &w, &s).unwrap();
            assert_eq!(names(&p.whole), *whole);
            assert_eq!(names(&p.columns), *columns);
            assert_eq!(names(&p.skipped), *skipped);
        }
        let e = plan(&m, &["x".to_string()], &[]).unwrap_err();
        assert!(
            e.to_string().contains("has no table x; it holds a, b, c"),
            "{e}"
        );
    }

    #[test]
    fn modes() {
        assert_eq!(RestoreMode::Append.lock_mode(), "SHARE ROW EXCLUSIVE");
        assert_eq!(RestoreMode::Fail.lock_mode(), "ACCESS EXCLUSIVE");
        assert!(RestoreMode::Truncate.loads_into_empty());
        assert!(!RestoreMode::Append.loads_into_empty());
    }
}
