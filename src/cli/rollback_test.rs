//! `rollback-test [--keep]`.

use clap::Args;

use backstop::error::ExitCode;
use backstop::ops::rollback_test::{run as run_procedure, CopySource, RollbackTestOptions};
use backstop::schema::Snapshot;

use super::{Ctx, Output};

#[derive(Debug, Args)]
pub struct RollbackTestArgs {
    /// Keep the scratch database afterwards, for inspection
    #[arg(long)]
    pub keep: bool,
    /// Generated rows per table for the data check (0 skips it)
    #[arg(long, default_value_t = 1000)]
    pub rows: u64,
    /// Leave a table out of the data check (repeatable), e.g. one only triggers may write
    #[arg(long = "rows-skip", value_name = "TABLE")]
    pub rows_skip: Vec<String>,
    /// Test on a copy of the real data instead of generated rows: a fresh backup of the
    /// configured database (`now`, the default), the newest backup in the store
    /// (`latest`), or a backup by id. The configured database is only read.
    #[arg(long, value_name = "now|latest|BACKUP_ID", num_args = 0..=1, default_missing_value = "now")]
    pub copy: Option<String>,
    /// Accept a kind of schema difference (repeatable)
    #[arg(long = "allow", value_enum, value_name = "WHAT")]
    pub allow: Vec<Allow>,
}

/// Schema differences `rollback-test` can be told to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Allow {
    /// Columns re-added at the end of their table after a down and up pair
    ColumnOrder,
}

pub async fn run(ctx: &Ctx, args: RollbackTestArgs) -> anyhow::Result<Output> {
    let ws = ctx.workspace()?;
    let db = ws.database()?;
    let set = ws.migrations()?;
    let expected_path = set.dir.join("schema.json");
    let expected = if expected_path.is_file() {
        Some(Snapshot::read(&expected_path)?)
    } else {
        None
    };
    let options = RollbackTestOptions {
        keep: args.keep,
        rows: args.rows,
        rows_skip: args.rows_skip,
        allow_column_order: args.allow.contains(&Allow::ColumnOrder),
        copy: args
            .copy
            .as_deref()
            .map(|c| c.parse().unwrap_or(CopySource::Now)),
    };
    let store = match &options.copy {
        Some(CopySource::Latest | CopySource::Backup(_)) => Some(ws.store().await?),
        _ => None,
    };
    let report = run_procedure(
        &db,
        &ws.config().database,
        &set,
        expected,
        &options,
        store.as_ref(),
        &ctx.op(),
    )
    .await?;
    let code = if report.passed() {
        ExitCode::Success
    } else {
        ExitCode::Verification
    };
    let text = report.render();
    Ok(Output::new(&report, text)?.with_code(code))
}
