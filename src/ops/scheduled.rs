//! One scheduled slot: claimed in the database so that exactly one instance runs it, backed
//! up (kind `scheduled`), then retention applied; the outcome recorded with the slot.
//! The daemon's loop calls this; it holds no loop of its own.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup::{back_up, BackupOptions};
use super::prune::prune;
use super::Workspace;
use crate::backup::manifest::Kind;
use crate::config::CatchUp;
use crate::context::OpContext;
use crate::ledger::{Ledger, LostSlot, SlotState};
use crate::schedule::Schedule;

/// The most missed slots one start records one by one.
const MISSED_RECORDED: usize = 1000;

/// How often an instance running a slot says so in the slots table.
pub const SLOT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running slot whose instance has not said so for this long is lost with its instance.
pub const SLOT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Marks a failure that happened before the slot was on record (the database did not
/// answer): the caller records it once the database answers again.
#[derive(Debug)]
pub struct NotRecorded;

impl std::fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the slot could not be put on record")
    }
}

/// What running a slot did.
#[derive(Debug, Clone, Serialize)]
pub enum SlotOutcome {
    /// Another instance had already taken the slot.
    TakenElsewhere,
    /// Backed up (and retention applied).
    Done {
        backup_id: String,
        rows: u64,
        bytes: u64,
        pruned: usize,
        /// Complete backups left in the store after retention.
        kept: usize,
        /// Why the slot's row could not be marked done, when it could not (the backup is
        /// there all the same).
        recorded: Option<String>,
    },
}

/// Claims `slot` of `schedule` for `instance` (with `rerun`, takes it back from an instance
/// that died running it) and, if it was free, calls `started` and backs up and prunes,
/// beating every [`SLOT_HEARTBEAT`] meanwhile. A failure is recorded with the slot and
/// returned; one before the slot is on record carries [`NotRecorded`].
pub async fn run_slot(
    ws: &Workspace,
    schedule: &Schedule,
    slot: DateTime<Utc>,
    instance: &str,
    rerun: bool,
    ctx: &OpContext,
    started: impl FnOnce(),
) -> anyhow::Result<SlotOutcome> {
    let config = ws.config();
    let ledger = Ledger::new(&config.database.schema);
    let claim = async {
        let client = ws.database()?.connect().await?;
        ledger.ensure_slots(&client).await?;
        let claimed = if rerun {
            ledger
                .reclaim_lost(&client, &schedule.name, slot, instance)
                .await?
        } else {
            ledger
                .claim_slot(&client, &schedule.name, slot, instance, SlotState::Running)
                .await?
        };
        anyhow::Ok((client, claimed))
    };
    let (client, claimed) = claim.await.map_err(|e| e.context(NotRecorded))?;
    if !claimed {
        return Ok(SlotOutcome::TakenElsewhere);
    }
    started();
    let beating = async {
        loop {
            tokio::time::sleep(SLOT_HEARTBEAT).await;
            if let Err(e) = ledger.beat_slot(&client, &schedule.name, slot).await {
                tracing::warn!("schedule {}: {e:#}", schedule.name);
            }
        }
    };
    // Scheduled backups and migrations never interleave: both hold the migration lock.
    let work = async {
        let options = BackupOptions {
            kind: Kind::Scheduled,
            tables: schedule.tables.clone(),
            label: Some(schedule.label.clone()),
            target_revision: None,
            every_schema: false,
        };
        let store = ws.store().await?;
        let manifest = back_up(ws, &*store, &options, ctx).await?;
        let plan = prune(
            &*store,
            &config.retention,
            false,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        anyhow::Ok(SlotOutcome::Done {
            rows: manifest.rows(),
            bytes: manifest.compressed_bytes(),
            backup_id: manifest.id,
            pruned: plan.remove.len(),
            kept: plan.keep.len(),
            recorded: None,
        })
    };
    let mut work = tokio::select! {
        biased;
        w = work => w,
        never = beating => never,
    };
    match &mut work {
        Ok(SlotOutcome::Done {
            backup_id,
            recorded,
            ..
        }) => {
            // The backup exists: a record that cannot be written is reported apart, never
            // as a failed backup.
            if let Err(e) = ledger
                .finish_slot(
                    &client,
                    &schedule.name,
                    slot,
                    SlotState::Done,
                    Some(backup_id),
                    None,
                )
                .await
            {
                *recorded = Some(format!("{e:#}"));
            }
        }
        Ok(SlotOutcome::TakenElsewhere) => {}
        Err(e) => {
            ledger
                .finish_slot(
                    &client,
                    &schedule.name,
                    slot,
                    SlotState::Failed,
                    None,
                    Some(&format!("{e:#}")),
                )
                .await?
        }
    }
    work
}

/// Records as missed the slots of `schedule` after `slot` and up to `until` that no instance
/// took while this one was running `slot`; returns them, oldest first.
pub async fn record_overrun(
    ws: &Workspace,
    schedule: &Schedule,
    slot: DateTime<Utc>,
    until: DateTime<Utc>,
    instance: &str,
    why: &str,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let db = ws.database()?;
    let client = db.connect().await?;
    let passed = schedule.slots_between(slot, until, MISSED_RECORDED);
    Ledger::new(&ws.config().database.schema)
        .claim_missed(&client, &schedule.name, &passed, instance, why)
        .await
}

/// Records the slots of `schedule` that passed while no instance ran, from the last one on
/// record up to `now`, and returns them, oldest first. With `catch_up = "latest"` the latest
/// of them is not recorded but returned apart, for the caller to run.
pub async fn record_missed(
    ws: &Workspace,
    schedule: &Schedule,
    now: DateTime<Utc>,
    instance: &str,
) -> anyhow::Result<(Vec<DateTime<Utc>>, Option<DateTime<Utc>>)> {
    let db = ws.database()?;
    let client = db.connect().await?;
    let ledger = Ledger::new(&ws.config().database.schema);
    ledger.ensure_slots(&client).await?;
    let Some(last) = ledger.last_slot(&client, &schedule.name).await? else {
        return Ok((Vec::new(), None)); // a new schedule missed nothing
    };
    let Some(latest) = schedule.latest_at_or_before(now).filter(|l| *l > last) else {
        return Ok((Vec::new(), None));
    };
    // Each passed slot is recorded, up to a bound (a schedule of every second down for a
    // year must not write millions of rows); the latest is always among them.
    let mut passed = schedule.slots_between(last, latest, MISSED_RECORDED);
    if passed.last() != Some(&latest) {
        passed.push(latest);
    }
    let latest = match schedule.catch_up {
        CatchUp::Latest => passed.pop(),
        CatchUp::None => None,
    };
    let missed = ledger
        .claim_missed(
            &client,
            &schedule.name,
            &passed,
            instance,
            "passed while no instance ran",
        )
        .await?;
    Ok((missed, latest))
}

/// Marks the slots of `schedule` whose instance died running them as failed
/// (`instance_lost`) and returns them, oldest first.
pub async fn reap_lost(ws: &Workspace, schedule: &Schedule) -> anyhow::Result<Vec<LostSlot>> {
    let client = ws.database()?.connect().await?;
    let ledger = Ledger::new(&ws.config().database.schema);
    ledger.ensure_slots(&client).await?;
    ledger
        .reap_lost(&client, &schedule.name, SLOT_LOST_AFTER)
        .await
}

/// Puts on record, as failed, slots that failed while the database did not answer;
/// slots another instance recorded meanwhile keep that record.
pub async fn record_failed(
    ws: &Workspace,
    schedule: &Schedule,
    failed: &[(DateTime<Utc>, String)],
    instance: &str,
) -> anyhow::Result<()> {
    let client = ws.database()?.connect().await?;
    let ledger = Ledger::new(&ws.config().database.schema);
    ledger.ensure_slots(&client).await?;
    for (slot, error) in failed {
        if ledger
            .claim_slot(&client, &schedule.name, *slot, instance, SlotState::Failed)
            .await?
        {
            ledger
                .finish_slot(
                    &client,
                    &schedule.name,
                    *slot,
                    SlotState::Failed,
                    None,
                    Some(error),
                )
                .await?;
        }
    }
    Ok(())
}
