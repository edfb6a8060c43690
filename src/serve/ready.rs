//! Readiness: whether the database and the store answer, checked by one task at a time and
//! shared by every `/readyz` request and by the `READY=1` the daemon sends at start.
//!
//! `/readyz` needs no token, so a flood of it must not become a flood of connections: the
//! database is asked over one connection kept for the purpose (opened again only when it
//! breaks or the configuration changes), and an answer is reused for [`READY_FRESH`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::ops::Workspace;

/// How long one readiness answer is reused.
pub const READY_FRESH: Duration = Duration::from_secs(1);

/// The connection readiness asks the database over, and the configuration it came from.
struct Probe {
    ws: Weak<Workspace>,
    client: Client,
}

/// The shared readiness check.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(tokio::time::Instant, Vec<String>)>>,
    probe: Mutex<Option<Probe>>,
}

impl Readiness {
    /// What does not answer, checked at most once per [`READY_FRESH`] however many ask.
    pub async fn unavailable(&self, ws: &Arc<Workspace>) -> Vec<String> {
        let mut last = self.last.lock().await;
        if let Some((at, problems)) = &*last {
            if at.elapsed() < READY_FRESH {
                return problems.clone();
            }
        }
        let problems = describe(&self.check(ws).await);
        *last = Some((tokio::time::Instant::now(), problems.clone()));
        problems
    }

    /// Checks now, whatever the last answer, and keeps the answer for the requests that
    /// follow; returns each failure with its error, whose kind says whether waiting helps.
    pub async fn check_now(&self, ws: &Arc<Workspace>) -> Vec<(&'static str, anyhow::Error)> {
        let mut last = self.last.lock().await;
        let found = self.check(ws).await;
        *last = Some((tokio::time::Instant::now(), describe(&found)));
        found
    }

    /// Forgets the last answer, so the next is about a new configuration (a check running
    /// now keeps its answer for at most [`READY_FRESH`]).
    pub fn forget(&self) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = None;
        }
    }

    async fn check(&self, ws: &Arc<Workspace>) -> Vec<(&'static str, anyhow::Error)> {
        let (db, store) = tokio::join!(self.database(ws), ws.check_store());
        [("database", db), ("store", store)]
            .into_iter()
            .filter_map(|(what, r)| r.err().map(|e| (what, e)))
            .collect()
    }

    /// Asks the kept connection; opens a new one when there is none, it broke, it did not
    /// answer, or it belongs to a configuration replaced since.
    async fn database(&self, ws: &Arc<Workspace>) -> anyhow::Result<()> {
        let wait = Duration::from_secs(ws.config().database.connect_timeout_secs.max(1));
        let mut probe = self.probe.lock().await;
        if let Some(p) = &*probe {
            if std::ptr::eq(p.ws.as_ptr(), Arc::as_ptr(ws)) && !p.client.is_closed() {
                if let Ok(Ok(_)) = tokio::time::timeout(wait, p.client.simple_query("")).await {
                    return Ok(());
                }
            }
        }
        *probe = None;
        let client = ws.database()?.connect().await?;
        *probe = Some(Probe {
            ws: Arc::downgrade(ws),
            client,
        });
        Ok(())
    }
}

fn describe(found: &[(&'static str, anyhow::Error)]) -> Vec<String> {
    found
        .iter()
        .map(|(what, e)| format!("the {what} does not answer: {e:#}"))
        .collect()
}
