//! `rollback-test`: the manual upgrade → inspect → downgrade → inspect → re-upgrade →
//! compare checklist, run on a scratch database that is created for the purpose and dropped
//! afterwards, whatever happens.
//!
//! The procedure applies every migration one step at a time from an empty database,
//! snapshotting the schema after each; compares the head schema with the reviewed
//! `migrations/schema.json` when there is one; reverts one step at a time, checking that
//! each step returns exactly to the snapshot taken before that migration; re-applies to head
//! and checks the schema is identical to the first time.

use std::collections::BTreeMap;
use std::sync::Arc;

mod copy;

pub use copy::{CopyReport, CopySource};

use anyhow::Context;
use serde::Serialize;

use super::downgrade::{downgrade, DowngradeOptions};
use super::migration::Migrator;
use super::upgrade::{upgrade, UpgradeOptions};
use crate::backup::manifest::random_hex;
use crate::config::{BackupConfig, DatabaseConfig};
use crate::context::OpContext;
use crate::error::usage;
use crate::fixture::{explain_data_failure, fill, fingerprint, Filled, Skipped};
use crate::migrate::{DownTarget, MigrationSet, UpTarget};
use crate::pg::{quote_ident, Database, PgContext};
use crate::schema::{DiffOptions, Snapshot};
use crate::store::{DirStore, Store};

/// What `rollback-test` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RollbackTestOptions {
    /// Leave the scratch database behind for inspection.
    pub keep: bool,
    /// Generated rows per table; 0 skips the data check.
    pub rows: u64,
    /// Tables left out of the data check.
    pub rows_skip: Vec<String>,
    /// Columns in another order after a down and up pair are not a failure.
    pub allow_column_order: bool,
    /// `--copy`: test on a copy of the real data instead of generated rows.
    pub copy: Option<CopySource>,
}

/// Result of one success criterion of the original procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// Could not be checked (nothing to compare with); never counted as a pass.
    Skipped,
    /// An earlier step failed, so this one never ran.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// Everything `rollback-test` found.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackTestReport {
    pub scratch_database: String,
    pub kept: bool,
    pub migrations: Vec<String>,
    pub criteria: Vec<Criterion>,
    /// Schema differences found, one line each, for the criteria that failed.
    pub differences: Vec<String>,
    /// The tables the data check covered, and how their rows came to be.
    pub data_checked: Vec<Filled>,
    /// The tables left out of the data check, and why.
    pub data_skipped: Vec<Skipped>,
    /// With `--copy`: the copy, its size, and the time taken.
    pub copy: Option<CopyReport>,
}

impl RollbackTestReport {
    /// True when no criterion failed or went unrun.
    pub fn passed(&self) -> bool {
        self.criteria
            .iter()
            .all(|c| matches!(c.outcome, Outcome::Pass | Outcome::Skipped))
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "rollback-test on scratch database {} ({})\nmigrations: {}\n\n",
            self.scratch_database,
            if self.kept { "kept" } else { "dropped" },
            summary(&self.migrations)
        );
        if let Some(c) = &self.copy {
            s.push_str(&format!(
                "copy: {} ({}), at revision {}: {} table(s), {} row(s), {:.1} MiB of CSV; taken and loaded in {:.1}s, whole run {:.1}s\n\n",
                c.backup_id,
                c.source,
                c.revision.as_deref().unwrap_or("(none)"),
                c.tables,
                c.rows,
                c.bytes as f64 / (1024.0 * 1024.0),
                c.load_seconds,
                c.total_seconds
            ));
        }
        let width = self
            .criteria
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        s.push_str(&format!(
            "{:width$}  {:7}  {}\n",
            "criterion", "result", "detail"
        ));
        for c in &self.criteria {
            let result = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "SKIPPED",
                Outcome::NotRun => "NOT RUN",
            };
            s.push_str(&format!("{:width$}  {:7}  {}\n", c.name, result, c.detail));
        }
        if !self.data_skipped.is_empty() {
            s.push_str("\nleft out of the data check:\n");
            for t in &self.data_skipped {
                s.push_str(&format!("  {}: {}\n", t.table, t.reason));
            }
        }
        if !self.differences.is_empty() {
            s.push_str("\ndifferences:\n");
            for d in &self.differences {
                s.push_str(&format!("  {}\n", d.replace('\n', "\n  ")));
            }
        }
        s.push_str(if self.passed() {
            "\nresult: PASS\n"
        } else {
            "\nresult: FAIL\n"
        });
        s
    }
}

/// The migrations on one line: all of a few, the ends of many (`--json` has them all).
fn summary(migrations: &[String]) -> String {
    const ENDS: usize = 3;
    match migrations.len() {
        0 => "(none)".to_string(),
        n if n <= 2 * ENDS + 1 => migrations.join(", "),
        n => format!(
            "{n}: {}, … {}",
            migrations[..ENDS].join(", "),
            migrations[n - ENDS..].join(", ")
        ),
    }
}

const CRITERIA: [&str; 7] = [
    "upgrade applies",
    "schema matches",
    "downgrade succeeds",
    "schema reverts completely",
    "re-apply succeeds",
    "schema identical",
    "data restored",
];

/// Runs the procedure on a new scratch database next to `db`, dropping it afterwards
/// (unless `keep`), also when `ctx` is cancelled first (Ctrl-C, SIGTERM). `store` is where
/// `--copy latest|ID` finds its backup.
pub async fn run(
    db: &Database,
    settings: &DatabaseConfig,
    set: &MigrationSet,
    expected: Option<Snapshot>,
    options: &RollbackTestOptions,
    store: Option<&Arc<Store>>,
    ctx: &OpContext,
) -> anyhow::Result<RollbackTestReport> {
    if set.migrations.is_empty() {
        return usage(format!(
            "rollback-test has nothing to test: {} holds no migrations (a pass would mean nothing); the layouts read are {}",
            set.dir.display(),
            crate::migrate::layout::every_layout()
        ));
    }
    let admin = db.connect().await?;
    let name = format!("backstop_rt_{}", random_hex(12));
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
        .pg(|| {
            format!("creating the scratch database {name} (the database user needs CREATEDB)")
        })?;
    tracing::info!("created scratch database {name}");
    let scratch = db.with_dbname(&name);
    // Pre-downgrade backups of the scratch database go to a directory of their own.
    let backups = std::env::temp_dir().join(format!("{name}-backups"));
    let outcome = tokio::select! {
        r = async {
            match &options.copy {
                Some(source) => {
                    copy::procedure(db, &scratch, settings, set, expected, options, source, store, &backups, ctx).await
                }
                None => procedure(&scratch, settings, set, expected, options, &backups, ctx).await,
            }
        } => r,
        _ = ctx.cancelled() => Err(ctx.interrupted()),
    };
    let _ = std::fs::remove_dir_all(&backups);
    let kept = options.keep;
    if !kept {
        let dropped = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await
            .pg(|| format!("dropping the scratch database {name}; drop it by hand"));
        match (&outcome, dropped) {
            (_, Ok(())) => tracing::info!("dropped scratch database {name}"),
            (Ok(_), Err(e)) => return Err(e),
            (Err(_), Err(e)) => tracing::error!("{e:#}"),
        }
    }
    let mut report = outcome.with_context(|| {
        if kept {
            format!("rollback-test on {name} (kept)")
        } else {
            format!("rollback-test on {name} (dropped)")
        }
    })?;
    report.scratch_database = name;
    report.kept = kept;
    Ok(report)
}

struct Checklist {
    criteria: Vec<Criterion>,
    differences: Vec<String>,
    /// For each difference, how many later comparisons showed it again.
    repeats: Vec<usize>,
    /// The differences the last step down showed, by text, with their index.
    open: BTreeMap<String, usize>,
    accept: DiffOptions,
    filled: crate::fixture::FillReport,
}

impl Checklist {
    fn new(accept: DiffOptions) -> Checklist {
        Checklist {
            criteria: CRITERIA
                .iter()
                .map(|n| Criterion {
                    name: n,
                    outcome: Outcome::NotRun,
                    detail: "an earlier step failed".into(),
                })
                .collect(),
            differences: Vec::new(),
            repeats: Vec::new(),
            open: BTreeMap::new(),
            accept,
            filled: Default::default(),
        }
    }

    fn set(&mut self, name: &str, outcome: Outcome, detail: impl Into<String>) {
        if let Some(c) = self.criteria.iter_mut().find(|c| c.name == name) {
            c.outcome = outcome;
            c.detail = detail.into();
        }
    }

    /// Compares two snapshots for a criterion; returns whether they matched.
    fn compare(&mut self, context: &str, want: &Snapshot, got: &Snapshot) -> bool {
        let changes = want.diff_with(got, self.accept);
        for c in &changes {
            self.differences.push(format!("{context}: {c}"));
            self.repeats.push(0);
        }
        changes.is_empty()
    }

    /// Like [`Checklist::compare`], for one step of a walk down: a difference the step
    /// before already showed (an object a later down script left behind is still there at
    /// every earlier step) is the same cause, counted there rather than listed again.
    fn compare_step(&mut self, context: &str, want: &Snapshot, got: &Snapshot) -> bool {
        let changes = want.diff_with(got, self.accept);
        let mut still = BTreeMap::new();
        for c in &changes {
            let text = c.to_string();
            match self.open.get(&text) {
                Some(&i) => {
                    self.repeats[i] += 1;
                    still.insert(text, i);
                }
                None => {
                    self.differences.push(format!("{context}: {c}"));
                    self.repeats.push(0);
                    still.insert(text, self.differences.len() - 1);
                }
            }
        }
        self.open = still;
        changes.is_empty()
    }

    /// The differences, each once, with how many later steps still showed it.
    fn differences(&self) -> Vec<String> {
        self.differences
            .iter()
            .zip(&self.repeats)
            .map(|(d, n)| match n {
                0 => d.clone(),
                n => format!("{d}\n(the same after each of the next {n} step(s) down: one cause, listed once)"),
            })
            .collect()
    }
}

async fn procedure(
    scratch: &Database,
    settings: &DatabaseConfig,
    set: &MigrationSet,
    expected: Option<Snapshot>,
    options: &RollbackTestOptions,
    backups: &std::path::Path,
    ctx: &OpContext,
) -> anyhow::Result<RollbackTestReport> {
    let rows = options.rows;
    let store = Arc::new(DirStore::new(backups.to_path_buf()));
    let engine = Migrator::new(scratch.clone(), settings.clone(), set.clone())
        .with_store(store, BackupConfig::default());
    let schema = settings.schema.as_str();
    let snap = || Snapshot::capture(scratch, settings);
    let revisions: Vec<String> = set.migrations.iter().map(|m| m.revision.clone()).collect();
    let mut list = Checklist::new(DiffOptions {
        allow_column_order: options.allow_column_order,
    });
    let report = |list: Checklist| RollbackTestReport {
        scratch_database: String::new(),
        kept: false,
        migrations: revisions.clone(),
        differences: list.differences(),
        data_checked: list.filled.filled,
        data_skipped: list.filled.skipped,
        criteria: list.criteria,
        copy: None,
    };
    let up = |target: UpTarget| UpgradeOptions {
        target,
        dry_run: false,
        allow_drift: false,
        restore: None,
        restore_skip: Vec::new(),
    };
    let down = |target: DownTarget| DowngradeOptions {
        target,
        dry_run: false,
        allow_drift: false,
        // With data, every step is backed up; without, there is nothing to lose.
        allow_data_loss: rows == 0,
    };

    // 1. Apply every migration from empty, one step at a time.
    let mut snapshots = vec![snap().await?];
    for rev in &revisions {
        if let Err(e) = upgrade(&engine, &up(UpTarget::Relative(1)), ctx).await {
            list.set("upgrade applies", Outcome::Fail, format!("{rev}: {e:#}"));
            return Ok(report(list));
        }
        snapshots.push(snap().await?);
    }
    let head = snapshots.last().cloned().unwrap_or_default();
    let current = engine.status().await?.current_label();
    list.set(
        "upgrade applies",
        Outcome::Pass,
        format!(
            "{} migration(s) applied from empty; current {current}",
            revisions.len()
        ),
    );
    schema_matches(&mut list, set, expected.as_ref(), &head);

    // Data: fill every table, remember a fingerprint of every row.
    let mut before_data = None;
    if rows > 0 {
        let client = scratch.connect().await?;
        match fill(&client, schema, rows, &options.rows_skip).await {
            Ok(filled) => {
                let tables = filled.tables();
                if tables.is_empty() && !filled.skipped.is_empty() {
                    list.set(
                        "data restored",
                        Outcome::Fail,
                        "no table could be filled, so no data was checked (see below); --rows 0 leaves the data check out on purpose",
                    );
                } else {
                    before_data = Some((tables, fingerprint(&client, &filled.filled).await?));
                }
                list.filled = filled;
            }
            Err(e) => list.set(
                "data restored",
                Outcome::NotRun,
                format!("the tables could not be filled: {e:#}"),
            ),
        }
    } else {
        list.set(
            "data restored",
            Outcome::Skipped,
            "--rows 0: no data generated",
        );
    }

    // 2. Revert one step at a time; each must land exactly on the snapshot before it.
    let mut reverted_cleanly = true;
    for (i, rev) in revisions.iter().enumerate().rev() {
        if let Err(e) = downgrade(&engine, &down(DownTarget::Relative(1)), ctx).await {
            let script = &set.migrations[i].down;
            let data = match (&before_data, script.no_transaction) {
                (Some(_), false) => {
                    let client = scratch.connect().await?;
                    explain_data_failure(&client, schema, &script.sql).await?
                }
                _ => None,
            };
            let detail = match data {
                Some(why) => format!("{rev}: {} {why}", script.name),
                None => format!("{rev}: {e:#}"),
            };
            list.set("downgrade succeeds", Outcome::Fail, detail);
            return Ok(report(list));
        }
        let now = snap().await?;
        let before = if i == 0 {
            "empty".to_string()
        } else {
            revisions[i - 1].clone()
        };
        reverted_cleanly &= list.compare_step(
            &format!("after reverting {rev} vs {before}"),
            &snapshots[i],
            &now,
        );
    }
    list.set(
        "downgrade succeeds",
        Outcome::Pass,
        format!("{} step(s) reverted to base", revisions.len()),
    );
    if reverted_cleanly {
        list.set(
            "schema reverts completely",
            Outcome::Pass,
            "every step returned to the schema before it; base is empty",
        );
    } else {
        list.set(
            "schema reverts completely",
            Outcome::Fail,
            "a down.sql left objects behind or removed too much (see differences)",
        );
    }

    // 3. Re-apply to head (restoring each step's backup); the schema must be the one of the
    // first pass and every row must be back.
    let mut to_head = up(UpTarget::Head);
    if before_data.is_some() {
        to_head.restore = Some("latest".into());
    }
    if let Err(e) = upgrade(&engine, &to_head, ctx).await {
        list.set("re-apply succeeds", Outcome::Fail, format!("{e:#}"));
        return Ok(report(list));
    }
    list.set(
        "re-apply succeeds",
        Outcome::Pass,
        format!("upgraded to {}", engine.status().await?.current_label()),
    );
    schema_identical(&mut list, &head, &snap().await?);
    if let Some((tables, want)) = before_data {
        let client = scratch.connect().await?;
        let got = fingerprint(&client, &list.filled.filled).await?;
        let skipped = match list.filled.skipped.len() {
            0 => String::new(),
            n => format!("; {n} table(s) left out (see below)"),
        };
        let rows: i64 = list.filled.filled.iter().map(|f| f.rows).sum();
        let pass = format!(
            "{} table(s) checked, {rows} row(s), md5-identical{skipped}",
            tables.len()
        );
        data_restored(&mut list, &tables, &want, &got, pass, &skipped);
    }
    Ok(report(list))
}

/// "schema matches": the head schema against the reviewed `schema.json` beside the
/// migrations, skipped (never passed) when there is none.
fn schema_matches(
    list: &mut Checklist,
    set: &MigrationSet,
    expected: Option<&Snapshot>,
    head: &Snapshot,
) {
    let expected_file = set.dir.join("schema.json").display().to_string();
    match expected {
        Some(want) => {
            if list.compare(&format!("head vs {expected_file}"), want, head) {
                list.set("schema matches", Outcome::Pass, format!("{} table(s), identical to {expected_file}", head.tables.len()));
            } else {
                list.set("schema matches", Outcome::Fail, format!("head schema differs from {expected_file} (see differences)"));
            }
        }
        None => list.set(
            "schema matches",
            Outcome::Skipped,
            format!("no {expected_file} to compare with; write it with `backstop schema --json > {expected_file}`"),
        ),
    }
}

/// "data restored": every table of `tables` must have the same fingerprint in `got` as in
/// `want`; each one that differs is listed with both.
fn data_restored(
    list: &mut Checklist,
    tables: &[String],
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
    pass: String,
    skipped: &str,
) {
    let differ: Vec<&String> = tables
        .iter()
        .filter(|t| want.get(*t) != got.get(*t))
        .collect();
    if differ.is_empty() {
        list.set("data restored", Outcome::Pass, pass);
        return;
    }
    for t in &differ {
        list.differences.push(format!(
            "data of {t}: before {} after {}",
            want.get(*t).map(String::as_str).unwrap_or("?"),
            got.get(*t).map(String::as_str).unwrap_or("(missing)")
        ));
    }
    let names: Vec<&str> = differ.iter().map(|s| s.as_str()).collect();
    list.set(
        "data restored",
        Outcome::Fail,
        format!("rows differ in {}{skipped}", names.join(", ")),
    );
}

/// "schema identical": the re-applied head against the first.
fn schema_identical(list: &mut Checklist, head: &Snapshot, again: &Snapshot) {
    if list.compare("re-applied head vs first head", head, again) {
        list.set(
            "schema identical",
            Outcome::Pass,
            "tables, columns, indexes, constraints and sequences identical",
        );
    } else {
        list.set(
            "schema identical",
            Outcome::Fail,
            "the re-applied schema differs from the first (see differences)",
        );
    }
}
