//! Process-wide cancellation: Ctrl-C or SIGTERM asks running work to stop at a safe point.
//!
//! The binary installs the signal handler and calls [`trigger`]; long streams (exports and
//! loads) watch [`cancelled`] and stop with an error, so the normal failure path runs: the
//! upload is aborted, the transaction rolls back, and the command says what did not happen.

use std::sync::OnceLock;

use tokio::sync::watch;

fn channel() -> &'static watch::Sender<bool> {
    static CHANNEL: OnceLock<watch::Sender<bool>> = OnceLock::new();
    CHANNEL.get_or_init(|| watch::channel(false).0)
}

/// Asks all running work to stop.
pub fn trigger() {
    channel().send_replace(true);
}

/// Resolves once [`trigger`] has been called (at once if it already was).
pub async fn cancelled() {
    let mut rx = channel().subscribe();
    let _ = rx.wait_for(|c| *c).await;
}

/// The error that cancelled work returns.
pub fn error() -> anyhow::Error {
    anyhow::anyhow!("interrupted by a signal")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn trigger_wakes_waiters() {
        let waiter = tokio::spawn(super::cancelled());
        tokio::task::yield_now().await;
        super::trigger();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Later waiters return at once.
        super::cancelled().await;
    }
}
