//! `backup`, `backups list|show|verify|prune`, `restore`.

use backstop::backup::manifest::{Kind, Manifest};
use backstop::error::{usage, ExitCode};
use backstop::ops::backup::{back_up, BackupOptions};
use backstop::ops::list::{list, show};
use backstop::ops::prune::prune;
use backstop::ops::restore::{restore as run_restore, RestoreOptions};
use backstop::ops::verify::{verify, Which};
use backstop::restore::RestoreMode;
use clap::{Args, Subcommand, ValueEnum};

use super::fmt::{age, human_bytes, printable, seconds};
use super::{Ctx, Output};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Table to back up (repeatable); default [backup] tables, else every table
    #[arg(long = "table", value_name = "T")]
    pub tables: Vec<String>,
    /// A note stored in the manifest
    #[arg(long, value_name = "L")]
    pub label: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupsArgs {
    #[command(subcommand)]
    pub action: BackupsAction,
}

#[derive(Debug, Subcommand)]
pub enum BackupsAction {
    /// Every complete backup, newest first
    List,
    /// One backup's manifest: source database, revision, tables
    Show { id: String },
    /// Re-read objects and check SHA-256, decompression and row counts (exit 3 on mismatch)
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Apply [retention] and remove incomplete uploads
    Prune {
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub backup_id: String,
    /// Table to restore (repeatable); default all tables of the backup
    #[arg(long = "table", value_name = "T")]
    pub tables: Vec<String>,
    /// What to do with rows already in a table
    #[arg(long, value_enum, default_value = "fail")]
    pub mode: ModeArg,
}

/// `--mode`, as the command line spells it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Refuse (exit 4) if any target table has rows
    Fail,
    /// Empty the target tables first (in the same transaction)
    Truncate,
    /// Add the backup's rows to what is there
    Append,
}

impl From<ModeArg> for RestoreMode {
    fn from(m: ModeArg) -> RestoreMode {
        match m {
            ModeArg::Fail => RestoreMode::Fail,
            ModeArg::Truncate => RestoreMode::Truncate,
            ModeArg::Append => RestoreMode::Append,
        }
    }
}

fn summary_line(m: &Manifest, now: time::OffsetDateTime, status: Option<&str>) -> String {
    let mut line = format!(
        "{}  {:<13}  {:<16}  {:>3} table(s)  {:>10} rows  {:>10}  {}",
        m.id,
        m.kind.as_str(),
        printable(m.revision.as_deref().unwrap_or("(none)")),
        m.tables.len(),
        m.rows(),
        human_bytes(m.compressed_bytes()),
        age(m, now)
    );
    if let Some(s) = status {
        line.push_str(&format!("  {s}"));
    }
    line
}

pub async fn backup(ctx: &Ctx, args: BackupArgs) -> anyhow::Result<Output> {
    let ws = ctx.workspace()?;
    let store = ws.store().await?;
    let options = BackupOptions {
        kind: Kind::Manual,
        tables: args.tables,
        label: args.label,
        target_revision: None,
        every_schema: false,
    };
    let m = back_up(&ws, &*store, &options, &ctx.op()).await?;
    let mut text = format!("{}\n", m.id);
    for t in &m.tables {
        text.push_str(&format!(
            "  {}: {} rows, {} CSV -> {} zstd\n",
            t.name,
            t.rows,
            human_bytes(t.bytes),
            human_bytes(t.compressed_bytes)
        ));
    }
    text.push_str(&format!("stored in {}\n", store.describe()));
    Output::new(&m, text)
}

pub async fn backups(ctx: &Ctx, args: BackupsArgs) -> anyhow::Result<Output> {
    let ws = ctx.workspace()?;
    let store = ws.store().await?;
    let now = time::OffsetDateTime::now_utc();
    match args.action {
        BackupsAction::List => {
            let db = ws.database().ok();
            let listing = list(
                &*store,
                db.as_ref()
                    .map(|db| (db, ws.config().database.schema.as_str())),
            )
            .await?;
            let catalog = &listing.catalog;
            let status = &listing.outcomes;
            let mut text = String::new();
            if catalog.backups.is_empty() {
                text.push_str(&format!("no backups in {}\n", store.describe()));
            }
            for m in &catalog.backups {
                text.push_str(&summary_line(m, now, status.get(&m.id).map(|o| o.as_str())));
                text.push('\n');
            }
            for i in &catalog.incomplete {
                tracing::info!(
                    "{} is an incomplete upload (no manifest); `backups prune` removes it once it is {} old",
                    i.id,
                    seconds(ws.config().retention.incomplete_after_secs)
                );
            }
            for (id, why) in &catalog.unreadable {
                tracing::warn!("backup {id} has an unreadable manifest: {}", printable(why));
            }
            let json = listing.to_json();
            Ok(Output {
                json,
                text,
                code: ExitCode::Success,
            })
        }
        BackupsAction::Show { id } => {
            let m = show(&*store, &id).await?;
            let mut text = format!(
                "backup    {}\nkind      {}\ncreated   {}\ndatabase  {} (PostgreSQL {})\nschema    {}\nrevision  {}\n",
                m.id,
                m.kind.as_str(),
                printable(&m.created_at),
                printable(&m.database.to_string()),
                printable(&m.database.server_version),
                m.schema,
                printable(m.revision.as_deref().unwrap_or("(none)"))
            );
            if let Some(t) = &m.target_revision {
                text.push_str(&format!("target    {}\n", printable(t)));
            }
            if let Some(l) = &m.label {
                text.push_str(&format!("label     {}\n", printable(l)));
            }
            text.push_str(&format!("zstd      level {}\ntables:\n", m.zstd_level));
            for t in &m.tables {
                let cols: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", printable(&c.name), printable(&c.data_type)))
                    .collect();
                text.push_str(&format!(
                    "  {}: {} rows, {} CSV, {} stored, sha256 {}\n    columns: {}\n",
                    t.name,
                    t.rows,
                    human_bytes(t.bytes),
                    human_bytes(t.compressed_bytes),
                    t.sha256,
                    cols.join(", ")
                ));
            }
            Output::new(&m, text)
        }
        BackupsAction::Verify { id, all } => {
            let which = match (id, all) {
                (Some(id), _) => Which::One(id),
                (None, true) => Which::All,
                (None, false) => return usage("backups verify needs a backup id or --all"),
            };
            let report = verify(&*store, &which, &ctx.op()).await?;
            let results = &report.backups;
            let mut text = String::new();
            for r in results {
                text.push_str(&format!(
                    "{} {}\n",
                    r.id,
                    if r.ok { "OK" } else { "FAILED" }
                ));
                if let Some(p) = &r.problem {
                    text.push_str(&format!("  {}\n", printable(p)));
                }
                for t in &r.tables {
                    match &t.problem {
                        None => text.push_str(&format!(
                            "  {}: ok, {} rows\n",
                            t.table,
                            t.rows.unwrap_or(0)
                        )),
                        Some(p) => text.push_str(&format!("  {}: {}\n", t.table, printable(p))),
                    }
                }
            }
            if results.is_empty() {
                text.push_str("no backups to verify\n");
            }
            let ok = report.ok;
            let out = Output::new(&report, text)?;
            Ok(out.with_code(if ok {
                ExitCode::Success
            } else {
                ExitCode::Verification
            }))
        }
        BackupsAction::Prune { dry_run } => {
            let plan = prune(&*store, &ws.config().retention, dry_run, now).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            let mut text = String::new();
            for d in &plan.remove {
                text.push_str(&format!("{verb} {} ({})\n", d.id, d.reason));
            }
            for i in &plan.incomplete {
                text.push_str(&format!(
                    "{verb} incomplete upload {} ({} object(s), no manifest)\n",
                    i.id,
                    i.objects.len()
                ));
            }
            for (key, _) in &plan.stale_uploads {
                text.push_str(&format!(
                    "{} unfinished multipart upload of {key}\n",
                    if dry_run { "would abort" } else { "aborted" }
                ));
            }
            for d in &plan.keep {
                text.push_str(&format!("kept {} ({})\n", d.id, d.reason));
            }
            if dry_run {
                text.push_str("dry run: nothing was removed\n");
            }
            let json = serde_json::json!({ "dry_run": dry_run, "plan": plan });
            Ok(Output {
                json,
                text,
                code: ExitCode::Success,
            })
        }
    }
}

pub async fn restore(ctx: &Ctx, args: RestoreArgs) -> anyhow::Result<Output> {
    let ws = ctx.workspace()?;
    let db = ws.database()?;
    let store = ws.store().await?;
    let options = RestoreOptions {
        backup_id: args.backup_id,
        tables: args.tables,
        mode: args.mode.into(),
    };
    let report = run_restore(&db, &ws.config().database, &*store, &options, &ctx.op()).await?;
    let mut text = format!(
        "restored backup {} into {}\n",
        report.backup_id, report.database
    );
    for t in &report.tables {
        text.push_str(&format!("  {}: {} rows", t.table, t.rows));
        if !t.indexes_rebuilt.is_empty() {
            text.push_str(&format!(", rebuilt {}", t.indexes_rebuilt.join(", ")));
        }
        if !t.sequences.is_empty() {
            text.push_str(&format!(", {}", t.sequences.join(", ")));
        }
        text.push('\n');
    }
    for w in &report.warnings {
        text.push_str(&format!("note: {w}\n"));
    }
    Output::new(&report, text)
}
