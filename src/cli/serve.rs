//! `serve`: the daemon's scheduler. Each `[[schedule]]` gets a loop that sleeps until its
//! next slot (in steps, so a changed clock is noticed) and runs it through the same backup
//! and retention operations as the command line; the database decides which instance runs
//! a slot. Ctrl-C or SIGTERM cancels the operation context: nothing new starts, a running
//! backup stops cleanly (upload aborted, no manifest), and `serve` exits 0.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop::context::OpContext;
use backstop::error::{usage, ExitCode};
use backstop::ops::scheduled::{record_missed, run_slot, SlotOutcome};
use backstop::ops::Workspace;
use backstop::schedule::Schedule;
use chrono::Utc;

use super::{Ctx, Output};

mod http;
mod metrics;

use metrics::Metrics;

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
    let hangup = tokio::spawn(ignore_hangups(op.clone()));
    let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let listen = &ws.config().server.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            hangup.abort();
            return usage(format!(
                "cannot listen on {listen} ([server] listen): {e}; pick a free address and port"
            ));
        }
    };
    let app = http::app(Arc::new(http::Daemon {
        ws: ws.clone(),
        metrics: metrics.clone(),
    }));
    let http_op = op.clone();
    let server = tokio::spawn(async move {
        let stop = async move { http_op.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("the HTTP server stopped: {e}");
        }
    });
    // /healthz and /readyz answer while the database or the store is still coming up.
    wait_for_dependencies(&ws, &op).await;
    if op.is_cancelled() {
        hangup.abort();
        let _ = server.await;
        return Ok(stopped());
    }
    tracing::info!(
        "serving {} schedule(s) as instance {instance}",
        schedules.len()
    );
    let beats: Vec<Arc<Heartbeat>> = schedules.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (schedule, beat) in schedules.into_iter().zip(&beats) {
        let (ws, op, instance, beat) = (ws.clone(), op.child(), instance.clone(), beat.clone());
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            schedule_loop(&ws, &schedule, &instance, &op, &beat, &metrics).await
        }));
    }
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog(beats, op.clone()));
    for t in tasks {
        let _ = t.await;
    }
    watchdog.abort();
    hangup.abort();
    let _ = server.await;
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(stopped())
}

fn stopped() -> Output {
    Output {
        json: serde_json::json!({ "stopped": true }),
        text: String::new(),
        code: ExitCode::Success,
    }
}

/// Tells systemd (when it started us with a notify socket); without one, does nothing.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("notifying systemd: {e}");
    }
}

/// Waits until the database and the store answer, saying which does not, so READY means
/// the service can work; a dependency that is down does not stop the daemon.
async fn wait_for_dependencies(ws: &Workspace, op: &OpContext) {
    loop {
        let problems = ws.unavailable().await;
        if problems.is_empty() {
            return;
        }
        let status = problems.join("; ");
        tracing::error!("{status}; retrying in 5s");
        notify(&[sd_notify::NotifyState::Status(&status)]);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = op.cancelled() => return,
        }
    }
}

/// SIGHUP would end the process by default; until reloading is built, it is logged and
/// otherwise ignored, so a stray hangup never stops the backups.
async fn ignore_hangups(op: OpContext) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => tracing::warn!(
                "SIGHUP: reloading the configuration is not implemented yet; restart the service to apply a changed configuration"
            ),
            _ = op.cancelled() => return,
        }
    }
}

/// A schedule loop's sign of life, for the watchdog.
#[derive(Default)]
struct Heartbeat {
    /// Unix seconds of the loop's last wake.
    at: AtomicI64,
    /// A slot is running (a long backup is not a hang).
    running: AtomicBool,
}

impl Heartbeat {
    fn beat(&self) {
        self.at.store(Utc::now().timestamp(), Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        self.running.load(Ordering::Relaxed)
            || Utc::now().timestamp() - self.at.load(Ordering::Relaxed)
                <= 2 * MAX_SLEEP.as_secs() as i64
    }
}

/// Pings systemd's watchdog (when it set one) while every schedule loop is alive, so a hung
/// scheduler is restarted.
async fn watchdog(beats: Vec<Arc<Heartbeat>>, op: OpContext) {
    let Some(limit) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (limit / 2).max(Duration::from_millis(100));
    loop {
        if beats.iter().all(|b| b.alive()) {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "a schedule loop stopped answering; the watchdog will restart the service"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = op.cancelled() => return,
        }
    }
}

async fn schedule_loop(
    ws: &Workspace,
    schedule: &Schedule,
    instance: &str,
    op: &OpContext,
    beat: &Heartbeat,
    metrics: &Metrics,
) {
    beat.beat();
    let mut catch_up = None;
    match record_missed(ws, schedule, Utc::now(), instance).await {
        Ok((missed, latest)) => {
            metrics.missed(&schedule.name, missed.len() as u64);
            if !missed.is_empty() {
                tracing::warn!(
                    "schedule {}: {} slot(s) passed while no instance ran; they are recorded as missed",
                    schedule.name,
                    missed.len()
                );
            }
            if let Some(slot) = latest {
                tracing::warn!(
                    "schedule {}: slot {slot} passed while no instance ran; running it now (catch_up = \"latest\")",
                    schedule.name
                );
                catch_up = Some(slot);
            }
        }
        Err(e) => tracing::warn!(
            "schedule {}: could not check for missed slots: {e:#}",
            schedule.name
        ),
    }
    let mut after = Utc::now();
    while !op.is_cancelled() {
        let Some(slot) = catch_up.take().or_else(|| schedule.next_after(after)) else {
            tracing::warn!("schedule {} has no future slot; it stops", schedule.name);
            return;
        };
        metrics.next(&schedule.name, slot);
        // Sleep until the slot, in bounded steps, or until cancelled.
        loop {
            beat.beat();
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
        after = after.max(slot);
        let started = std::time::Instant::now();
        beat.running.store(true, Ordering::Relaxed);
        let outcome = run_slot(ws, schedule, slot, instance, op).await;
        beat.running.store(false, Ordering::Relaxed);
        beat.beat();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(SlotOutcome::TakenElsewhere) => {
                tracing::debug!(
                    "schedule {}: slot {slot} is run by another instance",
                    schedule.name
                )
            }
            Ok(SlotOutcome::Done {
                backup_id,
                rows,
                bytes,
                pruned,
                kept,
            }) => {
                metrics.succeeded(&schedule.name, &backup_id, rows, bytes, secs, kept);
                tracing::info!(
                    "schedule {}: slot {slot} backed up as {backup_id} ({rows} rows, {bytes} bytes stored, {secs:.1}s); retention removed {pruned} backup(s)",
                    schedule.name
                )
            }
            Err(e) => {
                let kind = backstop::error::kind_of(&e);
                let reason = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "internal".into());
                metrics.failed(&schedule.name, &reason, &format!("{e:#}"), secs);
                tracing::error!(
                    "schedule {}: slot {slot} failed: {e:#}; the next slot tries again",
                    schedule.name
                )
            }
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
