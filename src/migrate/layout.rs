//! The migration layouts teams already have, read as they are: backstop's own and diesel's
//! folders (`<version>_<name>/up.sql, down.sql`), golang-migrate's and sqlx's file pairs
//! (`<version>_<name>.up.sql`, `.down.sql`) and dbmate's single files (`-- migrate:up` and
//! `-- migrate:down` sections). Which one a folder follows is told by what it holds (or set
//! with `[migrations] layout`); a folder of nothing recognisable, or of two layouts mixed, is
//! an error that says what was found, because reading it as "no migrations" would let
//! `upgrade` and `rollback-test` pass having done nothing.

use std::path::{Path, PathBuf};

use crate::config::LayoutSetting;

/// A layout backstop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Backstop,
    Diesel,
    GolangMigrate,
    Dbmate,
    /// An Alembic project, read through Alembic (see [`super::alembic`]).
    Alembic,
}

impl Layout {
    /// What the layout looks like, for messages that list the layouts.
    fn shape(self) -> &'static str {
        match self {
            Layout::Backstop => "backstop: 001_name/up.sql and down.sql",
            Layout::Diesel => {
                "diesel: 2026-06-26-100902-0000_name or 2019-02-26-002946_name/up.sql and down.sql (metadata.toml honoured)"
            }
            Layout::GolangMigrate => {
                "golang-migrate or sqlx: 000001_name.up.sql and 000001_name.down.sql"
            }
            Layout::Dbmate => {
                "dbmate: 20151129054053_name.sql with -- migrate:up and -- migrate:down"
            }
            Layout::Alembic => "alembic: a folder holding alembic.ini, or its versions folder",
        }
    }

    /// How a script of this layout says it must run outside a transaction.
    pub fn no_transaction_hint(self) -> &'static str {
        match self {
            Layout::Diesel => {
                "put `run_in_transaction = false` in the migration's metadata.toml (or start the script with `-- backstop:no-transaction`)"
            }
            Layout::Dbmate => {
                "write `transaction:false` after its `-- migrate:up` or `-- migrate:down` line"
            }
            Layout::Backstop | Layout::GolangMigrate => {
                "start the script with the line `-- backstop:no-transaction`"
            }
            Layout::Alembic => {
                "run the statement inside `with op.get_context().autocommit_block():` in the revision"
            }
        }
    }

    fn from_setting(s: LayoutSetting) -> Option<Layout> {
        match s {
            LayoutSetting::Auto => None,
            LayoutSetting::Backstop => Some(Layout::Backstop),
            LayoutSetting::Diesel => Some(Layout::Diesel),
            LayoutSetting::GolangMigrate | LayoutSetting::Sqlx => Some(Layout::GolangMigrate),
            LayoutSetting::Dbmate => Some(Layout::Dbmate),
            LayoutSetting::Alembic => Some(Layout::Alembic),
        }
    }

    /// Folders of both backstop and diesel are read the same way.
    fn family(self) -> Family {
        match self {
            Layout::Backstop | Layout::Diesel => Family::Folders,
            Layout::GolangMigrate => Family::Pairs,
            Layout::Dbmate => Family::Sections,
            Layout::Alembic => Family::Rendered,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Folders,
    Pairs,
    Sections,
    /// Scripts a tool renders; never found by looking at files.
    Rendered,
}

/// Every layout, for messages.
pub fn every_layout() -> String {
    [
        Layout::Backstop,
        Layout::Diesel,
        Layout::GolangMigrate,
        Layout::Dbmate,
        Layout::Alembic,
    ]
    .map(Layout::shape)
    .join("; ")
}

/// A migration as the folder holds it, before its scripts are read.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The folder or file name without extensions: what the ledger records.
    pub revision: String,
    /// The version as a number, the order in which the tool runs them.
    pub number: u64,
    pub up: Source,
    pub down: Source,
    /// The checksum, when it is not the up script's (Alembic: the revision file's).
    pub checksum: Option<String>,
}

/// Where one script's text is.
#[derive(Debug, Clone)]
pub enum Source {
    /// A whole file.
    File { path: PathBuf, no_transaction: bool },
    /// A section of a dbmate file, from the line after its marker.
    Section {
        path: PathBuf,
        marker: &'static str,
        no_transaction: bool,
    },
    /// SQL a tool rendered from `path` (an Alembic revision).
    Rendered {
        path: PathBuf,
        name: String,
        sql: String,
        no_transaction: bool,
    },
    /// The script does not exist; reading it reports this.
    Missing(PathBuf),
}

/// What a folder holds, sorted into layouts.
#[derive(Debug, Default)]
pub struct Survey {
    pub layout: Option<Layout>,
    pub candidates: Vec<Candidate>,
    /// Things no layout claims, named for a warning.
    pub strays: Vec<String>,
    /// Everything wrong, each a sentence naming the path.
    pub problems: Vec<String>,
}

/// `001`, `20190226002946`, or diesel's `2019-02-26-002946` and `2019-02-26-002946-0000`
/// (diesel 2.x) → the number; None otherwise. diesel's dashed forms count in units of its
/// four-digit suffix, so `…-002946` and `…-002946-0000` are one version and both order
/// after the plain timestamps diesel wrote before it switched to dashes.
pub fn version_number(version: &str) -> Option<u64> {
    if version.contains('-') {
        let parts: Vec<&str> = version.split('-').collect();
        if !is_diesel_dashed(version) {
            return None;
        }
        let stamp: String = parts[..4].concat();
        let suffix: u64 = parts.get(4).map_or(Some(0), |s| s.parse().ok())?;
        return stamp
            .parse::<u64>()
            .ok()?
            .checked_mul(10_000)?
            .checked_add(suffix);
    }
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

/// `2019-02-26-002946`, or diesel 2.x's `2019-02-26-002946-0000`.
fn is_diesel_dashed(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    matches!(parts.len(), 4 | 5)
        && [4, 2, 2, 6, 4]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `<version>_<name>` → (version, number); names may hold spaces (diesel allows them).
fn split_name(name: &str) -> Option<(&str, u64)> {
    let (version, rest) = name.split_once('_')?;
    if rest.trim().is_empty() || rest.contains(['/', '\\']) {
        return None;
    }
    Some((version, version_number(version)?))
}

/// The number of the revision recorded as `revision`, whatever its layout.
pub fn revision_number(revision: &str) -> Option<u64> {
    split_name(revision).map(|(_, n)| n)
}

#[derive(Debug)]
enum Entry {
    Folder {
        name: String,
        path: PathBuf,
        diesel: bool,
    },
    /// A folder that holds up.sql or down.sql but is not named like a migration.
    MisnamedFolder(PathBuf),
    Pair {
        stem: String,
        path: PathBuf,
        up: bool,
    },
    Dbmate {
        stem: String,
        path: PathBuf,
    },
    /// backstop's schema snapshots, kept beside the migrations.
    Own,
    Stray(String),
}

fn classify(path: &Path, name: &str) -> Entry {
    if path.is_dir() {
        let holds_scripts = path.join("up.sql").exists() || path.join("down.sql").exists();
        return match split_name(name) {
            Some((version, _)) if holds_scripts || path.join("metadata.toml").exists() => {
                Entry::Folder {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    diesel: is_diesel_dashed(version)
                        || path.join("metadata.toml").exists()
                        || name.contains(' ')
                        || name.ends_with("_diesel_initial_setup"),
                }
            }
            _ if holds_scripts => Entry::MisnamedFolder(path.to_path_buf()),
            _ => Entry::Stray(format!("{name}/")),
        };
    }
    if name == "schema.json" {
        return Entry::Own;
    }
    for (suffix, up) in [(".up.sql", true), (".down.sql", false)] {
        if let Some(stem) = name.strip_suffix(suffix) {
            if split_name(stem).is_some() {
                return Entry::Pair {
                    stem: stem.to_string(),
                    path: path.to_path_buf(),
                    up,
                };
            }
        }
    }
    if let Some(stem) = name.strip_suffix(".sql") {
        let sections = std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .any(|l| l.trim_start().starts_with("-- migrate:up"))
            })
            .unwrap_or(false);
        if sections && split_name(stem).is_some() {
            return Entry::Dbmate {
                stem: stem.to_string(),
                path: path.to_path_buf(),
            };
        }
    }
    Entry::Stray(name.to_string())
}

/// Sorts what `dir` holds into a layout and its migrations, collecting every problem.
pub fn survey(dir: &Path, setting: LayoutSetting) -> std::io::Result<Survey> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        entries.push(classify(&e.path(), &name));
    }
    let mut s = Survey::default();
    let folders = entries
        .iter()
        .filter(|e| matches!(e, Entry::Folder { .. } | Entry::MisnamedFolder(_)))
        .count();
    let pairs = entries
        .iter()
        .filter(|e| matches!(e, Entry::Pair { .. }))
        .count();
    let sections = entries
        .iter()
        .filter(|e| matches!(e, Entry::Dbmate { .. }))
        .count();
    let diesel = entries
        .iter()
        .any(|e| matches!(e, Entry::Folder { diesel: true, .. }));
    let found: Vec<(Family, usize)> = [
        (Family::Folders, folders),
        (Family::Pairs, pairs),
        (Family::Sections, sections),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    let layout = match Layout::from_setting(setting) {
        Some(l) => Some(l),
        None if found.len() > 1 => {
            let what: Vec<String> = found
                .iter()
                .map(|(f, n)| format!("{n} {}", family_noun(*f)))
                .collect();
            s.problems.push(format!(
                "{} mixes layouts: {}; keep one layout per folder (set [migrations] layout to read only one)",
                dir.display(),
                what.join(" and ")
            ));
            return Ok(s);
        }
        None => found.first().map(|(f, _)| match f {
            Family::Folders if diesel => Layout::Diesel,
            Family::Folders => Layout::Backstop,
            Family::Pairs => Layout::GolangMigrate,
            Family::Sections => Layout::Dbmate,
            Family::Rendered => Layout::Alembic,
        }),
    };
    let Some(layout) = layout else {
        let strays: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Stray(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        if !strays.is_empty() {
            s.problems.push(format!(
                "{} holds no migrations backstop can read (it holds {}); the layouts read are {}. A Flyway-style V1__name.sql and a one-way sqlx migration (20260101000000_name.sql, made without `sqlx migrate add -r`) have no down script, and backstop needs one for every migration",
                dir.display(),
                list(&strays),
                every_layout()
            ));
        }
        return Ok(s);
    };
    s.layout = Some(layout);
    let family = layout.family();
    let mut pairs: std::collections::BTreeMap<String, (Option<PathBuf>, Option<PathBuf>)> =
        Default::default();
    for e in entries {
        match e {
            Entry::Folder { name, path, .. } if family == Family::Folders => {
                s.candidates.push(folder(&name, &path, &mut s.problems))
            }
            Entry::MisnamedFolder(path) if family == Family::Folders => s.problems.push(format!(
                "migration folder {} is not named <version>_<name> (e.g. 002_add_tags, or diesel's 2026-06-26-100902-0000_add_tags); rename it or move it out of {}",
                path.display(),
                dir.display()
            )),
            Entry::Pair { stem, path, up } if family == Family::Pairs => {
                let slot = pairs.entry(stem).or_default();
                if up {
                    slot.0 = Some(path);
                } else {
                    slot.1 = Some(path);
                }
            }
            Entry::Dbmate { stem, path } if family == Family::Sections => {
                s.candidates.push(dbmate(&stem, &path, &mut s.problems))
            }
            Entry::Own => {}
            Entry::Stray(n) => s.strays.push(n),
            Entry::Folder { name, .. } => s.strays.push(format!("{name}/")),
            Entry::MisnamedFolder(p) => s.strays.push(display_name(&p) + "/"),
            Entry::Pair { path, .. } | Entry::Dbmate { path, .. } => {
                s.strays.push(display_name(&path))
            }
        }
    }
    for (stem, (up, down)) in pairs {
        let number = revision_number(&stem).unwrap_or(0);
        let missing = |ext: &str| Source::Missing(dir.join(format!("{stem}.{ext}.sql")));
        s.candidates.push(Candidate {
            number,
            up: up.map_or_else(
                || missing("up"),
                |path| Source::File {
                    path,
                    no_transaction: false,
                },
            ),
            down: down.map_or_else(
                || missing("down"),
                |path| Source::File {
                    path,
                    no_transaction: false,
                },
            ),
            revision: stem,
            checksum: None,
        });
    }
    if layout == Layout::Diesel {
        for c in &mut s.candidates {
            c.number = diesel_order(&c.revision).unwrap_or(c.number);
        }
    }
    Ok(s)
}

/// diesel runs migrations in the order of their versions as text, dashes taken out
/// (`2019-02-26-002946` → `20190226002946`, diesel 2.x's `…-0000` adding four digits): the
/// digits padded to 19 places order as that text does, so plain and dashed names interleave
/// by date as diesel interleaves them.
fn diesel_order(revision: &str) -> Option<u64> {
    let digits = super::tool::Tool::Diesel.version_of(revision);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(10u64.pow(19 - digits.len() as u32))
}

fn family_noun(f: Family) -> &'static str {
    match f {
        Family::Folders => "migration folder(s) (backstop or diesel)",
        Family::Pairs => "golang-migrate/sqlx file(s) (.up.sql/.down.sql)",
        Family::Sections => "dbmate file(s) (-- migrate:up)",
        Family::Rendered => "rendered script(s)",
    }
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first few names and how many more.
pub fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut sorted = names.to_vec();
    sorted.sort();
    let mut out = sorted
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if sorted.len() > SHOWN {
        out.push_str(&format!(" and {} more", sorted.len() - SHOWN));
    }
    out
}

/// A backstop or diesel folder; diesel's `metadata.toml` may turn transactions off.
fn folder(name: &str, path: &Path, problems: &mut Vec<String>) -> Candidate {
    let number = revision_number(name).unwrap_or(0);
    let mut no_transaction = false;
    let meta = path.join("metadata.toml");
    if meta.exists() {
        match std::fs::read_to_string(&meta)
            .map_err(|e| e.to_string())
            .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()))
        {
            Ok(t) => match t.get("run_in_transaction") {
                None => {}
                Some(toml::Value::Boolean(b)) => no_transaction = !b,
                Some(other) => problems.push(format!(
                    "{}: run_in_transaction is {other}; diesel wants true or false",
                    meta.display()
                )),
            },
            Err(e) => problems.push(format!("{} does not parse: {e}", meta.display())),
        }
    }
    let script = |file: &str| {
        let p = path.join(file);
        if p.exists() {
            Source::File {
                path: p,
                no_transaction,
            }
        } else {
            Source::Missing(p)
        }
    };
    Candidate {
        revision: name.to_string(),
        number,
        up: script("up.sql"),
        down: script("down.sql"),
        checksum: None,
    }
}

/// A dbmate file: its `-- migrate:up` and `-- migrate:down` sections, each with its own
/// `transaction:false`.
fn dbmate(stem: &str, path: &Path, problems: &mut Vec<String>) -> Candidate {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let marker = |name: &'static str| -> Option<Source> {
        let line = text.lines().find(|l| l.trim_start().starts_with(name))?;
        Some(Source::Section {
            path: path.to_path_buf(),
            marker: name,
            no_transaction: line.contains("transaction:false"),
        })
    };
    let down = marker("-- migrate:down").unwrap_or_else(|| {
        problems.push(format!(
            "{} has no `-- migrate:down` section; backstop needs a way back for every migration",
            path.display()
        ));
        Source::Missing(path.to_path_buf())
    });
    Candidate {
        revision: stem.to_string(),
        number: revision_number(stem).unwrap_or(0),
        up: marker("-- migrate:up").unwrap_or_else(|| Source::Missing(path.to_path_buf())),
        down,
        checksum: None,
    }
}

/// The text of a dbmate section: the lines after `marker` up to the next marker, with the
/// lines before it blanked so that line numbers still point into the file.
pub fn section(text: &str, marker: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("-- migrate:") {
            inside = t.starts_with(marker);
            out.push('\n');
            continue;
        }
        if inside {
            out.push_str(line);
        } else {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
