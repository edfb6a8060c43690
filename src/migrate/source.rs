//! Reading the migrations directory into an ordered, validated list, in whichever layout it
//! follows (see [`super::layout`]).
//!
//! Everything that can be wrong with the files is found here, before any connection is
//! opened, and all of it at once: a migration without a down script, two with the same
//! version, a file that is not UTF-8, transaction control in the way. Each problem names
//! the path and says what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::alembic;
use super::layout::{list, section, survey, Candidate, Layout, Source};
use super::lexer::{strip_wrapper, transaction_control, TransactionControl};
use super::tool::{pairs_tool_of_project, Tool, ToolChoice};
use crate::config::LayoutSetting;
use crate::error::usage;

/// First line that marks a script which cannot run inside a transaction
/// (for example `CREATE INDEX CONCURRENTLY`).
pub const NO_TRANSACTION_MARKER: &str = "-- backstop:no-transaction";

/// One migration: a folder, a pair of files or a file of sections.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The folder or file name without extensions, e.g. `001_initial`; what
    /// `backstop_migrations` records.
    pub revision: String,
    /// The version, which orders the migrations as their tool orders them.
    pub number: u64,
    pub up: Script,
    pub down: Script,
    /// SHA-256 of the up script with CRLF folded to LF, so a checkout on another OS is no drift.
    pub checksum: String,
}

/// The text of an up or down script, as it will run.
#[derive(Debug, Clone)]
pub struct Script {
    pub path: PathBuf,
    /// How messages name the script: `up.sql`, `000001_init.down.sql`, or a dbmate file's
    /// section.
    pub name: String,
    /// The SQL that runs: the file's text, without an outer `BEGIN … COMMIT` wrapper.
    pub sql: String,
    /// The script must run outside a transaction ([`NO_TRANSACTION_MARKER`], diesel's
    /// `run_in_transaction = false`, dbmate's `transaction:false`).
    pub no_transaction: bool,
    /// How this script's layout says "no transaction", for the error when it needed to.
    pub no_transaction_hint: &'static str,
    /// [`checksum`] of the text as written.
    pub checksum: String,
}

/// All migrations of a directory, in order.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub migrations: Vec<Migration>,
    /// Set when the migrations are an Alembic project's: its `alembic_version` is kept in
    /// step and read as the current revision.
    pub alembic: Option<AlembicProject>,
    /// The tool whose own bookkeeping table is kept in step with the ledger.
    pub tool: ToolChoice,
}

/// What backstop keeps of an Alembic project beyond its scripts.
#[derive(Debug, Clone)]
pub struct AlembicProject {
    /// The folder of `alembic.ini`.
    pub dir: PathBuf,
    /// Each revision's parents (two for a merge), for the heads `alembic_version` holds.
    pub parents: HashMap<String, Vec<String>>,
    /// The version table's `CREATE TABLE IF NOT EXISTS`, for `stamp`.
    pub version_table_ddl: String,
    /// How long Alembic took to render the history.
    pub render_time: Duration,
}

impl AlembicProject {
    /// `revisions` and everything they descend from.
    pub fn with_ancestors(&self, revisions: &[String]) -> std::collections::HashSet<String> {
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<String> = revisions.to_vec();
        while let Some(r) = todo.pop() {
            if seen.insert(r.clone()) {
                todo.extend(self.parents.get(&r).cloned().unwrap_or_default());
            }
        }
        seen
    }

    /// The revisions of `applied` that no other revision of it descends from: what
    /// `alembic_version` holds when exactly `applied` ran.
    pub fn heads_of(&self, applied: &[String]) -> Vec<String> {
        applied
            .iter()
            .filter(|r| {
                !applied
                    .iter()
                    .any(|o| self.parents.get(o).is_some_and(|p| p.contains(r)))
            })
            .cloned()
            .collect()
    }
}

/// How a migrations folder is read: its layout and, for Alembic, how Alembic is started.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub layout: LayoutSetting,
    /// `[migrations] command`; `None` for [`alembic::default_command`].
    pub command: Option<Vec<String>>,
    /// Variables Alembic gets beyond the process's (the project's `.env`, `DATABASE_URL`).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            layout: LayoutSetting::Auto,
            command: None,
            env: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }
}

impl MigrationSet {
    /// Reads and validates `dir`, telling its layout by what it holds.
    pub fn load(dir: &Path) -> anyhow::Result<MigrationSet> {
        Self::load_as(dir, LayoutSetting::Auto)
    }

    /// Reads and validates `dir` in the layout `setting` names (or tells it, with `auto`).
    pub fn load_as(dir: &Path, setting: LayoutSetting) -> anyhow::Result<MigrationSet> {
        Self::load_with(
            dir,
            &LoadOptions {
                layout: setting,
                ..LoadOptions::default()
            },
        )
    }

    /// Reads and validates `dir` as `options` say.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> anyhow::Result<MigrationSet> {
        let setting = options.layout;
        let is_alembic = match setting {
            LayoutSetting::Alembic => true,
            LayoutSetting::Auto => alembic::is_alembic(dir),
            _ => false,
        };
        if is_alembic {
            return Self::load_alembic(dir, options);
        }
        let survey = match survey(dir, setting) {
            Ok(s) => s,
            Err(e) => {
                return usage(format!(
                "cannot read the migrations directory {}: {e}; set [migrations] dir in the config",
                dir.display()
            ))
            }
        };
        let mut problems = survey.problems;
        let hint = survey
            .layout
            .unwrap_or(Layout::Backstop)
            .no_transaction_hint();
        let mut migrations: Vec<Migration> = Vec::new();
        for c in survey.candidates {
            if let Some(m) = read_candidate(c, hint, &mut problems) {
                migrations.push(m);
            }
        }
        migrations.sort_by(|a, b| a.number.cmp(&b.number).then(a.revision.cmp(&b.revision)));
        for pair in migrations.windows(2) {
            if pair[0].number == pair[1].number {
                problems.push(format!(
                    "migrations {} and {} share the version {}; give each migration its own",
                    pair[0].revision, pair[1].revision, pair[0].number
                ));
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            let what = if n == 1 {
                problems.remove(0)
            } else {
                format!(
                    "{n} problems in {}:\n  - {}",
                    dir.display(),
                    problems.join("\n  - ")
                )
            };
            return usage(what);
        }
        if !survey.strays.is_empty() {
            tracing::warn!(
                "{}: ignoring what no migration layout claims: {}",
                dir.display(),
                list(&survey.strays)
            );
        }
        let tool = match (survey.layout, setting) {
            (Some(Layout::Diesel), _) => ToolChoice::Known(Tool::Diesel),
            (Some(Layout::Dbmate), _) => ToolChoice::Known(Tool::Dbmate),
            (Some(Layout::GolangMigrate), LayoutSetting::Sqlx) => ToolChoice::Known(Tool::Sqlx),
            (Some(Layout::GolangMigrate), LayoutSetting::GolangMigrate) => {
                ToolChoice::Known(Tool::GolangMigrate)
            }
            (Some(Layout::GolangMigrate), _) => {
                pairs_tool_of_project(dir).map_or(ToolChoice::Pairs, ToolChoice::Known)
            }
            _ => ToolChoice::Own,
        };
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            migrations,
            alembic: None,
            tool,
        })
    }

    /// An Alembic project: the scripts Alembic renders, the checksums of its revision files.
    fn load_alembic(dir: &Path, options: &LoadOptions) -> anyhow::Result<MigrationSet> {
        let Some(project) = alembic::project_dir(dir) else {
            return usage(format!(
                "{} is read as an Alembic project but neither it nor its two parents hold an alembic.ini; set [migrations] dir to the folder of alembic.ini",
                dir.display()
            ));
        };
        let launcher = alembic::Launcher {
            command: options
                .command
                .clone()
                .unwrap_or_else(|| alembic::default_command(&project)),
            env: options.env.clone(),
            timeout: options.timeout,
        };
        let rendered = alembic::render(&project, &launcher)?;
        tracing::debug!(
            "Alembic rendered {} revisions of {} in {:.2}s",
            rendered.revisions.len(),
            project.display(),
            rendered.took.as_secs_f64()
        );
        let hint = Layout::Alembic.no_transaction_hint();
        let mut problems = Vec::new();
        let mut migrations = Vec::new();
        for (i, r) in rendered.revisions.iter().enumerate() {
            let file = r
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| r.id.clone());
            let text = match read_text(&r.path) {
                Ok(t) => t,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            // The first revision creates the version table, as Alembic renders it.
            let up_sql = if i == 0 {
                format!("{}\n{}", rendered.version_table_ddl, r.up.sql)
            } else {
                r.up.sql.clone()
            };
            let rendered_source =
                |what: &str, sql: String, no_transaction: bool| Source::Rendered {
                    path: r.path.clone(),
                    name: format!("{file} {what}()"),
                    sql,
                    no_transaction,
                };
            let candidate = Candidate {
                revision: r.id.clone(),
                number: i as u64 + 1,
                up: rendered_source("upgrade", up_sql, r.up.no_transaction),
                down: rendered_source("downgrade", r.down.sql.clone(), r.down.no_transaction),
                checksum: Some(checksum(&text)),
            };
            if let Some(m) = read_candidate(candidate, hint, &mut problems) {
                migrations.push(m);
            }
        }
        if !problems.is_empty() {
            return usage(format!(
                "{} problem(s) in the Alembic project {}:\n  - {}",
                problems.len(),
                project.display(),
                problems.join("\n  - ")
            ));
        }
        Ok(MigrationSet {
            dir: project.clone(),
            migrations,
            alembic: Some(AlembicProject {
                dir: project,
                parents: rendered
                    .revisions
                    .iter()
                    .map(|r| (r.id.clone(), r.parents.clone()))
                    .collect(),
                version_table_ddl: rendered.version_table_ddl,
                render_time: rendered.took,
            }),
            tool: ToolChoice::Own,
        })
    }

    pub fn get(&self, revision: &str) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.revision == revision)
    }

    pub fn position(&self, revision: &str) -> Option<usize> {
        self.migrations.iter().position(|m| m.revision == revision)
    }

    pub fn head(&self) -> Option<&Migration> {
        self.migrations.last()
    }

    /// A set of in-memory migrations named `revisions` (`up`/`down` SQL made up), for tests
    /// of what is computed from a set without reading files.
    #[cfg(test)]
    pub(crate) fn fake(revisions: &[&str]) -> MigrationSet {
        let script = |rev: &str, file: &str| Script {
            path: PathBuf::from(format!("{rev}/{file}")),
            name: file.to_string(),
            sql: format!("-- {rev} {file}"),
            no_transaction: false,
            no_transaction_hint: Layout::Backstop.no_transaction_hint(),
            checksum: checksum(&format!("-- {rev} {file}")),
        };
        MigrationSet {
            dir: PathBuf::from("migrations"),
            migrations: revisions
                .iter()
                .map(|r| Migration {
                    revision: r.to_string(),
                    number: super::layout::revision_number(r).unwrap_or(0),
                    up: script(r, "up.sql"),
                    down: script(r, "down.sql"),
                    checksum: checksum(&format!("-- {r} up.sql")),
                })
                .collect(),
            alembic: None,
            tool: ToolChoice::Own,
        }
    }
}

/// Reads both scripts of a candidate; what is wrong goes to `problems`.
fn read_candidate(
    c: Candidate,
    hint: &'static str,
    problems: &mut Vec<String>,
) -> Option<Migration> {
    let up = read_script(&c.up, hint).map_err(|p| problems.push(p)).ok();
    let down = read_script(&c.down, hint)
        .map_err(|p| problems.push(p))
        .ok();
    let (up, down) = (up?, down?);
    Some(Migration {
        revision: c.revision,
        number: c.number,
        checksum: c.checksum.unwrap_or_else(|| up.checksum.clone()),
        up,
        down,
    })
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not valid UTF-8 (first bad byte at offset {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn read_script(source: &Source, hint: &'static str) -> Result<Script, String> {
    let (path, name, raw, declared) = match source {
        Source::Missing(path) => {
            return Err(format!(
                "{} is missing; every migration needs both an up and a down script",
                path.display()
            ))
        }
        Source::File {
            path,
            no_transaction,
        } => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (path, name, read_text(path)?, *no_transaction)
        }
        Source::Section {
            path,
            marker,
            no_transaction,
        } => {
            let name = format!(
                "{} ({})",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                marker.trim_start_matches("-- ")
            );
            (
                path,
                name,
                section(&read_text(path)?, marker),
                *no_transaction,
            )
        }
        Source::Rendered {
            path,
            name,
            sql,
            no_transaction,
        } => (path, name.clone(), sql.clone(), *no_transaction),
    };
    let marked = raw
        .trim_start_matches('\u{feff}')
        .lines()
        .next()
        .is_some_and(|l| l.trim() == NO_TRANSACTION_MARKER);
    let no_transaction = declared || marked;
    let sql = match transaction_control(&raw) {
        TransactionControl::None => raw.clone(),
        TransactionControl::Wrapper {
            begin_line,
            commit_line,
        } if !no_transaction => {
            tracing::warn!(
                "{}: ignoring its outer BEGIN (line {begin_line}) and COMMIT (line {commit_line}); backstop runs every step in a transaction of its own",
                path.display()
            );
            strip_wrapper(&raw)
        }
        TransactionControl::Wrapper { begin_line, .. } => {
            return Err(format!(
                "{}:{begin_line}: the script is marked to run outside a transaction but wraps itself in BEGIN … COMMIT; remove the mark or the wrapper",
                path.display()
            ))
        }
        TransactionControl::Misplaced(m) => {
            return Err(format!(
                "{}:{}: `{}` controls the transaction, which backstop owns (a COMMIT there would commit destructive SQL before its backup exists); remove it, or split the script into migrations",
                path.display(),
                m.line,
                m.statement
            ))
        }
    };
    Ok(Script {
        path: path.to_path_buf(),
        name,
        checksum: checksum(&raw),
        sql,
        no_transaction,
        no_transaction_hint: hint,
    })
}

/// SHA-256 (hex) of a script with line endings normalised.
pub fn checksum(sql: &str) -> String {
    let normalised = sql.replace("\r\n", "\n");
    let digest = Sha256::digest(normalised.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn crlf_and_lf_hash_the_same() {
        assert_eq!(checksum("a\r\nb\r\n"), checksum("a\nb\n"));
        assert_ne!(checksum("a\nb\n"), checksum("a\nc\n"));
    }

    #[test]
    fn loads_in_numeric_order_and_ignores_files() {
        let t = tempfile::tempdir().unwrap();
        for r in ["10_ten", "2_two", "001_one"] {
            write(t.path(), &format!("{r}/up.sql"), "select 1;");
            write(t.path(), &format!("{r}/down.sql"), "select 1;");
        }
        write(t.path(), "schema.json", "{}");
        write(
            t.path(),
            "2_two/down.sql",
            "-- backstop:no-transaction\ndrop index concurrently x;",
        );
        let set = MigrationSet::load(t.path()).unwrap();
        let revs: Vec<_> = set.migrations.iter().map(|m| m.revision.as_str()).collect();
        assert_eq!(revs, ["001_one", "2_two", "10_ten"]);
        assert!(set.get("2_two").unwrap().down.no_transaction);
        assert!(!set.get("2_two").unwrap().up.no_transaction);
    }

    #[test]
    fn bad_directories_are_usage_errors_naming_the_path() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "001_a/up.sql", "select 1;");
        let err = MigrationSet::load(t.path()).unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
        assert!(
            err.to_string().contains("001_a/down.sql is missing"),
            "{err}"
        );
        // Every problem at once.
        write(t.path(), "002_b/down.sql", "select 1;");
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("2 problems in"), "{err}");
        assert!(err.contains("001_a/down.sql is missing"), "{err}");
        assert!(err.contains("002_b/up.sql is missing"), "{err}");
        std::fs::remove_dir_all(t.path().join("002_b")).unwrap();

        write(t.path(), "001_a/down.sql", "select 1;");
        write(t.path(), "1_b/up.sql", "select 1;");
        write(t.path(), "1_b/down.sql", "select 1;");
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("share the version 1"), "{err}");

        std::fs::remove_dir_all(t.path().join("1_b")).unwrap();
        std::fs::write(t.path().join("001_a/up.sql"), b"select '\xff';").unwrap();
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");

        write(t.path(), "001_a/up.sql", "select 1;");
        std::fs::create_dir(t.path().join("notes")).unwrap();
        assert_eq!(MigrationSet::load(t.path()).unwrap().migrations.len(), 1);
        write(t.path(), "initial/up.sql", "select 1;");
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("not named <version>_<name>"), "{err}");

        let err = MigrationSet::load(&t.path().join("nope")).unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
    }
}
