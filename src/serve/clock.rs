//! The wall clock the daemon's schedules run by, given to it rather than read from the
//! system, so a test can put the loop on either side of a daylight-saving change, jump the
//! clock forward or back, or let a slot pass, in milliseconds and without sleeping.
//!
//! Only the schedule's time is the clock's: timeouts around database and store calls stay
//! on tokio's own timer, so a test clock that stands still never makes them fire early.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

/// Now, and waiting for a while, by some clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once `d` has passed by this clock, or earlier when the clock is set
    /// (a jump), so the caller reads [`now`](Clock::now) again.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when told: for tests of the schedule loops.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
    /// Sleepers waiting on the clock right now, for [`ManualClock::sleepers`].
    waiting: std::sync::Arc<Mutex<usize>>,
    /// Sleeps ever started, for [`ManualClock::sleeps`].
    started: std::sync::atomic::AtomicUsize,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(at),
            waiting: Default::default(),
            started: Default::default(),
        }
    }

    /// Sets the time, forward or back; every sleeper wakes and looks again.
    pub fn set(&self, at: DateTime<Utc>) {
        self.now.send_replace(at);
    }

    pub fn advance(&self, by: chrono::TimeDelta) {
        // Read, then set: the read guard must be gone before the write.
        let now = *self.now.borrow();
        self.set(now + by);
    }

    /// How many sleeps are waiting on this clock: a loop that sleeps is idle, so a test can
    /// tell "it has finished reacting" from "it has not started yet".
    pub fn sleepers(&self) -> usize {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sleeps have started so far: after [`set`](ManualClock::set), a loop has
    /// reacted once it has started a new one.
    pub fn sleeps(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        // The loops sleep in bounded steps and read the time again on waking, so a manual
        // sleep lasts until the clock is next set, however far: `d` is the loop's business.
        let _ = d;
        let mut rx = self.now.subscribe();
        let waiting = self.waiting.clone();
        *waiting.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = Waiting(waiting);
        Box::pin(async move {
            let _guard = guard;
            // Any change wakes the sleeper: a jump back must be noticed as much as one
            // forward, and the loop decides what it means.
            let _ = rx.changed().await;
        })
    }
}

struct Waiting(std::sync::Arc<Mutex<usize>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_is_set_and_not_before() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-29T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = std::sync::Arc::new(ManualClock::new(t0));
        let sleep = clock.sleep(Duration::from_secs(3600));
        assert_eq!(clock.sleepers(), 1);
        let woke = tokio::spawn(sleep);
        tokio::task::yield_now().await;
        assert!(!woke.is_finished());
        clock.advance(chrono::TimeDelta::seconds(10));
        woke.await.unwrap();
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(clock.now(), t0 + chrono::TimeDelta::seconds(10));
    }
}
