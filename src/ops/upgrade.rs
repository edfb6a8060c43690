//! `upgrade [TARGET] [--restore [latest|ID]]`: apply migrations, one transaction per step;
//! with `--restore`, the up steps and the data of the pre-downgrade backups that cover them
//! in one transaction, so schema and data come back together or not at all.

use anyhow::Context;
use tokio_postgres::Client;

use super::migration::{MigrateReport, Migrator, Restored};
use crate::backup::manifest::Kind;
use crate::context::OpContext;
use crate::error::usage;
use crate::migrate::reapply::{stages, Candidate};
use crate::migrate::{Direction, Target, UpTarget};
use crate::pg::session::{EXPORT_SETTINGS, RESET_EXPORT_SETTINGS};
use crate::pg::PgContext;
use crate::restore::plan::plan;
use crate::restore::{load, load_manifest, RestoreMode};

/// What the user asked `upgrade` to do.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub target: UpTarget,
    pub dry_run: bool,
    /// Go on although an applied `up.sql` changed since it ran.
    pub allow_drift: bool,
    /// `--restore`: `latest`, or a backup id.
    pub restore: Option<String>,
    /// Tables of the backups to leave out of `--restore`.
    pub restore_skip: Vec<String>,
}

/// Plans under the migration lock, then applies; a dry run stops after planning.
pub async fn upgrade(
    m: &Migrator,
    options: &UpgradeOptions,
    ctx: &OpContext,
) -> anyhow::Result<MigrateReport> {
    m.locked(async |client| {
        let target = Target::Up(options.target.clone());
        let mut report = m
            .prepare(client, &target, options.allow_drift, options.dry_run)
            .await?;
        if options.dry_run || report.plan.steps.is_empty() {
            return Ok(report);
        }
        m.ledger().ensure(&*client).await?;
        match &options.restore {
            Some(which) => with_restore(m, client, report, which, &options.restore_skip, ctx).await,
            None => {
                m.run_steps(client, &mut report).await?;
                Ok(report)
            }
        }
    })
    .await
}

async fn with_restore(
    m: &Migrator,
    client: &mut Client,
    mut report: MigrateReport,
    which: &str,
    skip: &[String],
    ctx: &OpContext,
) -> anyhow::Result<MigrateReport> {
    let store = m.store()?;
    if let Some(s) = report.plan.steps.iter().find(|s| s.no_transaction) {
        return usage(format!(
            "{} cannot run in a transaction, so --restore cannot load the data in the same transaction; upgrade past it first",
            s.revision
        ));
    }
    let from = report.plan.from.clone();
    let stays_at = format!(
        "the upgrade was rolled back; the database stays at revision {}",
        from.as_deref().unwrap_or("(none)")
    );
    let ledger = m.ledger();
    let open: Vec<Candidate> = ledger
        .downgrades_recorded(&*client)
        .await?
        .into_iter()
        .filter(|r| !r.restored)
        .map(|r| Candidate {
            backup_id: r.backup_id,
            from: r.from_revision,
            to: r.to_revision,
        })
        .collect();
    let explicit = match which {
        "latest" => None,
        id => {
            let manifest = load_manifest(store, id).await?;
            Some(Candidate {
                backup_id: manifest.id,
                from: manifest.revision,
                to: manifest.target_revision,
            })
        }
    };
    let revisions: Vec<String> = report
        .plan
        .steps
        .iter()
        .map(|s| s.revision.clone())
        .collect();
    let stages = stages(&revisions, from.as_deref(), &open, explicit.as_ref())?;

    let runner = m.runner(&ledger);
    let tx = client.transaction().await.pg(|| "starting the upgrade")?;
    for stage in stages {
        for step in &report.plan.steps[stage.first..=stage.last] {
            let done = runner
                .run_in(&tx, Direction::Up, step)
                .await
                .context(stays_at.clone())?;
            report.applied.push(done);
        }
        let Some(backup) = stage.backup else { continue };
        let manifest = load_manifest(store, &backup.backup_id).await?;
        if manifest.kind != Kind::PreDowngrade {
            return usage(format!(
                "backup {} is a {} backup, not one taken before a downgrade; use `backstop restore {}`",
                manifest.id,
                manifest.kind.as_str(),
                manifest.id
            ));
        }
        tx.batch_execute(EXPORT_SETTINGS)
            .await
            .pg(|| "pinning the restore settings")?;
        let chosen = plan(&manifest, &[], skip)?;
        let loaded = load(&tx, store, &manifest, &chosen, RestoreMode::Fail, ctx)
            .await
            .context("skip a table with --restore-skip TABLE")
            .context(stays_at.clone())?;
        tx.batch_execute(RESET_EXPORT_SETTINGS)
            .await
            .pg(|| "restoring the session settings")?;
        ledger.mark_restored(&tx, &manifest.id).await?;
        report.restored.push(Restored {
            backup_id: manifest.id.clone(),
            tables: chosen.tables().map(|t| t.name.clone()).collect(),
            rows: loaded.rows(),
            skipped: chosen.skipped.iter().map(|t| t.name.clone()).collect(),
            warnings: loaded.warnings,
        });
    }
    tx.commit()
        .await
        .pg(|| "committing the upgrade")
        .context(stays_at)?;
    report.current = m.status_with(&*client).await?.current_label();
    Ok(report)
}
