//! `schema [--json]` and `schema diff A.json B.json`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use backstop::error::ExitCode;
use backstop::ops::schema::{diff, snapshot};

use super::{Ctx, Output};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    pub action: Option<SchemaAction>,
}

#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Compare two snapshots written by `schema --json` (exit 3 when they differ)
    Diff { a: PathBuf, b: PathBuf },
}

pub async fn run(ctx: &Ctx, args: SchemaArgs) -> anyhow::Result<Output> {
    match args.action {
        None => {
            let ws = ctx.workspace()?;
            let snap = snapshot(&ws.database()?, &ws.config().database).await?;
            let text = snap.render();
            Output::new(&snap, text)
        }
        Some(SchemaAction::Diff { a, b }) => {
            let changes = diff(&a, &b)?;
            let mut text = String::new();
            if changes.is_empty() {
                text.push_str(&format!(
                    "{} and {} are identical\n",
                    a.display(),
                    b.display()
                ));
            } else {
                text.push_str(&format!(
                    "--- {}\n+++ {}\n{} difference(s):\n",
                    a.display(),
                    b.display(),
                    changes.len()
                ));
                for c in &changes {
                    text.push_str(&format!("{c}\n"));
                }
            }
            let json = serde_json::json!({
                "a": a, "b": b, "identical": changes.is_empty(), "changes": changes,
            });
            let code = if changes.is_empty() {
                ExitCode::Success
            } else {
                ExitCode::Verification
            };
            Ok(Output { json, text, code })
        }
    }
}
