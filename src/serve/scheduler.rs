//! The daemon's schedule loops. Each `[[schedule]]` gets a loop that sleeps until its next slot
//! (in bounded steps, so a changed clock is noticed), runs it through the same backup and
//! retention operations as the command line, and only then looks for the next slot: a
//! schedule never overlaps itself, and slots that pass while a run is still going are recorded
//! as missed rather than run in a burst. The database decides which instance runs a slot.
//!
//! A reload retires the loops (each finishes the slot it is running, then ends) and starts new
//! ones; a shutdown cancels the operation context, which also stops a running backup cleanly.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::clock::{Clock, Pauses};
use crate::context::OpContext;
use crate::ops::scheduled::{
    reap_lost, record_failed, record_missed, record_overrun, run_slot, NotRecorded, SlotOutcome,
};
use crate::ops::Workspace;
use crate::schedule::Schedule;
use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::webhook::Webhooks;

/// The longest single sleep: a clock that jumps is noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Slots younger than this, passed during a run, are left to another instance that may be
/// taking them right now; older ones nobody took are recorded as missed.
const OVERRUN_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// The most failed slots a loop keeps to put on record once the database answers again.
const UNRECORDED_KEPT: usize = 1000;

/// A schedule loop's sign of life, for the watchdog.
#[derive(Default)]
pub struct Heartbeat {
    /// Unix seconds of the loop's last wake.
    at: AtomicI64,
    /// A slot is running (a long backup is not a hang).
    running: AtomicBool,
}

impl Heartbeat {
    fn beat(&self, clock: &dyn Clock) {
        self.at.store(clock.now().timestamp(), Ordering::Relaxed);
    }

    fn alive(&self, clock: &dyn Clock) -> bool {
        self.running.load(Ordering::Relaxed)
            || clock.now().timestamp() - self.at.load(Ordering::Relaxed)
                <= 2 * MAX_SLEEP.as_secs() as i64
    }
}

/// What every loop shares.
#[derive(Clone)]
pub struct Shared {
    pub instance: String,
    pub metrics: Arc<Metrics>,
    /// The time the schedules run by.
    pub clock: Arc<dyn Clock>,
}

struct Loop {
    name: String,
    retire: CancellationToken,
    beat: Arc<Heartbeat>,
    task: JoinHandle<()>,
}

/// The running schedule loops, including retired ones still finishing a slot.
pub struct Scheduler {
    shared: Shared,
    op: OpContext,
    loops: Arc<Mutex<Vec<Loop>>>,
    /// Seen by every loop, so slots missed in a pause are not blamed on the schedule.
    pauses: Arc<Pauses>,
}

impl Scheduler {
    pub fn new(shared: Shared, op: OpContext) -> Scheduler {
        let pauses = Arc::new(Pauses::new(shared.clock.clone()));
        tokio::spawn({
            let (pauses, op) = (pauses.clone(), op.clone());
            async move { pauses.watch(op.cancelled()).await }
        });
        Scheduler {
            shared,
            op,
            loops: Arc::default(),
            pauses,
        }
    }

    /// Starts a loop per schedule, after retiring the loops already running.
    pub fn replace(&self, ws: Arc<Workspace>, schedules: Vec<Schedule>, hooks: Webhooks) {
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        for l in loops.iter() {
            l.retire.cancel();
        }
        loops.retain(|l| !l.task.is_finished());
        for schedule in schedules {
            let retire = CancellationToken::new();
            let beat = Arc::new(Heartbeat::default());
            beat.beat(&*self.shared.clock);
            let job = Job {
                ws: ws.clone(),
                schedule,
                shared: self.shared.clone(),
                hooks: hooks.clone(),
                op: self.op.child(),
                retire: retire.clone(),
                beat: beat.clone(),
                unrecorded: Mutex::default(),
                pauses: self.pauses.clone(),
            };
            let name = job.schedule.name.clone();
            loops.push(Loop {
                name,
                retire,
                beat,
                task: tokio::spawn(job.run()),
            });
        }
    }

    /// The schedules of the current (not retired) loops.
    pub fn names(&self) -> Vec<String> {
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .filter(|l| !l.retire.is_cancelled())
            .map(|l| l.name.clone())
            .collect()
    }

    /// True while every loop that has not ended answers.
    fn alive(&self) -> bool {
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .filter(|l| !l.task.is_finished())
            .all(|l| l.beat.alive(&*self.shared.clock))
    }

    /// Waits for every loop to end (the operation context is cancelled by then).
    pub async fn join(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
            loops.drain(..).map(|l| l.task).collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Pings systemd's watchdog (when it set one) while every schedule loop is alive, so a
    /// hung scheduler is restarted.
    pub async fn watchdog(&self) {
        let Some(limit) = sd_notify::watchdog_enabled() else {
            return;
        };
        let every = (limit / 2).max(Duration::from_millis(100));
        loop {
            if self.alive() {
                super::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    "a schedule loop stopped answering; the watchdog will restart the service"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.op.cancelled() => return,
            }
        }
    }
}

/// One schedule's loop.
struct Job {
    ws: Arc<Workspace>,
    schedule: Schedule,
    shared: Shared,
    hooks: Webhooks,
    op: OpContext,
    retire: CancellationToken,
    beat: Arc<Heartbeat>,
    /// Slots that failed while the database did not answer, to put on record once it does.
    unrecorded: Mutex<Vec<(chrono::DateTime<Utc>, String)>>,
    pauses: Arc<Pauses>,
}

/// Why the slots after `slot` were not run, for the log and the slots table: a pause of
/// the process (or a clock set forward) is named as such, not blamed on the schedule.
fn why_missed(slot: chrono::DateTime<Utc>, paused: Option<chrono::TimeDelta>) -> String {
    match paused {
        Some(gap) => format!(
            "passed while the process did not run for {}s or the clock was set forward (SIGSTOP, a suspended machine, an overloaded host, a clock step)",
            gap.num_seconds()
        ),
        None => format!(
            "passed while slot {slot} ran (the schedule is denser than its backups are long)"
        ),
    }
}

impl Job {
    fn stopping(&self) -> bool {
        self.op.is_cancelled() || self.retire.is_cancelled()
    }

    async fn run(self) {
        let name = &self.schedule.name;
        let metrics = &self.shared.metrics;
        let clock = &*self.shared.clock;
        let mut catch_up = self.missed_at_start().await;
        let mut after = clock.now();
        while !self.stopping() {
            let Some((slot, rerun)) = catch_up
                .take()
                .or_else(|| self.schedule.next_after(after).map(|s| (s, false)))
            else {
                tracing::warn!("schedule {name} has no future slot; it stops");
                return;
            };
            metrics.next(name, slot);
            // Sleep until the slot, in bounded steps, or until cancelled or retired.
            loop {
                self.beat.beat(clock);
                let now = clock.now();
                if now >= slot {
                    break;
                }
                let wait = (slot - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::select! {
                    _ = clock.sleep(wait) => {}
                    _ = self.op.cancelled() => return,
                    _ = self.retire.cancelled() => return,
                }
            }
            self.run_one(slot, rerun).await;
            // Slots that passed while this one ran are not run in a burst: the ones nobody
            // took are recorded as missed, and the loop goes on from now.
            let now = clock.now();
            after = slot.max(now - OVERRUN_GRACE);
            if after > slot {
                let why = why_missed(slot, self.pauses.longest_since(slot));
                match record_overrun(
                    &self.ws,
                    &self.schedule,
                    slot,
                    after,
                    &self.shared.instance,
                    &why,
                )
                .await
                {
                    Ok(missed) if !missed.is_empty() => {
                        metrics.missed(name, missed.len() as u64);
                        tracing::warn!(
                            "schedule {name}: {} slot(s) {why}; they are recorded as missed",
                            missed.len()
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        "schedule {name}: could not record the slots that passed during a run: {e:#}"
                    ),
                }
            }
        }
    }

    /// Marks the slots whose instance died running them as failed (`instance_lost`):
    /// counted, shown and notified like any failure. Returns the newest of them.
    async fn reap(&self) -> Option<chrono::DateTime<Utc>> {
        let name = &self.schedule.name;
        match reap_lost(&self.ws, &self.schedule).await {
            Ok(lost) => {
                for l in &lost {
                    let now = self.shared.clock.now();
                    self.shared
                        .metrics
                        .failed(name, "instance_lost", &l.error, 0.0, now);
                    self.hooks.run(name).failed(&l.error, 0.0);
                    tracing::error!("schedule {name}: slot {}: {}", l.slot, l.error);
                }
                lost.last().map(|l| l.slot)
            }
            Err(e) => {
                tracing::warn!(
                    "schedule {name}: could not look for slots of lost instances: {e:#}"
                );
                None
            }
        }
    }

    /// Records the slots that passed while no instance ran and those whose instance died;
    /// returns the one to run now (`catch_up = "latest"`), and whether it is a lost one run
    /// again.
    async fn missed_at_start(&self) -> Option<(chrono::DateTime<Utc>, bool)> {
        let name = &self.schedule.name;
        let now = self.shared.clock.now();
        let lost = self.reap().await;
        let rerun = lost
            .filter(|_| self.schedule.catch_up == crate::config::CatchUp::Latest)
            .filter(|l| self.schedule.next_after(*l).is_none_or(|next| next > now));
        if let Some(slot) = rerun {
            tracing::warn!(
                "schedule {name}: slot {slot} was lost with its instance; running it again (catch_up = \"latest\")"
            );
        }
        let latest = match record_missed(&self.ws, &self.schedule, now, &self.shared.instance).await
        {
            Ok((missed, latest)) => {
                self.shared.metrics.missed(name, missed.len() as u64);
                if !missed.is_empty() {
                    tracing::warn!(
                        "schedule {name}: {} slot(s) passed while no instance ran; they are recorded as missed",
                        missed.len()
                    );
                }
                if let Some(slot) = latest {
                    tracing::warn!(
                        "schedule {name}: slot {slot} passed while no instance ran; running it now (catch_up = \"latest\")"
                    );
                }
                latest
            }
            Err(e) => {
                tracing::warn!("schedule {name}: could not check for missed slots: {e:#}");
                None
            }
        };
        // A newer slot that passed unrun goes before running a lost older one again.
        latest.map(|s| (s, false)).or(rerun.map(|s| (s, true)))
    }

    /// Puts on record the slots that failed while the database did not answer.
    async fn record_unrecorded(&self) {
        let pending =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        if let Err(e) =
            record_failed(&self.ws, &self.schedule, &pending, &self.shared.instance).await
        {
            tracing::debug!(
                "schedule {}: failed slots still not on record: {e:#}",
                self.schedule.name
            );
            self.unrecorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending);
        }
    }

    async fn run_one(&self, slot: chrono::DateTime<Utc>, rerun: bool) {
        let name = &self.schedule.name;
        let metrics = &self.shared.metrics;
        self.record_unrecorded().await;
        if !rerun {
            self.reap().await;
        }
        let started = std::time::Instant::now();
        let hooks = self.hooks.run(name);
        self.beat.running.store(true, Ordering::Relaxed);
        let outcome = run_slot(
            &self.ws,
            &self.schedule,
            slot,
            &self.shared.instance,
            rerun,
            &self.op,
            || hooks.started(),
        )
        .await;
        self.beat.running.store(false, Ordering::Relaxed);
        self.beat.beat(&*self.shared.clock);
        let now = self.shared.clock.now();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(SlotOutcome::TakenElsewhere) => {
                tracing::debug!("schedule {name}: slot {slot} is run by another instance")
            }
            Ok(SlotOutcome::Done {
                backup_id,
                rows,
                bytes,
                pruned,
                kept,
                recorded,
            }) => {
                if let Some(why) = recorded {
                    metrics.unrecorded(name);
                    tracing::warn!(
                        "schedule {name}: slot {slot} was backed up as {backup_id}, but its record could not be written ({why}); the backup is good, and the slot may show as running"
                    );
                }
                metrics.succeeded(
                    name,
                    &super::metrics::Success {
                        backup_id: &backup_id,
                        rows,
                        bytes,
                        secs,
                        kept,
                        at: now,
                    },
                );
                hooks.succeeded(&backup_id, rows, bytes, secs);
                tracing::info!(
                    "schedule {name}: slot {slot} backed up as {backup_id} ({rows} rows, {bytes} bytes stored, {secs:.1}s); retention removed {pruned} backup(s)"
                )
            }
            Err(e) => {
                let reason = crate::error::kind_of(&e).name();
                let message = format!("{e:#}");
                if e.downcast_ref::<NotRecorded>().is_some() {
                    let mut pending = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
                    pending.push((slot, message.clone()));
                    // A dense schedule and a long outage: keep the newest, as missed slots are.
                    let over = pending.len().saturating_sub(UNRECORDED_KEPT);
                    pending.drain(..over);
                }
                metrics.failed(name, reason, &message, secs, now);
                hooks.failed(&message, secs);
                tracing::error!(
                    "schedule {name}: slot {slot} failed ({reason}): {message}; the next slot tries again"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_named_as_one_and_only_otherwise_the_schedule_is_blamed() {
        let slot = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let paused = why_missed(slot, Some(chrono::TimeDelta::seconds(300)));
        assert!(paused.contains("did not run for 300s"), "{paused}");
        assert!(!paused.contains("denser"), "{paused}");
        let dense = why_missed(slot, None);
        assert!(dense.contains("denser than its backups"), "{dense}");
        assert!(dense.contains("2026-06-01 10:00:00 UTC"), "{dense}");
    }
}
