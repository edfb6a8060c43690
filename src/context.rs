//! The context every operation runs in: its own cancellation token and a progress observer.
//!
//! A long-running process runs several operations at once (a scheduled backup while a
//! downgrade waits for its lock); cancelling one must not touch the others, and each one's
//! progress goes wherever its front end wants it: a terminal bar, counters for metrics, or
//! nowhere. Long streams (exports, loads) check [`OpContext::cancelled`] and stop with an
//! [`Kind::Interrupted`] error, so the normal failure path runs: the upload is aborted, the
//! transaction rolls back, and the caller says what did not happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{err, Kind};

/// Receives progress from an operation. Every method has a default that ignores it.
pub trait Observer: Send + Sync {
    /// A stage that moves data begins (`backup`, `restore`, `verify`), with the bytes it
    /// expects to move (an estimate).
    fn begin(&self, _stage: &str, _estimated_bytes: u64) {}
    /// Bytes (uncompressed CSV) and rows moved since the last call.
    fn advance(&self, _bytes: u64, _rows: u64) {}
    /// The stage ended, well or not.
    fn end(&self) {}
}

/// The observer that ignores everything.
pub struct Silent;

impl Observer for Silent {}

/// Counts what went through, for tests and for the daemon's metrics.
#[derive(Debug, Default)]
pub struct Counting {
    pub stages: AtomicU64,
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
}

impl Counting {
    /// (stages begun, bytes, rows) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.stages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
        )
    }
}

impl Observer for Counting {
    fn begin(&self, _stage: &str, _estimated_bytes: u64) {
        self.stages.fetch_add(1, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64, rows: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }
}

/// One operation's cancellation and progress. Cheap to clone; clones share both.
#[derive(Clone)]
pub struct OpContext {
    cancel: CancellationToken,
    observer: Arc<dyn Observer>,
    row_values: bool,
}

impl Default for OpContext {
    fn default() -> Self {
        OpContext::new(Arc::new(Silent))
    }
}

impl OpContext {
    /// A context with a fresh token of its own.
    pub fn new(observer: Arc<dyn Observer>) -> OpContext {
        OpContext {
            cancel: CancellationToken::new(),
            observer,
            row_values: false,
        }
    }

    /// The same context, allowed (or not) to put row values in what it reports: only the
    /// front end that was asked for them (`-v`) sets it, since row values are data.
    pub fn with_row_values(mut self, on: bool) -> OpContext {
        self.row_values = on;
        self
    }

    /// Whether messages may quote row values.
    pub fn row_values(&self) -> bool {
        self.row_values
    }

    /// A context cancelled together with `self` (and cancellable alone), sharing the observer.
    pub fn child(&self) -> OpContext {
        OpContext {
            cancel: self.cancel.child_token(),
            observer: self.observer.clone(),
            row_values: self.row_values,
        }
    }

    /// The same cancellation, another observer.
    pub fn with_observer(&self, observer: Arc<dyn Observer>) -> OpContext {
        OpContext {
            cancel: self.cancel.clone(),
            observer,
            row_values: self.row_values,
        }
    }

    /// Asks this operation (and its children) to stop at the next safe point.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once [`OpContext::cancel`] was called (at once if it already was).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The error that cancelled work returns.
    pub fn interrupted(&self) -> anyhow::Error {
        err(Kind::Interrupted, "interrupted")
    }

    /// Fails with [`OpContext::interrupted`] if the operation was cancelled.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_cancelled() {
            return Err(self.interrupted());
        }
        Ok(())
    }

    /// Runs `work` until it ends or the operation is cancelled, whichever is first: for
    /// waits that do not watch the token themselves (a store that does not answer).
    pub async fn unless_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            r = work => r,
            _ = self.cancelled() => Err(self.interrupted()),
        }
    }

    pub fn observer(&self) -> &dyn Observer {
        &*self.observer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_one_context_leaves_the_others_alone() {
        let root = OpContext::default();
        let (a, b) = (root.child(), root.child());
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.cancelled().await }
        });
        a.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(a.check().is_err());
        assert_eq!(
            crate::error::kind_of(&a.check().unwrap_err()),
            Kind::Interrupted
        );
        assert!(b.check().is_ok() && root.check().is_ok());
        // The root reaches every child, later ones included.
        root.cancel();
        assert!(b.is_cancelled() && root.child().is_cancelled());
    }

    #[test]
    fn counting_observer_adds_up() {
        let c = Arc::new(Counting::default());
        let ctx = OpContext::new(c.clone());
        ctx.observer().begin("backup", 10);
        ctx.observer().advance(5, 1);
        ctx.observer().advance(7, 2);
        ctx.observer().end();
        assert_eq!(c.totals(), (1, 12, 3));
    }
}
