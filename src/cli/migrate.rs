//! `current`, `history`, `upgrade`, `downgrade`, `stamp`.

use clap::Args;

use super::{Ctx, Output};
use crate::error::usage;
use crate::migrate::engine::{Direction, EntryState};
use crate::migrate::{DownTarget, MigrateReport, MigrateRequest, Target, UpTarget};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// head (default), +N, or a revision
    #[arg(default_value = "head")]
    pub target: String,
    /// Print the SQL that would run, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Go on although an applied up.sql changed since it ran
    #[arg(long)]
    pub allow_drift: bool,
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
    /// Go on although an applied up.sql changed since it ran
    #[arg(long)]
    pub allow_drift: bool,
}

#[derive(Debug, Args)]
pub struct StampArgs {
    /// A revision, head or base
    pub target: String,
}

pub async fn current(ctx: &Ctx) -> anyhow::Result<Output> {
    let status = ctx.engine()?.status().await?;
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
        code: crate::error::ExitCode::Success,
    })
}

pub async fn history(ctx: &Ctx) -> anyhow::Result<Output> {
    let status = ctx.engine()?.status().await?;
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
                "applied {}, DRIFT: up.sql changed since it was applied",
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
    let report = ctx
        .engine()?
        .migrate(&MigrateRequest {
            target: Target::Up(target),
            dry_run: args.dry_run,
            allow_drift: args.allow_drift,
            allow_data_loss: false,
        })
        .await?;
    let text = render(&report);
    Output::new(&report, text)
}

pub async fn downgrade(ctx: &Ctx, args: DowngradeArgs) -> anyhow::Result<Output> {
    let target: DownTarget = args.target.parse()?;
    if args.no_backup != args.allow_data_loss {
        return usage("--no-backup and --allow-data-loss go together");
    }
    let report = ctx
        .engine()?
        .migrate(&MigrateRequest {
            target: Target::Down(target),
            dry_run: args.dry_run,
            allow_drift: args.allow_drift,
            allow_data_loss: args.allow_data_loss,
        })
        .await?;
    let text = render(&report);
    Output::new(&report, text)
}

pub async fn stamp(ctx: &Ctx, args: StampArgs) -> anyhow::Result<Output> {
    let report = ctx.engine()?.stamp(&args.target).await?;
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
    let file = match plan.direction {
        Direction::Up => "up.sql",
        Direction::Down => "down.sql",
    };
    let mut s = String::new();
    if plan.steps.is_empty() {
        s.push_str(&format!(
            "nothing to do: {} is at {}\n",
            report.database, report.current
        ));
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
                "\n-- {} ({file}{})\n{}\n",
                step.revision,
                if step.no_transaction {
                    ", outside a transaction"
                } else {
                    ", in one transaction"
                },
                step.sql.trim_end()
            ));
        }
        return s;
    }
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
    s.push_str(&format!("current: {}\n", report.current));
    s
}
