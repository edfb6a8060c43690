//! The migration tools whose own record of what ran backstop keeps in step: diesel's
//! `__diesel_schema_migrations`, golang-migrate's `schema_migrations (version, dirty)`,
//! sqlx's `_sqlx_migrations` and dbmate's `schema_migrations`. A team keeps its tool next to
//! backstop (its CLI in development, its embedded runner in the application), so both must
//! agree on where the database is: a step backstop runs is recorded in the tool's table in
//! the same transaction, and a database the tool migrated is read from that table.
//!
//! This module says which tool a folder belongs to and what it records for a revision; the
//! table itself is read and written by [`crate::ledger::tool`].

use std::path::Path;

use serde::Serialize;

/// A migration tool with a bookkeeping table of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    Diesel,
    GolangMigrate,
    Sqlx,
    Dbmate,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Diesel => "diesel",
            Tool::GolangMigrate => "golang-migrate",
            Tool::Sqlx => "sqlx",
            Tool::Dbmate => "dbmate",
        }
    }

    /// The table the tool keeps, by its default name.
    pub fn table(self) -> &'static str {
        match self {
            Tool::Diesel => "__diesel_schema_migrations",
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Sqlx => "_sqlx_migrations",
        }
    }

    /// What the tool records for `revision` (`<version>_<name>`): diesel its version with
    /// the dashes taken out (`2026-06-26-100902-0000` → `202606261009020000`), the others
    /// the version as written (golang-migrate and sqlx read it as a number).
    pub fn version_of(self, revision: &str) -> String {
        let version = revision.split_once('_').map_or(revision, |(v, _)| v);
        match self {
            Tool::Diesel => version.replace('-', ""),
            _ => version.to_string(),
        }
    }

    /// sqlx's description of `revision`: the name after the version, `_` read as a space.
    pub fn description_of(revision: &str) -> String {
        revision
            .split_once('_')
            .map_or("", |(_, n)| n)
            .replace('_', " ")
    }
}

/// Which tool's table a migration set keeps in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// backstop's own layout, or an Alembic project (kept by its rendered SQL).
    #[default]
    Own,
    Known(Tool),
    /// `.up.sql`/`.down.sql` pairs nothing tells apart: golang-migrate's or sqlx's, whichever
    /// table the database has. With neither, no tool table is kept (and a note says how to
    /// name the tool).
    Pairs,
}

/// golang-migrate's and sqlx's files look the same; the project around them tells which
/// tool writes them: a `Cargo.toml` that depends on sqlx, or a `go.mod` that requires
/// golang-migrate, in `dir` or up to three folders above it.
pub fn pairs_tool_of_project(dir: &Path) -> Option<Tool> {
    let dir = dir.canonicalize().ok()?;
    for folder in dir.ancestors().take(4) {
        let read = |name: &str| std::fs::read_to_string(folder.join(name)).unwrap_or_default();
        let cargo = read("Cargo.toml");
        if cargo.lines().any(|l| l.trim_start().starts_with("sqlx")) {
            return Some(Tool::Sqlx);
        }
        if read("go.mod").contains("github.com/golang-migrate/migrate") {
            return Some(Tool::GolangMigrate);
        }
        if !cargo.is_empty() || folder.join("go.mod").exists() || folder.join(".git").exists() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tool_records_the_version_as_it_does() {
        assert_eq!(
            Tool::Diesel.version_of("2026-06-26-100902-0000_add_x"),
            "202606261009020000"
        );
        assert_eq!(
            Tool::Diesel.version_of("00000000000000_diesel_initial_setup"),
            "00000000000000"
        );
        assert_eq!(Tool::GolangMigrate.version_of("000012_tags"), "000012");
        assert_eq!(
            Tool::Dbmate.version_of("20261202040336_create_users"),
            "20261202040336"
        );
        assert_eq!(
            Tool::description_of("20260101000000_add_user_roles"),
            "add user roles"
        );
    }

    #[test]
    fn the_project_around_pairs_names_their_tool() {
        let root = tempfile::tempdir().unwrap();
        let migrations = root.path().join("migrations");
        std::fs::create_dir(&migrations).unwrap();
        assert_eq!(pairs_tool_of_project(&migrations), None);
        std::fs::write(
            root.path().join("go.mod"),
            "module x\nrequire github.com/golang-migrate/migrate/v4 v4.18.1\n",
        )
        .unwrap();
        assert_eq!(
            pairs_tool_of_project(&migrations),
            Some(Tool::GolangMigrate)
        );
        std::fs::write(
            root.path().join("Cargo.toml"),
            "[dependencies]\nsqlx = { version = \"0.8\", features = [\"postgres\"] }\n",
        )
        .unwrap();
        assert_eq!(pairs_tool_of_project(&migrations), Some(Tool::Sqlx));
    }
}
