//! The command line: argument definitions and one thin `run` per command.
//!
//! Each command turns its arguments into options, calls one library operation and returns
//! an [`Output`]: the same result as a JSON document (`--json`) and as text, plus the exit
//! code. Nothing here talks to PostgreSQL directly.

mod backup;
mod migrate;
mod rollback_test;
mod schema;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{process_env, Loaded};
use crate::db::Database;
use crate::error::{usage, ExitCode};
use crate::migrate::{Engine, MigrationSet};
use crate::store::Store;

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

/// Lazily loaded configuration, so commands that need none (`schema diff`) never fail on it.
pub struct Ctx {
    config_path: Option<PathBuf>,
    /// Progress bars allowed (not `--json`, not `-q`); they still need a terminal.
    interactive: bool,
}

impl Ctx {
    fn load(&self) -> anyhow::Result<Loaded> {
        Loaded::load(self.config_path.as_deref(), &process_env()?)
    }

    fn database(&self, loaded: &Loaded) -> anyhow::Result<Database> {
        let Some(url) = &loaded.config.database.url else {
            return usage(
                "no database configured: set [database] url in backstop.toml, or BACKSTOP_DATABASE_URL / DATABASE_URL (also read from .env)",
            );
        };
        Database::parse(&url.0, &loaded.config.database)
    }

    async fn store(&self, loaded: &Loaded) -> anyhow::Result<Store> {
        Store::open(&loaded.config.storage, |p| loaded.resolve(p)).await
    }

    fn migrations(&self, loaded: &Loaded) -> anyhow::Result<MigrationSet> {
        MigrationSet::load(&loaded.migrations_dir())
    }

    /// The engine for commands that only read or record revisions.
    fn engine(&self) -> anyhow::Result<Engine> {
        let loaded = self.load()?;
        Ok(Engine::new(
            self.database(&loaded)?,
            loaded.config.database.clone(),
            self.migrations(&loaded)?,
        ))
    }

    /// The engine with the backup store, for `upgrade` and `downgrade`. Opening an S3 store
    /// loads the AWS configuration (region and credential chains), which read-only commands
    /// should not wait for.
    async fn engine_with_store(&self) -> anyhow::Result<Engine> {
        let loaded = self.load()?;
        let store = self.store(&loaded).await?;
        Ok(self
            .engine()?
            .with_store(store, loaded.config.backup.clone()))
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Output> {
    let ctx = Ctx {
        config_path: cli.config.clone(),
        interactive: !cli.json && !cli.quiet,
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
    }
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
