//! `current`, `history`, `upgrade`, `downgrade`, `stamp`.

use clap::Args;

use backstop::backup::manifest::Scope;
use backstop::error::{usage, ExitCode};
use backstop::migrate::{Direction, DownTarget, EntryState, UpTarget};
use backstop::ops::downgrade::{downgrade as run_downgrade, DowngradeOptions};
use backstop::ops::migration::MigrateReport;
use backstop::ops::stamp::stamp as run_stamp;
use backstop::ops::upgrade::{upgrade as run_upgrade, UpgradeOptions};

use super::fmt::human_bytes;
use super::{Ctx, Output};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// head (default), +N, or a revision
    #[arg(default_value = "head")]
    pub target: String,
    /// Print the SQL that would run, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Go on although an applied migration's up script (Alembic: revision file) changed since it ran
    #[arg(long)]
    pub allow_drift: bool,
    /// Put back the data of the pre-downgrade backup (latest, or a backup id) in the same
    /// transaction as the up steps
    #[arg(long, value_name = "latest|BACKUP_ID", num_args = 0..=1, default_missing_value = "latest")]
    pub restore: Option<String>,
    /// With --restore: leave this table of the backup out (repeatable)
    #[arg(long, value_name = "TABLE", requires = "restore")]
    pub restore_skip: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DowngradeArgs {
    /// -N, base, or a revision to end at
    #[arg(allow_hyphen_values = true)]
    pub target: String,
    /// Print the SQL that would run, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take a backup first (needs --allow-data-loss)
    #[arg(long, requires = "allow_data_loss")]
    pub no_backup: bool,
    /// Accept that the data the downgrade drops is gone for good (needs --no-backup)
    #[arg(long, requires = "no_backup")]
    pub allow_data_loss: bool,
    /// Go on although an applied migration's up script (Alembic: revision file) changed since it ran
    #[arg(long)]
    pub allow_drift: bool,
}

#[derive(Debug, Args)]
pub struct StampArgs {
    /// A revision, head or base
    pub target: String,
}

pub async fn current(ctx: &Ctx) -> anyhow::Result<Output> {
    let status = ctx.workspace()?.migrator()?.status().await?;
    let label = status.current_label();
    let json = serde_json::json!({
        "current": status.current,
        "head": status.head,
        "at_head": status.current.is_some() && status.current == status.head,
        "label": label,
        "drifted": status.drifted().iter().map(|e| &e.revision).collect::<Vec<_>>(),
    });
    Ok(Output {
        json,
        text: format!("{label}\n"),
        code: ExitCode::Success,
    })
}

pub async fn history(ctx: &Ctx) -> anyhow::Result<Output> {
    let status = ctx.workspace()?.migrator()?.status().await?;
    let mut text = String::new();
    if status.entries.is_empty() {
        text.push_str("no migrations\n");
    }
    let width = status
        .entries
        .iter()
        .map(|e| e.revision.len())
        .max()
        .unwrap_or(0);
    for e in &status.entries {
        let state = match e.state {
            EntryState::Applied => format!(
                "applied {} ({} ms)",
                e.applied_at.as_deref().unwrap_or("?"),
                e.duration_ms.unwrap_or(0)
            ),
            EntryState::Pending => "pending".to_string(),
            EntryState::Drifted => format!(
                "applied {}, DRIFT: changed since it was applied",
                e.applied_at.as_deref().unwrap_or("?")
            ),
            EntryState::Missing => "applied, MISSING: its migration folder is gone".to_string(),
        };
        let mut marks = Vec::new();
        if status.current.as_ref() == Some(&e.revision) {
            marks.push("current");
        }
        if status.head.as_ref() == Some(&e.revision) {
            marks.push("head");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" ({})", marks.join(", "))
        };
        text.push_str(&format!("{:width$}  {state}{marks}\n", e.revision));
    }
    Output::new(&status, text)
}

pub async fn upgrade(ctx: &Ctx, args: UpgradeArgs) -> anyhow::Result<Output> {
    let target: UpTarget = args.target.parse()?;
    let options = UpgradeOptions {
        target,
        dry_run: args.dry_run,
        allow_drift: args.allow_drift,
        restore: args.restore,
        restore_skip: args.restore_skip,
    };
    let migrator = ctx.workspace()?.migrator_with_store().await?;
    let report = run_upgrade(&migrator, &options, &ctx.op()).await?;
    let text = render(&report);
    Output::new(&report, text)
}

pub async fn downgrade(ctx: &Ctx, args: DowngradeArgs) -> anyhow::Result<Output> {
    let target: DownTarget = args.target.parse()?;
    if args.no_backup != args.allow_data_loss {
        return usage("--no-backup and --allow-data-loss go together");
    }
    let options = DowngradeOptions {
        target,
        dry_run: args.dry_run,
        allow_drift: args.allow_drift,
        allow_data_loss: args.allow_data_loss,
    };
    let migrator = ctx.workspace()?.migrator_with_store().await?;
    let report = run_downgrade(&migrator, &options, &ctx.op()).await?;
    let text = render(&report);
    Output::new(&report, text)
}

pub async fn stamp(ctx: &Ctx, args: StampArgs) -> anyhow::Result<Output> {
    let report = run_stamp(&ctx.workspace()?.migrator()?, &args.target, &ctx.op()).await?;
    let text = format!(
        "stamped {}: {} -> {} (no SQL was run)\n",
        report.database,
        report.previous.as_deref().unwrap_or("(none)"),
        report.current.as_deref().unwrap_or("(none)")
    );
    Output::new(&report, text)
}

fn render(report: &MigrateReport) -> String {
    let plan = &report.plan;
    let mut s = String::new();
    if plan.steps.is_empty() {
        s.push_str(&format!(
            "nothing to do: {} is at {}\n",
            report.database, report.current
        ));
        for n in &report.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        return s;
    }
    if report.dry_run {
        s.push_str(&format!(
            "dry run on {}: {} -> {}, {} step(s); nothing was changed\n",
            report.database,
            plan.from.as_deref().unwrap_or("(none)"),
            plan.to.as_deref().unwrap_or("(none)"),
            plan.steps.len()
        ));
        for step in &plan.steps {
            s.push_str(&format!(
                "\n-- {} ({}{})\n{}\n",
                step.revision,
                step.script.name,
                if step.no_transaction {
                    ", outside a transaction"
                } else {
                    ""
                },
                step.sql.trim_end()
            ));
        }
        render_protection(report, &mut s);
        for r in &report.would_restore {
            s.push_str(&format!(
                "would restore backup {} after {}: {}\n",
                r.backup_id,
                r.after,
                r.tables.join(", ")
            ));
        }
        for n in &report.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        return s;
    }
    render_protection(report, &mut s);
    for step in &report.applied {
        let verb = match step.direction {
            Direction::Up => "applied",
            Direction::Down => "reverted",
        };
        s.push_str(&format!(
            "{verb} {} ({} ms)\n",
            step.revision, step.duration_ms
        ));
    }
    for r in &report.restored {
        if r.tables.is_empty() {
            s.push_str(&format!("restored nothing from backup {}\n", r.backup_id));
        } else {
            s.push_str(&format!(
                "restored {} row(s) of {} from backup {}\n",
                r.rows,
                r.tables.join(", "),
                r.backup_id
            ));
        }
        if !r.skipped.is_empty() {
            s.push_str(&format!("  skipped: {}\n", r.skipped.join(", ")));
        }
        for w in &r.warnings {
            s.push_str(&format!("  note: {w}\n"));
        }
    }
    for n in &report.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s.push_str(&format!("current: {}\n", report.current));
    s
}

fn render_protection(report: &MigrateReport, s: &mut String) {
    let Some(p) = &report.protection else { return };
    if p.whole_schema {
        s.push_str(
            "a step cannot run in a transaction, so every table of every schema is backed up first\n",
        );
    }
    let at_risk: Vec<_> = p
        .losses
        .iter()
        .filter(|l| l.rows.unwrap_or(0) > 0)
        .collect();
    if at_risk.is_empty() && p.sequences.is_empty() && !p.whole_schema {
        s.push_str("the downgrade destroys no data, so it needs no backup\n");
    }
    if !at_risk.is_empty() || !p.sequences.is_empty() {
        let (gap, verb) = if report.dry_run {
            ("\n", "would")
        } else {
            ("", "did")
        };
        s.push_str(&format!("{gap}{verb} back up before the down SQL runs:\n"));
        for l in &at_risk {
            let what = match l.scope {
                Scope::Table => "whole table".to_string(),
                Scope::Columns => format!("primary key + {}", l.columns.join(", ")),
            };
            s.push_str(&format!(
                "  {}: {what} ({}), {} row(s), ~{}\n",
                l.display(),
                l.reason,
                l.rows.unwrap_or(0),
                human_bytes(l.estimated_bytes.max(0) as u64)
            ));
        }
        for seq in &p.sequences {
            s.push_str(&format!("  sequence {seq}: its state (dropped or reset)\n"));
        }
    }
    if report.dry_run && !p.locked.is_empty() {
        let bytes: i64 = at_risk.iter().map(|l| l.estimated_bytes.max(0)).sum();
        // Exports run at roughly 100 MiB of table a second here; say "about", not a promise.
        let secs = (bytes as f64 / (100.0 * 1024.0 * 1024.0)).ceil().max(1.0);
        s.push_str(&format!(
            "writes to {} will wait while the downgrade runs: about {secs:.0}s to back up ~{}, plus the down SQL itself\n",
            p.locked.join(", "),
            human_bytes(bytes as u64)
        ));
    }
    if let Some(id) = &p.backup_id {
        s.push_str(&format!(
            "backup {id} written before the downgrade committed\n"
        ));
    }
}
