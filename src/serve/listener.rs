//! The HTTP accept loop, bounded: at most `[server] max_connections` connections are served
//! at once (more are closed as they arrive), and a connection that sends no complete request
//! header within `idle_timeout_secs`, new or idle between requests, is closed. Without these,
//! a thousand idle sockets take the file descriptors a backup needs to open its store and its
//! database connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::context::OpContext;

/// How long connections still open at shutdown get to finish their answer.
const DRAIN: Duration = Duration::from_secs(5);

/// What the loop enforces, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `op` is cancelled, then lets open connections finish
/// their answer for at most [`DRAIN`].
pub async fn run(listener: TcpListener, app: Router, limits: Limits, op: OpContext) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            _ = op.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{refused} HTTP connection(s) closed on arrival: {} are open ([server] max_connections)",
                    limits.max_connections
                );
            }
            continue;
        };
        let app = app.clone();
        let op = op.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .max_buf_size(64 * 1024);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = op.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
}

/// Raises the soft limit on open files to the hard one: the soft default (1024) is a
/// shell's, not a daemon's. systemd's unit sets both (`LimitNOFILE`); this covers the rest.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("open files limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
}
