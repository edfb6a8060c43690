//! The command line: argument definitions and one thin `run` per command.
//!
//! Each command turns its arguments into options, calls one library operation and returns
//! an [`Output`]: the same result as a JSON document (`--json`) and as text, plus the exit
//! code. Nothing here talks to PostgreSQL or the store: operations do.

mod backup;
mod fmt;
pub mod log;
mod migrate;
mod progress;
mod rollback_test;
mod schema;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use backstop::context::{OpContext, Silent};
use backstop::error::ExitCode;
use backstop::ops::Workspace;
use clap::{Parser, Subcommand};

/// Backups before every destructive migration, and the data back after a re-upgrade.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default: ./backstop.toml, then /etc/backstop/backstop.toml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail on stderr (-vv for everything)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the current revision ("001_initial (head)", or "(none)")
    Current,
    /// List every migration, applied or pending, with checksum drift marked
    History,
    /// Apply migrations up to TARGET: head (default), +N or a revision
    Upgrade(migrate::UpgradeArgs),
    /// Revert migrations down to TARGET: -N, base or a revision
    Downgrade(migrate::DowngradeArgs),
    /// Record a revision (or head/base) as applied without running any SQL
    Stamp(migrate::StampArgs),
    /// Print the canonical schema snapshot, or compare two snapshots
    Schema(schema::SchemaArgs),
    /// Back up tables now (kind manual)
    Backup(backup::BackupArgs),
    /// List, show, verify or prune stored backups
    Backups(backup::BackupsArgs),
    /// Load a backup's tables back, all in one transaction
    Restore(backup::RestoreArgs),
    /// Run upgrade → downgrade → re-upgrade on a scratch database and check every step
    RollbackTest(rollback_test::RollbackTestArgs),
    /// Check the configuration: every problem at once (exit 2)
    Config(ConfigArgs),
    /// Run the [[schedule]] backups until Ctrl-C or SIGTERM
    Serve,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the whole configuration: values, schedules (cron, time zone), listen
    /// address, locations, and the tables named when the database answers
    Check,
}

/// What a command produced.
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
    pub code: ExitCode,
}

impl Output {
    fn new(value: &impl serde::Serialize, text: String) -> anyhow::Result<Output> {
        Ok(Output {
            json: serde_json::to_value(value)?,
            text,
            code: ExitCode::Success,
        })
    }

    fn with_code(mut self, code: ExitCode) -> Output {
        self.code = code;
        self
    }
}

/// What every command gets: where the configuration is (loaded only when a command needs
/// it, so `schema diff` never fails on it) and the operation's context.
pub struct Ctx {
    pub(crate) config_path: Option<PathBuf>,
    /// Progress bars allowed (not `--json`, not `-q`); they still need a terminal.
    interactive: bool,
    pub(crate) op: OpContext,
}

impl Ctx {
    fn workspace(&self) -> anyhow::Result<Workspace> {
        Workspace::load(self.config_path.as_deref())
    }

    /// The operation context, with a progress bar on stderr when that makes sense.
    fn op(&self) -> OpContext {
        if self.interactive {
            if let Some(bar) = progress::Bar::on_terminal() {
                return self.op.with_observer(Arc::new(bar));
            }
        }
        self.op.with_observer(Arc::new(Silent))
    }
}

/// Runs the parsed command line; `op` is cancelled by the caller on Ctrl-C or SIGTERM.
pub async fn run(cli: Cli, op: OpContext) -> anyhow::Result<Output> {
    let ctx = Ctx {
        config_path: cli.config.clone(),
        interactive: !cli.json && !cli.quiet,
        op,
    };
    match cli.command {
        Command::Current => migrate::current(&ctx).await,
        Command::History => migrate::history(&ctx).await,
        Command::Upgrade(args) => migrate::upgrade(&ctx, args).await,
        Command::Downgrade(args) => migrate::downgrade(&ctx, args).await,
        Command::Stamp(args) => migrate::stamp(&ctx, args).await,
        Command::Schema(args) => schema::run(&ctx, args).await,
        Command::Backup(args) => backup::backup(&ctx, args).await,
        Command::Backups(args) => backup::backups(&ctx, args).await,
        Command::Restore(args) => backup::restore(&ctx, args).await,
        Command::RollbackTest(args) => rollback_test::run(&ctx, args).await,
        Command::Serve => serve::run(&ctx).await,
        Command::Config(ConfigArgs {
            action: ConfigAction::Check,
        }) => config_check(&ctx).await,
    }
}

async fn config_check(ctx: &Ctx) -> anyhow::Result<Output> {
    let report = backstop::ops::config_check::check(ctx.config_path.as_deref()).await?;
    let mut text = String::new();
    for p in &report.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    for u in &report.unchecked {
        text.push_str(&format!("not checked: {u}\n"));
    }
    if report.ok() {
        text.push_str(&format!(
            "{}: configuration OK ({} schedule(s))\n",
            report.origin, report.schedules
        ));
    } else {
        text.push_str(&format!(
            "{}: {} problem(s)\n",
            report.origin,
            report.problems.len()
        ));
    }
    let code = if report.ok() {
        ExitCode::Success
    } else {
        ExitCode::Usage
    };
    Ok(Output::new(&report, text)?.with_code(code))
}

/// Resolves on Ctrl-C or SIGTERM, for commands that must clean up before exiting.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
