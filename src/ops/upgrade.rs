//! `upgrade [TARGET] [--restore [latest|ID]]`: apply migrations, one transaction per step;
//! with `--restore`, the up steps and the data of the pre-downgrade backups that cover them
//! in one transaction, so schema and data come back together or not at all.

use anyhow::Context;
use tokio_postgres::{Client, Transaction};

use super::migration::{MigrateReport, Migrator, PlannedRestore, Restored};
use crate::backup::catalog::load_manifest;
use crate::backup::manifest::Kind;
use crate::context::OpContext;
use crate::error::usage;
use crate::ledger::Ledger;
use crate::migrate::reapply::{stages, Candidate, Stage};
use crate::migrate::{Direction, Target, UpTarget};
use crate::pg::PgContext;
use crate::restore::plan::plan;
use crate::restore::{load, RestoreMode};
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
    m.locked(ctx, async |client| {
        let target = Target::Up(options.target.clone());
        let mut report = m
            .prepare(client, &target, options.allow_drift, options.dry_run)
            .await?;
        if report.plan.steps.is_empty() {
            return Ok(report);
        }
        if options.dry_run {
            // The restore plan exists before anything runs, so a dry run can show it.
            if let Some(which) = &options.restore {
                let stages = restore_stages(m, client, &mut report, which).await?;
                let store = m.store()?;
                for stage in &stages {
                    if let Some(backup) = &stage.backup {
                        let manifest = load_manifest(store, &backup.backup_id).await?;
                        report.would_restore.push(PlannedRestore {
                            backup_id: manifest.id.clone(),
                            after: report.plan.steps[stage.last].revision.clone(),
                            tables: manifest.tables.iter().map(|t| manifest.label(t)).collect(),
                        });
                    }
                }
            }
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

/// Which open pre-downgrade backups load after which steps (`which`: `latest` or an id).
async fn restore_stages(
    m: &Migrator,
    client: &Client,
    report: &mut MigrateReport,
    which: &str,
) -> anyhow::Result<Vec<Stage>> {
    let store = m.store()?;
    let from = report.plan.from.clone();
    let records = m.ledger().downgrades_recorded(client).await?;
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
            "nothing to restore: no open pre-downgrade backup belongs at {}; the upgrade {} without restoring data",
            from.as_deref().unwrap_or("(none)"),
            if report.dry_run { "would run" } else { "ran" }
        ));
    }
    Ok(stages)
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
    let stages = restore_stages(m, client, &mut report, which).await?;
    let revisions: Vec<String> = report
        .plan
        .steps
        .iter()
        .map(|s| s.revision.clone())
        .collect();
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
    // Steps and restores run in as few transactions as the steps allow: all in one unless a
    // step must run outside any, which then runs alone between the transactions before and
    // after it. Each backup still loads right after the step that brings its schema back.
    let segments = segments(&report.plan.steps, &stages);
    let runner = m.runner(&ledger);
    let mut at = from.clone();
    let mut pending: Vec<&str> = stages
        .iter()
        .filter_map(|s| s.backup.as_ref().map(|b| b.backup_id.as_str()))
        .collect();
    let mut superseded = false;
    for (k, segment) in segments.iter().enumerate() {
        let stays_at = if at == from {
            format!(
                "the upgrade was rolled back; the database stays at revision {}",
                from.as_deref().unwrap_or("(none)")
            )
        } else {
            format!(
                "the database stays at revision {}, with the data of the backups before it restored; not restored yet: {} (`backstop backups list` shows them all; `backstop restore ID` loads one by hand)",
                at.as_deref().unwrap_or("(none)"),
                crate::migrate::layout::list(
                    &pending.iter().map(|id| id.to_string()).collect::<Vec<_>>()
                )
            )
        };
        let items = match segment {
            Segment::Together(items) => items,
            Segment::Alone(i) => {
                let step = &report.plan.steps[*i];
                let done = runner
                    .run(client, Direction::Up, step)
                    .await
                    .context(stays_at)?;
                report.applied.push(done);
                at = Some(step.revision.clone());
                continue;
            }
        };
        let tx = client.transaction().await.pg(|| "starting the upgrade")?;
        let mut reached = at.clone();
        let mut restored_here = Vec::new();
        for item in items {
            match item {
                Item::Step(i) => {
                    let step = &report.plan.steps[*i];
                    let done =
                        m.db.unless_cancelled(
                            ctx,
                            tx.cancel_token(),
                            runner.run_in(&tx, Direction::Up, step),
                        )
                        .await
                        .context(stays_at.clone())?;
                    report.applied.push(done);
                    reached = Some(step.revision.clone());
                }
                Item::Restore(id) => {
                    let earlier: Vec<String> = report
                        .restored
                        .iter()
                        .chain(&restored_here)
                        .flat_map(|r| r.tables.iter().cloned())
                        .collect();
                    let restored = load_backup(&ledger, &tx, store, id, skip, &earlier, ctx)
                        .await
                        .context(stays_at.clone())?;
                    restored_here.push(restored);
                }
            }
        }
        if k + 1 == segments.len() {
            ledger.supersede(&tx, &left).await?;
            superseded = true;
        }
        tx.commit()
            .await
            .pg(|| "committing the upgrade")
            .context(stays_at)?;
        pending.retain(|id| !restored_here.iter().any(|r| r.backup_id == *id));
        report.restored.extend(restored_here);
        at = reached;
    }
    if !superseded {
        ledger.supersede(&*client, &left).await?;
    }
    report.current = m.status_with(&*client).await?.current_label();
    Ok(report)
}

/// What runs in one transaction: steps, and the backups that load after them.
enum Segment<'a> {
    Together(Vec<Item<'a>>),
    /// A step that must run outside any transaction.
    Alone(usize),
}

enum Item<'a> {
    Step(usize),
    Restore(&'a str),
}

fn segments<'a>(steps: &[crate::migrate::PlannedStep], stages: &'a [Stage]) -> Vec<Segment<'a>> {
    let mut out: Vec<Segment> = Vec::new();
    // Set after a step that adds an enum value: PostgreSQL refuses rows that use a value
    // added in the same transaction, so that transaction commits before anything loads.
    let mut fenced = false;
    let together = |out: &mut Vec<Segment<'a>>, item: Item<'a>, fenced: &mut bool| {
        match out.last_mut() {
            Some(Segment::Together(items)) if !*fenced => items.push(item),
            _ => out.push(Segment::Together(vec![item])),
        }
        *fenced = false;
    };
    for stage in stages {
        for (i, step) in steps
            .iter()
            .enumerate()
            .take(stage.last + 1)
            .skip(stage.first)
        {
            if step.no_transaction {
                out.push(Segment::Alone(i));
            } else {
                together(&mut out, Item::Step(i), &mut fenced);
                fenced = adds_enum_value(&step.sql);
            }
        }
        if let Some(backup) = &stage.backup {
            together(&mut out, Item::Restore(&backup.backup_id), &mut fenced);
        }
    }
    out
}

/// Whether `sql` runs `ALTER TYPE … ADD VALUE`.
fn adds_enum_value(sql: &str) -> bool {
    crate::migrate::lexer::split(sql).iter().any(|st| {
        st.words.first().is_some_and(|w| w == "ALTER")
            && st.words.get(1).is_some_and(|w| w == "TYPE")
            && st
                .text(sql)
                .to_ascii_uppercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["ADD", "VALUE"])
    })
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
    earlier: &[String],
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
    let chosen = plan(&manifest, &[], skip)?;
    let loaded = load(
        tx,
        store,
        &manifest,
        &chosen,
        RestoreMode::SkipFilled,
        earlier,
        ctx,
    )
    .await
    .context("skip a table with --restore-skip TABLE")?;
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

#[cfg(test)]
mod tests {
    use super::adds_enum_value;

    #[test]
    fn a_step_that_adds_an_enum_value_is_told_apart() {
        assert!(adds_enum_value(
            "ALTER TYPE task_status ADD VALUE 'blocked' AFTER 'doing';"
        ));
        assert!(adds_enum_value(
            "-- x\nalter type \"S\".mood\n  add value if not exists 'ok'"
        ));
        assert!(!adds_enum_value("ALTER TYPE mood RENAME VALUE 'a' TO 'b';"));
        assert!(!adds_enum_value("SELECT 'ALTER TYPE x ADD VALUE';"));
        assert!(!adds_enum_value("ALTER TABLE t ADD COLUMN value int;"));
    }
}
