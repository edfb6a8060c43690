//! `upgrade [TARGET] [--restore [latest|ID]]`: apply migrations, one transaction per step;
//! with `--restore`, the up steps and the data of the pre-downgrade backups that cover them
//! in one transaction, so schema and data come back together or not at all.

use anyhow::Context;
use tokio_postgres::{Client, Transaction};

use super::migration::{MigrateReport, Migrator, Restored};
use crate::backup::manifest::Kind;
use crate::context::OpContext;
use crate::error::usage;
use crate::ledger::Ledger;
use crate::migrate::reapply::{stages, Candidate};
use crate::migrate::{Direction, Target, UpTarget};
use crate::pg::session::{EXPORT_SETTINGS, RESET_EXPORT_SETTINGS};
use crate::pg::PgContext;
use crate::restore::plan::plan;
use crate::restore::{load, load_manifest, RestoreMode};
use crate::store::Store;

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
    m.require_migrations("upgrade")?;
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
                // Every revision this upgrade moved on from, without putting data back.
                let mut left = vec![report.plan.from.clone()];
                let n = report.plan.steps.len();
                left.extend(report.plan.steps[..n - 1].iter().map(|s| Some(s.revision.clone())));
                let closed = m.ledger().supersede(&*client, &left).await?;
                if closed > 0 {
                    report.notes.push(format!(
                        "{closed} pre-downgrade backup(s) of the revisions this upgrade passed are closed: `upgrade --restore` will not take them; `backstop restore ID` still can"
                    ));
                }
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
    let from = report.plan.from.clone();
    let ledger = m.ledger();
    let records = ledger.downgrades_recorded(&*client).await?;
    let open: Vec<Candidate> = records
        .iter()
        .filter(|r| r.is_open())
        .map(|r| Candidate {
            backup_id: r.backup_id.clone(),
            from: r.from_revision.clone(),
            to: r.to_revision.clone(),
        })
        .collect();
    let explicit = match which {
        "latest" => None,
        id => {
            if let Some(r) = records.iter().find(|r| r.backup_id == id && !r.is_open()) {
                return usage(format!(
                    "the downgrade of backup {id} was {}, so --restore does not take it again; `backstop restore {id}` loads it by hand",
                    if r.restored { "already restored" } else { "superseded by a plain upgrade" }
                ));
            }
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
    if stages.iter().all(|s| s.backup.is_none()) {
        report.notes.push(format!(
            "nothing to restore: no open pre-downgrade backup belongs at {}; the upgrade ran without restoring data",
            from.as_deref().unwrap_or("(none)")
        ));
    }
    // Revisions this upgrade moves on from without putting their backup back.
    let left: Vec<Option<String>> = stages
        .iter()
        .filter(|s| s.backup.is_none())
        .map(|s| {
            if s.first == 0 {
                from.clone()
            } else {
                Some(revisions[s.first - 1].clone())
            }
        })
        .collect();
    let one_transaction = !report.plan.steps.iter().any(|s| s.no_transaction);
    let stays_at = format!(
        "the upgrade was rolled back; the database stays at revision {}",
        from.as_deref().unwrap_or("(none)")
    );
    if !one_transaction {
        // A no-transaction step cannot share a transaction with the data: the steps run
        // first, each as it always does, then the data loads in a transaction of its own.
        m.run_steps(client, &mut report).await?;
        let at = report.current.clone();
        let tx = client.transaction().await.pg(|| "starting the restore")?;
        for stage in &stages {
            if let Some(backup) = &stage.backup {
                let restored = load_backup(&ledger, &tx, store, &backup.backup_id, skip, ctx)
                    .await
                    .with_context(|| {
                        format!(
                            "the upgrade committed and the database is at {at}, but its data was not restored (a no-transaction step cannot share the data's transaction); backup {} still holds it: `backstop restore {}`",
                            backup.backup_id, backup.backup_id
                        )
                    })?;
                report.restored.push(restored);
            }
        }
        ledger.supersede(&tx, &left).await?;
        tx.commit().await.pg(|| "committing the restore")?;
        return Ok(report);
    }

    let runner = m.runner(&ledger);
    let tx = client.transaction().await.pg(|| "starting the upgrade")?;
    for stage in &stages {
        for step in &report.plan.steps[stage.first..=stage.last] {
            let done = runner
                .run_in(&tx, Direction::Up, step)
                .await
                .context(stays_at.clone())?;
            report.applied.push(done);
        }
        if let Some(backup) = &stage.backup {
            let restored = load_backup(&ledger, &tx, store, &backup.backup_id, skip, ctx)
                .await
                .context(stays_at.clone())?;
            report.restored.push(restored);
        }
    }
    ledger.supersede(&tx, &left).await?;
    tx.commit()
        .await
        .pg(|| "committing the upgrade")
        .context(stays_at)?;
    report.current = m.status_with(&*client).await?.current_label();
    Ok(report)
}

/// Loads one pre-downgrade backup into `tx` and closes its record. Tables that already
/// have rows (an up.sql that seeds them, a table a whole-schema downgrade left alone) are
/// left as they are and reported, never overwritten.
async fn load_backup(
    ledger: &Ledger,
    tx: &Transaction<'_>,
    store: &Store,
    backup_id: &str,
    skip: &[String],
    ctx: &OpContext,
) -> anyhow::Result<Restored> {
    let manifest = load_manifest(store, backup_id).await?;
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
    let loaded = load(tx, store, &manifest, &chosen, RestoreMode::SkipFilled, ctx)
        .await
        .context("skip a table with --restore-skip TABLE")?;
    tx.batch_execute(RESET_EXPORT_SETTINGS)
        .await
        .pg(|| "restoring the session settings")?;
    ledger.mark_restored(tx, &manifest.id).await?;
    let mut skipped: Vec<String> = chosen.skipped.iter().map(|t| manifest.label(t)).collect();
    skipped.extend(loaded.skipped.iter().cloned());
    Ok(Restored {
        backup_id: manifest.id.clone(),
        tables: loaded.tables.iter().map(|t| t.table.clone()).collect(),
        rows: loaded.rows(),
        skipped,
        warnings: loaded.warnings,
    })
}
