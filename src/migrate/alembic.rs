//! Alembic projects, read through Alembic itself. Revisions are Python, so backstop does not
//! guess at them: it asks Alembic, in offline mode, for the SQL of the whole history in one
//! run each way (`upgrade base:head --sql`, `downgrade head:base --sql`), splits the output
//! at Alembic's own `-- Running upgrade A -> B` markers into one up and one down script per
//! revision, and from then on treats them like any other layout's scripts. A third run,
//! `history --verbose`, names each revision's file (its checksum) and parents (for
//! `alembic_version`). The three run at once, in the folder of `alembic.ini`.
//!
//! The rendered SQL keeps Alembic's `alembic_version` statements, so Alembic and backstop
//! always agree on the current revision. What cannot be rendered faithfully is refused
//! before anything runs: a revision that reads the database (`op.get_bind()`) or branches
//! on `context.is_offline_mode()` would render something other than what it does online.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The name Alembic gives its version table unless env.py says otherwise.
pub const VERSION_TABLE: &str = "alembic_version";

/// How Alembic is started, and with what.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The program and its first arguments (`python3 -m alembic`, `uv run alembic`).
    pub command: Vec<String>,
    /// Variables added to the environment (the project's `.env`, `DATABASE_URL`).
    pub env: Vec<(String, String)>,
    /// How long one Alembic run may take.
    pub timeout: Duration,
}

impl Launcher {
    /// The command as a user would type it, for messages.
    pub fn display(&self) -> String {
        self.command.join(" ")
    }
}

/// The command used when `[migrations] command` is not set: the project's own virtualenv
/// when it has one (what `uv`, `poetry` and `python -m venv .venv` create), else `python3`.
pub fn default_command(project: &Path) -> Vec<String> {
    for venv in [".venv", "venv"] {
        for dir in [project.to_path_buf(), project.join("..")] {
            let python = dir.join(venv).join("bin").join("python");
            if python.is_file() {
                let python = std::path::absolute(&python).unwrap_or(python);
                return vec![
                    python.to_string_lossy().into_owned(),
                    "-m".into(),
                    "alembic".into(),
                ];
            }
        }
    }
    vec!["python3".into(), "-m".into(), "alembic".into()]
}

/// The folder of `alembic.ini` for a configured migrations folder: the folder itself (a
/// project like `backend/`), or, for a revisions folder like `backend/alembic/versions`,
/// the nearest of its two parents that holds one.
pub fn project_dir(dir: &Path) -> Option<PathBuf> {
    let mut candidate = Some(dir);
    for _ in 0..3 {
        let d = candidate?;
        if d.join("alembic.ini").is_file() {
            return Some(d.to_path_buf());
        }
        candidate = d.parent();
    }
    None
}

/// Whether `dir` looks like an Alembic project or its revisions folder.
pub fn is_alembic(dir: &Path) -> bool {
    if dir.join("alembic.ini").is_file() {
        return true;
    }
    let holds_python = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".py"))
        })
        .unwrap_or(false);
    holds_python && project_dir(dir).is_some()
}

/// One revision as `alembic history --verbose` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub id: String,
    pub parents: Vec<String>,
    pub path: PathBuf,
    pub head: bool,
}

/// Reads `alembic history --verbose`.
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Rev: ") {
            let id = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(HistoryEntry {
                id,
                parents: Vec::new(),
                path: PathBuf::new(),
                head: rest.contains("(head)"),
            });
        } else if let Some(e) = out.last_mut() {
            if let Some(p) = line
                .strip_prefix("Parent: ")
                .or_else(|| line.strip_prefix("Merges: "))
            {
                e.parents = ids(p);
            } else if let Some(p) = line.strip_prefix("Path: ") {
                e.path = PathBuf::from(p.trim());
            }
        }
    }
    out
}

fn ids(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "<base>")
        .collect()
}

/// One revision's part of Alembic's offline output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The revisions on the left of the marker (`a, b -> m`).
    pub from: Vec<String>,
    /// The revisions on the right.
    pub to: Vec<String>,
    /// The SQL, without Alembic's own `BEGIN;`/`COMMIT;` lines.
    pub sql: String,
    /// The chunk held an `autocommit_block()` (a `COMMIT;` … `BEGIN;` inside it), so it
    /// must run outside a transaction.
    pub no_transaction: bool,
}

/// Alembic's offline output split at its markers: what came before the first marker (the
/// version table's `CREATE TABLE`) and one chunk per step.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub preamble: String,
    pub chunks: Vec<Chunk>,
}

/// Splits `--sql` output at `-- Running upgrade ` or `-- Running downgrade ` markers.
pub fn split_output(text: &str, verb: &str) -> Split {
    let marker = format!("-- Running {verb} ");
    let mut split = Split::default();
    let mut body: Vec<&str> = Vec::new();
    let mut current: Option<(Vec<String>, Vec<String>)> = None;
    let finish = |split: &mut Split, current: Option<(Vec<String>, Vec<String>)>, body: &[&str]| {
        match current {
            None => split.preamble = transactionless(body).0,
            Some((from, to)) => {
                let (sql, no_transaction) = transactionless(body);
                split.chunks.push(Chunk {
                    from,
                    to,
                    sql,
                    no_transaction,
                });
            }
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&marker) {
            finish(&mut split, current.take(), &body);
            body.clear();
            let (from, to) = rest.split_once("->").unwrap_or((rest, ""));
            current = Some((ids(from), ids(to)));
        } else {
            body.push(line);
        }
    }
    finish(&mut split, current, &body);
    split
}

/// A chunk's SQL without Alembic's transaction lines, and whether a `COMMIT;` stood between
/// two statements (an autocommit block).
fn transactionless(lines: &[&str]) -> (String, bool) {
    let is_control = |l: &str| matches!(l.trim(), "BEGIN;" | "COMMIT;");
    let first = lines
        .iter()
        .position(|l| !l.trim().is_empty() && !is_control(l));
    let last = lines
        .iter()
        .rposition(|l| !l.trim().is_empty() && !is_control(l));
    let inner = match (first, last) {
        (Some(f), Some(l)) => &lines[f..=l],
        _ => return (String::new(), false),
    };
    let mut no_transaction = false;
    let mut sql = String::new();
    for line in inner {
        if is_control(line) {
            no_transaction = true;
            continue;
        }
        sql.push_str(line);
        sql.push('\n');
    }
    (sql, no_transaction)
}

/// What in a revision file keeps it from rendering offline as it runs online, as
/// (line, what); `None` when nothing does.
pub fn offline_unsafe(source: &str) -> Option<(usize, &'static str)> {
    const PATTERNS: &[(&str, &str)] = &[
        (
            "get_bind(",
            "it reads the database through op.get_bind(), which has no database in offline mode",
        ),
        (
            "is_offline_mode(",
            "it branches on context.is_offline_mode(), so its offline SQL is not what it runs online",
        ),
    ];
    for (i, line) in source.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default();
        if let Some((_, why)) = PATTERNS.iter().find(|(p, _)| code.contains(p)) {
            return Some((i + 1, why));
        }
    }
    None
}

/// Alembic's failure as a sentence: the last line of its traceback and the deepest frame in
/// the project's own files (a revision or env.py), as `file:line`.
pub fn explain_failure(stderr: &str, project: &Path) -> String {
    let last = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("INFO "))
        .unwrap_or("no message")
        .to_string();
    let project = project
        .canonicalize()
        .unwrap_or_else(|_| project.to_path_buf());
    let frame = stderr.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("File \"")?;
        let (file, rest) = rest.split_once('"')?;
        let in_project = Path::new(file).starts_with(&project)
            && !file.contains("site-packages")
            && !file.contains("/.venv/");
        let line = rest.strip_prefix(", line ")?.split(',').next()?.trim();
        in_project.then(|| format!("{file}:{line}"))
    });
    let last = without_passwords(&last);
    match frame {
        Some(at) => format!("{last} (at {at})"),
        None => last,
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`: SQLAlchemy quotes the URL it
/// could not use, and env.py's URL carries the password.
pub fn without_passwords(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let (token, after) = tail.split_at(end);
        match token
            .rfind('@')
            .and_then(|at| token[..at].find(':').map(|c| (c, at)))
        {
            Some((colon, at)) => {
                out.push_str(&token[..=colon]);
                out.push_str("***");
                out.push_str(&token[at..]);
            }
            None => out.push_str(token),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The output of one Alembic run.
struct Run {
    args: &'static [&'static str],
    child: std::process::Child,
}

fn start(
    launcher: &Launcher,
    project: &Path,
    args: &'static [&'static str],
) -> anyhow::Result<Run> {
    let Some((program, first)) = launcher.command.split_first() else {
        return crate::error::usage(
            "[migrations] command is empty; set it to how the project starts Alembic, e.g. [\"python3\", \"-m\", \"alembic\"]",
        );
    };
    // A relative path to a program (`.venv/bin/python`) means from the folder of alembic.ini.
    let program = if program.contains('/') && Path::new(program).is_relative() {
        project.join(program).to_string_lossy().into_owned()
    } else {
        program.clone()
    };
    let child = Command::new(&program)
        .args(first)
        .args(args)
        .current_dir(project)
        .envs(launcher.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .or_else(|e| {
            crate::error::usage(format!(
                "cannot start Alembic as `{}` in {}: {program}: {e}; install Python and Alembic (pip install alembic), or set [migrations] command to how the project starts it (e.g. [\"uv\", \"run\", \"alembic\"], [\"poetry\", \"run\", \"alembic\"] or [\".venv/bin/python\", \"-m\", \"alembic\"])",
                launcher.display(),
                project.display()
            ))
        })?;
    Ok(Run { args, child })
}

/// Waits for a run, reading its output on threads so neither pipe fills; kills it at the
/// deadline.
fn finish(
    mut run: Run,
    launcher: &Launcher,
    project: &Path,
    deadline: Instant,
) -> anyhow::Result<String> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(run.child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(run.child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = run.child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = run.child.kill();
            let _ = run.child.wait();
            anyhow::bail!(
                "`{} {}` in {} did not finish within {}s; raise [migrations] render_timeout_secs if the project needs longer",
                launcher.display(),
                run.args.join(" "),
                project.display(),
                launcher.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let why = if stderr.contains("No module named alembic") {
        format!(
            "Alembic is not installed for `{}`; install it there (pip install alembic), or set [migrations] command to how the project starts Alembic (e.g. [\"uv\", \"run\", \"alembic\"] or [\".venv/bin/python\", \"-m\", \"alembic\"])",
            launcher.display()
        )
    } else {
        explain_failure(&stderr, project)
    };
    crate::error::usage(format!(
        "Alembic could not render the migrations: {why}; `{} {}` failed in {}",
        launcher.display(),
        run.args.join(" "),
        project.display()
    ))
}

/// One revision, rendered both ways.
#[derive(Debug, Clone)]
pub struct Revision {
    pub id: String,
    pub parents: Vec<String>,
    pub path: PathBuf,
    pub up: Chunk,
    pub down: Chunk,
}

/// What Alembic said about a project: its revisions in Alembic's order, each with its SQL.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub revisions: Vec<Revision>,
    /// The version table's `CREATE TABLE`, made `IF NOT EXISTS` (Alembic keeps the empty
    /// table after a downgrade to base, and renders it again for an upgrade from base).
    pub version_table_ddl: String,
    /// How long the three runs took together.
    pub took: Duration,
}

const UPGRADE: &[&str] = &["upgrade", "base:head", "--sql"];
const DOWNGRADE: &[&str] = &["downgrade", "head:base", "--sql"];
const HISTORY: &[&str] = &["history", "--verbose"];

/// Runs Alembic in `project` and reads every revision; every problem is one message.
pub fn render(project: &Path, launcher: &Launcher) -> anyhow::Result<Rendered> {
    let started = Instant::now();
    let deadline = started + launcher.timeout;
    let runs = [
        start(launcher, project, HISTORY)?,
        start(launcher, project, UPGRADE)?,
        start(launcher, project, DOWNGRADE)?,
    ];
    let mut outputs = Vec::new();
    let mut first_error = None;
    for run in runs {
        match finish(run, launcher, project, deadline) {
            Ok(o) => outputs.push(o),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let history = parse_history(outputs.first().map(String::as_str).unwrap_or(""));
    let heads: Vec<&str> = history
        .iter()
        .filter(|e| e.head)
        .map(|e| e.id.as_str())
        .collect();
    if heads.len() > 1 {
        return crate::error::usage(format!(
            "the Alembic project in {} has {} heads ({}); backstop follows one line of history: merge them (alembic merge -m \"merge heads\" {}) and try again",
            project.display(),
            heads.len(),
            heads.join(", "),
            heads.join(" ")
        ));
    }
    if let Some(e) = first_error {
        // A revision that reads the database often fails to render at all; say why.
        let problems = offline_problems(&history);
        if !problems.is_empty() {
            return crate::error::usage(problems.join("\n"));
        }
        return Err(e);
    }
    let (up, down) = (&outputs[1], &outputs[2]);
    assemble(project, &history, up, down, started.elapsed())
}

/// The revisions whose files keep them from rendering offline as they run online, each
/// as a sentence with its id, file and line.
pub fn offline_problems(history: &[HistoryEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in history {
        match std::fs::read_to_string(&r.path) {
            Ok(text) => {
                if let Some((line, why)) = offline_unsafe(&text) {
                    problems.push(format!(
                        "revision {} cannot be rendered offline: {why} ({}:{line}); write the SQL it needs with op.execute() so that `alembic upgrade --sql` shows what it does",
                        r.id,
                        r.path.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("cannot read {}: {e}", r.path.display())),
        }
    }
    problems
}

/// Puts the three outputs together; pure, so the rules are tested without Python.
pub fn assemble(
    project: &Path,
    history: &[HistoryEntry],
    upgrade: &str,
    downgrade: &str,
    took: Duration,
) -> anyhow::Result<Rendered> {
    let up = split_output(upgrade, "upgrade");
    let down = split_output(downgrade, "downgrade");
    let by_id: HashMap<&str, &HistoryEntry> = history.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut problems = Vec::new();
    let mut downs: BTreeMap<String, Chunk> = BTreeMap::new();
    let mut down_order = Vec::new();
    for c in down.chunks {
        if let [one] = c.from.as_slice() {
            down_order.push(one.clone());
            downs.insert(one.clone(), c);
        }
    }
    let mut revisions = Vec::new();
    for c in up.chunks {
        let [id] = c.to.as_slice() else {
            problems.push(format!(
                "Alembic's step to {} goes to several revisions at once, which backstop cannot follow",
                c.to.join(", ")
            ));
            continue;
        };
        let Some(entry) = by_id.get(id.as_str()) else {
            problems.push(format!(
                "revision {id} is in Alembic's upgrade output but not in `alembic history`"
            ));
            continue;
        };
        let Some(down) = downs.remove(id) else {
            problems.push(format!(
                "revision {id} ({}) has no step in Alembic's downgrade output",
                entry.path.display()
            ));
            continue;
        };
        revisions.push(Revision {
            id: id.clone(),
            parents: entry.parents.clone(),
            path: entry.path.clone(),
            up: c,
            down,
        });
    }
    let up_order: Vec<&str> = revisions.iter().map(|r| r.id.as_str()).collect();
    let reversed: Vec<&str> = down_order.iter().rev().map(String::as_str).collect();
    if problems.is_empty() && up_order != reversed {
        problems.push(format!(
            "Alembic downgrades in an order ({}) that is not its upgrade order reversed ({}); backstop cannot follow this history",
            down_order.join(", "),
            up_order.join(", ")
        ));
    }
    problems.extend(offline_problems(history));
    let version_table_ddl = if_not_exists(&up.preamble);
    let expected = format!("CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (");
    if !revisions.is_empty() && !version_table_ddl.starts_with(&expected) {
        problems.push(format!(
            "env.py in {} keeps Alembic's version table somewhere else than {VERSION_TABLE} in the search path ({}); backstop reads {VERSION_TABLE} in [database] schema: drop version_table and version_table_schema from context.configure",
            project.display(),
            version_table_ddl.lines().next().unwrap_or("no CREATE TABLE before the first step")
        ));
    }
    if !problems.is_empty() {
        let what = if problems.len() == 1 {
            problems.remove(0)
        } else {
            format!(
                "{} problems in the Alembic project {}:\n  - {}",
                problems.len(),
                project.display(),
                problems.join("\n  - ")
            )
        };
        return crate::error::usage(what);
    }
    Ok(Rendered {
        revisions,
        version_table_ddl,
        took,
    })
}

/// `CREATE TABLE x (` → `CREATE TABLE IF NOT EXISTS x (`.
fn if_not_exists(ddl: &str) -> String {
    let t = ddl.trim();
    match t.strip_prefix("CREATE TABLE ") {
        Some(rest) if !rest.starts_with("IF NOT EXISTS") => {
            format!("CREATE TABLE IF NOT EXISTS {rest}\n")
        }
        _ if t.is_empty() => String::new(),
        _ => format!("{t}\n"),
    }
}

#[cfg(test)]
mod tests;
