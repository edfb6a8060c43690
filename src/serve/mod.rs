//! The daemon, as a front end of the library beside the command line. It loads the
//! configuration, answers over HTTP at once through a bounded accept loop (`listener`:
//! health, readiness naming what is missing, metrics), checks the database and the store
//! once (what can never work ends it), then runs the schedules (see `scheduler`) whether or
//! not they answer yet, and tells systemd it is ready. SIGHUP re-reads the
//! configuration and replaces the schedules; a bad file is logged and the running one kept.
//! Ctrl-C or SIGTERM cancels the operation context: nothing new starts, a running backup
//! stops cleanly (upload aborted, no manifest), and `serve` exits 0.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::context::OpContext;
use crate::error::{kind_of, usage};
use crate::ops::config_check::{check_offline, missing_tables, Checked};
use crate::ops::Workspace;
use crate::schedule::Schedule;

pub mod clock;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod ready;
pub mod scheduler;
pub mod webhook;

pub use clock::{Clock, ManualClock, SystemClock};
use metrics::Metrics;
use scheduler::{Scheduler, Shared};
use webhook::Webhooks;

/// How long shutdown waits for webhook calls still going out.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

/// A configuration the daemon can run: the workspace and its parsed schedules.
pub struct Loaded {
    pub ws: Arc<Workspace>,
    pub schedules: Vec<Schedule>,
}

/// Reads and checks the configuration for serving, with `config check`'s own checks: every
/// problem no retry can cure (a bad value, cron or time zone, an unknown storage scheme, no
/// or a bad database url, a bad listen address) is a usage error naming the file and key.
pub fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let ws = Workspace::load(path)?;
    let origin = ws.origin();
    let Checked {
        mut problems,
        schedules,
    } = check_offline(ws.config(), &origin);
    if ws.config().database.url.is_none() {
        problems.push(format!(
            "{origin}: [database] url is not set, and serve backs up a database; set it (or BACKSTOP_DATABASE_URL)"
        ));
    }
    if schedules.is_empty() && problems.is_empty() {
        problems.push("serve has nothing to do: the configuration has no [[schedule]]; add one (see config/backstop.example.toml)".into());
    }
    if !problems.is_empty() {
        return usage(problems.join("; "));
    }
    Ok(Loaded {
        ws: Arc::new(ws),
        schedules,
    })
}

/// Runs the daemon until `op` is cancelled: `reloads` delivers each request to re-read the
/// configuration at `config_path` (SIGHUP, for the binary); `clock` is the time the
/// schedules run by.
pub async fn serve(
    config_path: Option<&Path>,
    op: OpContext,
    clock: Arc<dyn Clock>,
    mut reloads: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let Loaded { ws, schedules } = load(config_path)?;
    listener::raise_open_files_limit();
    let instance = format!("{}:{}", hostname(), std::process::id());
    let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let listen = ws.config().server.listen.clone();
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            return usage(format!(
                "cannot listen on {listen} ([server] listen): {e}; pick a free address and port"
            ));
        }
    };
    let daemon = Arc::new(http::Daemon::new(ws.clone(), metrics.clone(), op.clone()));
    let app = http::app(daemon.clone());
    let limits = listener::Limits {
        max_connections: ws.config().server.max_connections,
        idle_timeout: Duration::from_secs(ws.config().server.idle_timeout_secs),
    };
    let server = tokio::spawn(listener::run(listener, app, limits, op.clone()));
    if let Err(e) = check_dependencies(&daemon, &ws, &op).await {
        op.cancel();
        let _ = server.await;
        return Err(e);
    }
    if !op.is_cancelled() {
        warn_missing_tables(&ws, &schedules).await;
    }
    let webhooks = TaskTracker::new();
    if !op.is_cancelled() {
        tracing::info!(
            "serving {} schedule(s) as instance {instance}, HTTP on {listen}",
            schedules.len()
        );
        let shared = Shared {
            instance,
            metrics,
            clock,
        };
        let scheduler = Arc::new(Scheduler::new(shared, op.clone()));
        let hooks = Webhooks::new(&ws.config().notify, webhooks.clone());
        scheduler.replace(ws, schedules, hooks);
        notify(&[sd_notify::NotifyState::Ready]);
        let watchdog = tokio::spawn({
            let scheduler = scheduler.clone();
            async move { scheduler.watchdog().await }
        });
        loop {
            tokio::select! {
                Some(()) = reloads.recv() => reload(config_path, &daemon, &scheduler, &webhooks).await,
                _ = op.cancelled() => break,
            }
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        scheduler.join().await;
        watchdog.abort();
    }
    let _ = server.await;
    webhooks.close();
    if tokio::time::timeout(WEBHOOK_DRAIN, webhooks.wait())
        .await
        .is_err()
    {
        tracing::warn!("webhook calls still going out after {WEBHOOK_DRAIN:?} were dropped");
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-reads the configuration; if it is good, the schedules, webhooks, database and
/// store settings are replaced; if not, the problem is logged and everything runs on as it was.
async fn reload(
    config_path: Option<&Path>,
    daemon: &http::Daemon,
    scheduler: &Scheduler,
    webhooks: &TaskTracker,
) {
    notify(&[sd_notify::NotifyState::Reloading]);
    let loaded = load(config_path);
    if let Ok(l) = &loaded {
        warn_missing_tables(&l.ws, &l.schedules).await;
    }
    match loaded {
        Err(e) => tracing::error!(
            "SIGHUP: the new configuration is not usable, so the running one is kept: {e:#}"
        ),
        Ok(Loaded { ws, schedules }) => {
            let listen = &ws.config().server.listen;
            if *listen != daemon.ws().config().server.listen {
                tracing::warn!(
                    "SIGHUP: [server] listen changed to {listen}; the HTTP side keeps its address until a restart"
                );
            }
            let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
            let old = scheduler.names();
            daemon.metrics.track(&names);
            daemon.replace(ws.clone());
            let hooks = Webhooks::new(&ws.config().notify, webhooks.clone());
            scheduler.replace(ws, schedules, hooks);
            tracing::info!(
                "SIGHUP: configuration reloaded; schedules were [{}], now [{}]",
                old.join(", "),
                names.join(", ")
            );
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Warns of tables the schedules or `[backup] tables` name that the database does not
/// have (yet: a daemon installed before the first migration must come up and stay up); each
/// slot that needs one fails saying so, and the next after the migration succeeds.
async fn warn_missing_tables(ws: &Workspace, schedules: &[Schedule]) {
    let Ok(db) = ws.database() else { return };
    match missing_tables(ws.config(), schedules, &db, &ws.origin()).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => tracing::warn!(
            "{}; their slots fail until the tables exist",
            missing.join("; ")
        ),
        Err(e) => tracing::warn!("the tables the schedules name were not checked: {e:#}"),
    }
}

/// Tells systemd (when it started us with a notify socket); without one, does nothing.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("notifying systemd: {e}");
    }
}

/// Checks the database and the store once, saying which does not answer. What can never
/// succeed as configured ends `serve` with its kind; what may pass
/// ([`crate::error::Kind::is_transient`]: a server still starting, a store that refuses
/// its credentials for now) is logged, and the schedules start anyway: a slot due while a
/// dependency is down fails like any other (counted, shown, notified), it is not silence.
async fn check_dependencies(
    daemon: &http::Daemon,
    ws: &Arc<Workspace>,
    op: &OpContext,
) -> anyhow::Result<()> {
    if op.is_cancelled() {
        return Ok(());
    }
    // The readiness check itself, so `/readyz` starts from this answer and its connection.
    let mut problems = Vec::new();
    for (what, e) in daemon.readiness.check_now(ws).await {
        if !kind_of(&e).is_transient() {
            return Err(e.context(format!("the {what} can never answer as configured")));
        }
        problems.push(format!("the {what} does not answer: {e:#}"));
    }
    if !problems.is_empty() {
        let status = problems.join("; ");
        tracing::error!("{status}; the schedules run, and their slots fail until it answers");
        notify(&[sd_notify::NotifyState::Status(&status)]);
    }
    Ok(())
}

/// The host's name, for telling instances apart in the slots table; `/etc/hostname` when
/// the unit's `ProcSubset=pid` hides `/proc/sys`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
