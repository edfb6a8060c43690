//! Reading the migrations directory into an ordered, validated list.
//!
//! Everything that can be wrong with the files is found here, before any connection is
//! opened: a folder without `down.sql`, two folders with the same number, a file that is
//! not UTF-8. Each error names the path and says what to do.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::lexer::{strip_wrapper, transaction_control, TransactionControl};
use crate::error::usage;

/// First line that marks a script which cannot run inside a transaction
/// (for example `CREATE INDEX CONCURRENTLY`).
pub const NO_TRANSACTION_MARKER: &str = "-- backstop:no-transaction";

/// One migration folder, `<NNN>_<name>`.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The folder name, e.g. `001_initial`; what `backstop_migrations` records.
    pub revision: String,
    pub number: u64,
    pub up: Script,
    pub down: Script,
    /// SHA-256 of `up.sql` with CRLF folded to LF, so a checkout on another OS is no drift.
    pub checksum: String,
}

/// The text of `up.sql` or `down.sql`, as it will run.
#[derive(Debug, Clone)]
pub struct Script {
    pub path: PathBuf,
    /// The SQL that runs: the file's text, without an outer `BEGIN … COMMIT` wrapper.
    pub sql: String,
    /// The script starts with [`NO_TRANSACTION_MARKER`].
    pub no_transaction: bool,
    /// [`checksum`] of the file as written.
    pub checksum: String,
}

/// All migrations of a directory, sorted by number.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    /// Reads and validates `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<MigrationSet> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return usage(format!(
                "cannot read the migrations directory {}: {e}; set [migrations] dir in the config",
                dir.display()
            ))
            }
        };
        let mut migrations: Vec<Migration> = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            if !path.is_dir() {
                continue; // schema.json, README and the like live beside the folders
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Some(number) = parse_revision(&name) else {
                return usage(format!(
                    "migration folder {} is not named <number>_<name> (e.g. 002_add_tags); rename it or move it out of {}",
                    path.display(),
                    dir.display()
                ));
            };
            let up = read_script(&path.join("up.sql"))?;
            let down = read_script(&path.join("down.sql"))?;
            let checksum = up.checksum.clone();
            migrations.push(Migration {
                revision: name,
                number,
                up,
                down,
                checksum,
            });
        }
        migrations.sort_by(|a, b| a.number.cmp(&b.number).then(a.revision.cmp(&b.revision)));
        for pair in migrations.windows(2) {
            if pair[0].number == pair[1].number {
                return usage(format!(
                    "migrations {} and {} share the number {}; give each migration its own number",
                    pair[0].revision, pair[1].revision, pair[0].number
                ));
            }
        }
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            migrations,
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
            sql: format!("-- {rev} {file}"),
            no_transaction: false,
            checksum: checksum(&format!("-- {rev} {file}")),
        };
        MigrationSet {
            dir: PathBuf::from("migrations"),
            migrations: revisions
                .iter()
                .map(|r| Migration {
                    revision: r.to_string(),
                    number: parse_revision(r).unwrap_or(0),
                    up: script(r, "up.sql"),
                    down: script(r, "down.sql"),
                    checksum: checksum(&format!("-- {r} up.sql")),
                })
                .collect(),
        }
    }
}

/// `001_initial` → `Some(1)`; anything not `<digits>_<something>` → `None`.
fn parse_revision(name: &str) -> Option<u64> {
    let (digits, rest) = name.split_once('_')?;
    if digits.is_empty() || rest.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return None;
    }
    digits.parse().ok()
}

fn read_script(path: &Path) -> anyhow::Result<Script> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return usage(format!(
                "{} is missing; every migration needs both up.sql and down.sql",
                path.display()
            ))
        }
        Err(e) => return usage(format!("cannot read {}: {e}", path.display())),
    };
    let sql = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            return usage(format!(
                "{} is not valid UTF-8 (first bad byte at offset {}); save it as UTF-8",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        }
    };
    let no_transaction = sql
        .trim_start_matches('\u{feff}')
        .lines()
        .next()
        .is_some_and(|l| l.trim() == NO_TRANSACTION_MARKER);
    let raw = sql.clone();
    let sql = match transaction_control(&sql) {
        TransactionControl::None => sql,
        TransactionControl::Wrapper {
            begin_line,
            commit_line,
        } if !no_transaction => {
            tracing::warn!(
                "{}: ignoring its outer BEGIN (line {begin_line}) and COMMIT (line {commit_line}); backstop runs every step in a transaction of its own",
                path.display()
            );
            strip_wrapper(&sql)
        }
        TransactionControl::Wrapper { begin_line, .. } => {
            return usage(format!(
                "{}:{begin_line}: the script is marked {NO_TRANSACTION_MARKER} but wraps itself in BEGIN … COMMIT; remove the marker or the wrapper",
                path.display()
            ))
        }
        TransactionControl::Misplaced(m) => {
            return usage(format!(
                "{}:{}: `{}` controls the transaction, which backstop owns (a COMMIT there would commit destructive SQL before its backup exists); remove it, or split the script into migrations",
                path.display(),
                m.line,
                m.statement
            ))
        }
    };
    Ok(Script {
        path: path.to_path_buf(),
        checksum: checksum(&raw),
        sql,
        no_transaction,
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
    fn revision_names() {
        assert_eq!(parse_revision("001_initial"), Some(1));
        assert_eq!(parse_revision("12_add-tags.v2"), Some(12));
        assert_eq!(parse_revision("initial"), None);
        assert_eq!(parse_revision("001_"), None);
        assert_eq!(parse_revision("x01_a"), None);
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

        write(t.path(), "001_a/down.sql", "select 1;");
        write(t.path(), "1_b/up.sql", "select 1;");
        write(t.path(), "1_b/down.sql", "select 1;");
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("share the number 1"), "{err}");

        std::fs::remove_dir_all(t.path().join("1_b")).unwrap();
        std::fs::write(t.path().join("001_a/up.sql"), b"select '\xff';").unwrap();
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");

        write(t.path(), "001_a/up.sql", "select 1;");
        std::fs::create_dir(t.path().join("notes")).unwrap();
        let err = MigrationSet::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("not named <number>_<name>"), "{err}");

        let err = MigrationSet::load(&t.path().join("nope")).unwrap_err();
        assert_eq!(ExitCode::of(&err), ExitCode::Usage);
    }
}
