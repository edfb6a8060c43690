//! `downgrade TARGET`: revert migrations, backing up first what the down SQL destroys.
//!
//! Guarantee 1: plan (the down SQL in a savepoint, the catalog compared), lock what it
//! touches and plan again under the locks (the down SQL runs in a savepoint two or three
//! times before it runs for real: see `protect::plan`), export from that same transaction and write the manifest, then run the down
//! SQL and the bookkeeping, all in one transaction; any failure rolls everything back. A
//! step that cannot run in a transaction cannot be planned in a savepoint: then every table
//! of the schema is backed up first and the steps run one by one.

use anyhow::Context;
use tokio_postgres::Client;

use super::backup::{take, BackupOptions};
use super::migration::{MigrateReport, Migrator, Protection};
use crate::backup::manifest::Kind;
use crate::backup::{cleanup_bound, export_deferred, Leftovers, ManifestHeader};
use crate::context::OpContext;
use crate::error::{Kind as ErrorKind, WithKind};
use crate::migrate::{Direction, DownTarget, Target};
use crate::pg::PgContext;
use crate::protect;

/// What the user asked `downgrade` to do.
#[derive(Debug, Clone)]
pub struct DowngradeOptions {
    pub target: DownTarget,
    pub dry_run: bool,
    /// Go on although an applied `up.sql` changed since it ran.
    pub allow_drift: bool,
    /// Downgrade without a backup; the caller has said that losing the data is acceptable.
    pub allow_data_loss: bool,
}

/// Plans under the migration lock, backs up, then reverts; a dry run stops after planning.
pub async fn downgrade(
    m: &Migrator,
    options: &DowngradeOptions,
    ctx: &OpContext,
) -> anyhow::Result<MigrateReport> {
    m.locked(ctx, async |client| {
        let target = Target::Down(options.target.clone());
        let mut report = m
            .prepare(client, &target, options.allow_drift, options.dry_run)
            .await?;
        if report.plan.steps.is_empty() {
            return Ok(report);
        }
        let whole_schema = report.plan.steps.iter().any(|s| s.no_transaction);
        if !options.allow_data_loss && !whole_schema {
            // The plan is found inside the downgrade's transaction, under its locks; a dry
            // run prints it and rolls back.
            return protected(m, client, report, ctx).await;
        }
        if options.dry_run {
            report.protection = (!options.allow_data_loss).then(|| Protection {
                whole_schema: true,
                ..Protection::default()
            });
            return Ok(report);
        }
        if !options.allow_data_loss {
            return after_full_backup(m, client, report, ctx).await;
        }
        m.ledger().ensure(&*client).await?;
        m.run_steps(client, &mut report).await?;
        Ok(report)
    })
    .await
}

/// Why a failed backup refuses the downgrade, kept as the outermost kind over the cause;
/// an interrupted backup stays an interruption.
fn backup_failed(e: anyhow::Error) -> anyhow::Error {
    if crate::error::kind_of(&e) == ErrorKind::Interrupted {
        return e.context("the downgrade was interrupted while backing up; nothing was changed");
    }
    e.context(crate::error::Error::new(
        ErrorKind::Refused,
        "the downgrade was refused because its backup failed; nothing was changed",
    ))
}

/// Rolls a failed downgrade back now, so its locks are gone before anything else is waited
/// for. A rollback that does not end soon is left to the connection's end (the server then
/// rolls back itself).
async fn release(tx: tokio_postgres::Transaction<'_>) {
    match tokio::time::timeout(ROLLBACK_WAIT, tx.rollback()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("rolling the downgrade back: {e}"),
        Err(_) => tracing::warn!(
            "the rollback of the downgrade did not end within {}s; the locks go with the connection",
            ROLLBACK_WAIT.as_secs()
        ),
    }
}

/// How long a rollback may take before the connection is closed instead.
const ROLLBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn protected(
    m: &Migrator,
    client: &mut Client,
    mut report: MigrateReport,
    ctx: &OpContext,
) -> anyhow::Result<MigrateReport> {
    let store = m.store()?;
    let schema = m.settings.schema.clone();
    let ledger = m.ledger();
    if !report.dry_run {
        if let Err(e) = ctx.unless_cancelled(store.check()).await {
            if crate::error::kind_of(&e) == ErrorKind::Interrupted {
                return Err(e);
            }
            return Err(e.context(crate::error::Error::new(
                ErrorKind::Refused,
                format!(
                    "the downgrade needs a usable backup store and {} is not; nothing was changed",
                    store.describe()
                ),
            )));
        }
        ledger.ensure(&*client).await?;
    }
    let from = report.plan.from.clone();
    let stays_at = format!(
        "the downgrade was rolled back; the database stays at revision {}",
        from.as_deref().unwrap_or("(none)")
    );
    let tx = client.transaction().await.pg(|| "starting the downgrade")?;
    // A lock wait (or a long down SQL) ends when the run is cancelled, and with it the
    // locks the transaction holds.
    let token = tx.cancel_token();
    let planned =
        m.db.unless_cancelled(ctx, token.clone(), protect::plan(&tx, &report.plan.steps))
            .await
            .context(stays_at.clone())?;
    let mut protection = Protection {
        losses: planned.losses.clone(),
        sequences: planned.sequences.clone(),
        locked: planned.locked.clone(),
        backup_id: None,
        whole_schema: false,
    };
    if report.dry_run {
        report.protection = Some(protection);
        return Ok(report); // dropping the transaction rolls it back
    }
    if !planned.needs_backup() {
        tracing::info!("the downgrade destroys no rows, so it needs no backup");
    } else {
        let header = ManifestHeader {
            kind: Kind::PreDowngrade,
            label: None,
            schema: schema.clone(),
            revision: from.clone(),
            target_revision: report.plan.to.clone(),
            zstd_level: m.backup.zstd_level,
            sequences: planned.export_sequences,
        };
        let leftovers = Leftovers::new();
        let exported = export_deferred(
            &tx,
            &m.db,
            None,
            store,
            header,
            &planned.export,
            &leftovers,
            ctx,
        )
        .await;
        let manifest = match exported {
            Ok(manifest) => manifest,
            Err(e) => {
                // Writers wait for the failure, not for the clean-up: the locks go first,
                // then the partial upload (a request to the store that just failed).
                release(tx).await;
                let what = leftovers.clean(store, cleanup_bound(store, ctx)).await;
                return Err(backup_failed(e.context(what)));
            }
        };
        tracing::info!(
            "backed up {} table(s) as {}",
            planned.export.len(),
            manifest.id
        );
        protection.backup_id = Some(manifest.id);
    }
    let runner = m.runner(&ledger);
    for step in &report.plan.steps {
        let done =
            m.db.unless_cancelled(
                ctx,
                token.clone(),
                runner.run_in(&tx, Direction::Down, step),
            )
            .await
            .context(stays_at.clone())?;
        report.applied.push(done);
    }
    if let Some(id) = &protection.backup_id {
        ledger
            .record_downgrade(&tx, id, from.as_deref(), report.plan.to.as_deref())
            .await?;
    }
    tx.commit()
        .await
        .pg(|| "committing the downgrade")
        .context(stays_at)?;
    report.protection = Some(protection);
    report.current = m.status_with(&*client).await?.current_label();
    Ok(report)
}

async fn after_full_backup(
    m: &Migrator,
    client: &mut Client,
    mut report: MigrateReport,
    ctx: &OpContext,
) -> anyhow::Result<MigrateReport> {
    let store = m.store()?;
    let names: Vec<&str> = report
        .plan
        .steps
        .iter()
        .filter(|s| s.no_transaction)
        .map(|s| s.revision.as_str())
        .collect();
    tracing::warn!(
        "{} cannot run in a transaction (backstop:no-transaction), so every table of every schema is backed up first; writes committed between that backup and the downgrade are not in it",
        names.join(", ")
    );
    let options = BackupOptions {
        kind: Kind::PreDowngrade,
        tables: Vec::new(),
        label: None,
        target_revision: report.plan.to.clone(),
        every_schema: true,
    };
    let every_table = crate::config::BackupConfig {
        tables: Vec::new(),
        ..m.backup.clone()
    };
    let manifest = take(
        &m.db,
        &m.settings,
        &every_table,
        store,
        &options,
        Some(&m.set),
        ctx,
    )
    .await
    .map_err(backup_failed)?;
    let ledger = m.ledger();
    ledger.ensure(&*client).await?;
    let runner = m.runner(&ledger);
    let from = report.plan.from.clone();
    for step in &report.plan.steps {
        let done = runner.run(client, Direction::Down, step).await;
        let reached = m.status_with(&*client).await?.current;
        if reached != from {
            // Every step that committed is on record with the backup, so `upgrade
            // --restore` brings their data back even when a later step fails.
            ledger
                .record_downgrade(&*client, &manifest.id, from.as_deref(), reached.as_deref())
                .await
                .kind(ErrorKind::Internal, || {
                    format!(
                        "the downgrade ran but its backup {} could not be recorded; `backstop restore {}` still brings the data back",
                        manifest.id, manifest.id
                    )
                })?;
        }
        match done {
            Ok(done) => report.applied.push(done),
            Err(e) => {
                let at = reached.as_deref().unwrap_or("(none)");
                let recorded = if reached != from {
                    format!("backup {} is recorded for the steps that committed, so `backstop upgrade --restore` brings their data back", manifest.id)
                } else {
                    format!("no step committed; backup {} was not needed", manifest.id)
                };
                return Err(e.context(format!(
                    "the downgrade stopped at revision {at}; {recorded}"
                )));
            }
        }
    }
    report.protection = Some(Protection {
        backup_id: Some(manifest.id),
        whole_schema: true,
        ..Protection::default()
    });
    report.current = m.status_with(&*client).await?.current_label();
    Ok(report)
}
