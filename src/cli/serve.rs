//! `serve`: the daemon's scheduler. Each `[[schedule]]` gets a loop that sleeps until its
//! next slot (in steps, so a changed clock is noticed) and runs it through the same backup
//! and retention operations as the command line; the database decides which instance runs
//! a slot. Ctrl-C or SIGTERM cancels the operation context: nothing new starts, a running
//! backup stops cleanly (upload aborted, no manifest), and `serve` exits 0.

use std::sync::Arc;
use std::time::Duration;

use backstop::context::OpContext;
use backstop::error::{usage, ExitCode};
use backstop::ops::scheduled::{record_missed, run_slot, SlotOutcome};
use backstop::ops::Workspace;
use backstop::schedule::Schedule;
use chrono::Utc;

use super::{Ctx, Output};

/// The longest single sleep: a clock that jumps is noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    let ws = Arc::new(ctx.workspace()?);
    let mut schedules = Vec::new();
    for s in &ws.config().schedules {
        match Schedule::parse(s) {
            Ok(s) => schedules.push(s),
            Err(e) => return usage(e),
        }
    }
    if schedules.is_empty() {
        return usage("serve has nothing to do: the configuration has no [[schedule]]; add one (see config/backstop.example.toml)");
    }
    let instance = format!("{}:{}", hostname(), std::process::id());
    let op = ctx.op.clone();
    tracing::info!(
        "serving {} schedule(s) as instance {instance}",
        schedules.len()
    );
    let mut tasks = Vec::new();
    for schedule in schedules {
        let (ws, op, instance) = (ws.clone(), op.child(), instance.clone());
        tasks.push(tokio::spawn(async move {
            schedule_loop(&ws, &schedule, &instance, &op).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(Output {
        json: serde_json::json!({ "stopped": true }),
        text: String::new(),
        code: ExitCode::Success,
    })
}

async fn schedule_loop(ws: &Workspace, schedule: &Schedule, instance: &str, op: &OpContext) {
    match record_missed(ws, schedule, Utc::now(), instance).await {
        Ok(missed) if !missed.is_empty() => tracing::warn!(
            "schedule {}: {} slot(s) passed while no instance ran (the latest {}); they are recorded as missed",
            schedule.name,
            missed.len(),
            missed.last().map(|t| t.to_rfc3339()).unwrap_or_default()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("schedule {}: could not check for missed slots: {e:#}", schedule.name),
    }
    let mut after = Utc::now();
    while !op.is_cancelled() {
        let Some(slot) = schedule.next_after(after) else {
            tracing::warn!("schedule {} has no future slot; it stops", schedule.name);
            return;
        };
        // Sleep until the slot, in bounded steps, or until cancelled.
        loop {
            let now = Utc::now();
            if now >= slot {
                break;
            }
            let wait = (slot - now).to_std().unwrap_or_default().min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = op.cancelled() => return,
            }
        }
        after = slot;
        let started = std::time::Instant::now();
        match run_slot(ws, schedule, slot, instance, op).await {
            Ok(SlotOutcome::TakenElsewhere) => {
                tracing::debug!("schedule {}: slot {slot} is run by another instance", schedule.name)
            }
            Ok(SlotOutcome::Done { backup_id, rows, bytes, pruned }) => tracing::info!(
                "schedule {}: slot {slot} backed up as {backup_id} ({rows} rows, {bytes} bytes stored, {:.1}s); retention removed {pruned} backup(s)",
                schedule.name,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => tracing::error!(
                "schedule {}: slot {slot} failed: {e:#}; the next slot tries again",
                schedule.name
            ),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
