//! The wall clock the daemon's schedules run by, given to it rather than read from the
//! system, so a test can put the loop on either side of a daylight-saving change, jump the
//! clock forward or back, or let a slot pass, in milliseconds and without sleeping.
//!
//! Only the schedule's time is the clock's: timeouts around database and store calls stay
//! on tokio's own timer, so a test clock that stands still never makes them fire early.

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

/// What the sleeps on a [`ManualClock`] are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Sleeps waiting right now: a loop that sleeps is idle.
    pub asleep: usize,
    /// Sleeps ever started: after a [`ManualClock::set`], a loop has reacted once it has
    /// started a new one.
    pub started: usize,
}

/// A clock that moves only when told: for tests of the schedule loops.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
    activity: std::sync::Arc<watch::Sender<Activity>>,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(at),
            activity: std::sync::Arc::new(watch::Sender::new(Activity::default())),
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

    pub fn activity(&self) -> Activity {
        *self.activity.borrow()
    }

    /// Waits until the sleeps on this clock are as `done` wants them (say: every loop
    /// asleep again since the last move), without polling.
    pub async fn until(&self, done: impl FnMut(&Activity) -> bool) {
        let mut rx = self.activity.subscribe();
        let _ = rx.wait_for(done).await;
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
        self.activity.send_modify(|a| {
            a.asleep += 1;
            a.started += 1;
        });
        let guard = Asleep(self.activity.clone());
        Box::pin(async move {
            let _guard = guard;
            // Any change wakes the sleeper: a jump back must be noticed as much as one
            // forward, and the loop decides what it means.
            let _ = rx.changed().await;
        })
    }
}

/// Counts a sleep out of [`Activity::asleep`] however it ends (woken, or dropped).
struct Asleep(std::sync::Arc<watch::Sender<Activity>>);

impl Drop for Asleep {
    fn drop(&mut self) {
        self.0
            .send_modify(|a| a.asleep = a.asleep.saturating_sub(1));
    }
}

/// How often [`Pauses::watch`] looks at the clock.
const PAUSE_TICK: Duration = Duration::from_secs(1);
/// A look at the clock this much later than the last one means the process did not run.
pub const PAUSE_GAP: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// Pauses remembered, newest last.
const PAUSES_KEPT: usize = 16;

/// When a pause ended and how long it was.
type Pause = (DateTime<Utc>, chrono::TimeDelta);

/// Notices that the process did not run (SIGSTOP, a suspended machine, a host too loaded to
/// schedule it) or that the clock was set forward: a task that looks at the clock every
/// second sees a far longer gap. From inside the process the two cannot be told apart, and
/// neither is a schedule denser than its backups, which is what slots missed during a run
/// were otherwise blamed on.
pub struct Pauses {
    clock: std::sync::Arc<dyn Clock>,
    /// The last look and the pauses seen.
    seen: std::sync::Mutex<(DateTime<Utc>, std::collections::VecDeque<Pause>)>,
}

impl Pauses {
    pub fn new(clock: std::sync::Arc<dyn Clock>) -> Pauses {
        let now = clock.now();
        Pauses {
            clock,
            seen: std::sync::Mutex::new((now, Default::default())),
        }
    }

    /// Looks at the clock every second (on tokio's timer, not the clock's own sleep) until
    /// `stop` resolves.
    pub async fn watch(&self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.look();
            tokio::select! {
                _ = tokio::time::sleep(PAUSE_TICK) => {}
                _ = &mut stop => return,
            }
        }
    }

    fn look(&self) {
        let now = self.clock.now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let gap = now - seen.0;
        if gap > PAUSE_GAP {
            seen.1.push_back((now, gap));
            if seen.1.len() > PAUSES_KEPT {
                seen.1.pop_front();
            }
        }
        seen.0 = seen.0.max(now);
    }

    /// The longest pause that ended after `since`, the one going on now included (the
    /// watcher may not have looked since the process ran again).
    pub fn longest_since(&self, since: DateTime<Utc>) -> Option<chrono::TimeDelta> {
        self.look();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.1
            .iter()
            .filter(|(ended, _)| *ended > since)
            .map(|(_, gap)| *gap)
            .max()
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
        assert_eq!(clock.activity().asleep, 1);
        let woke = tokio::spawn(sleep);
        tokio::task::yield_now().await;
        assert!(!woke.is_finished());
        clock.advance(chrono::TimeDelta::seconds(10));
        woke.await.unwrap();
        assert_eq!(
            clock.activity(),
            Activity {
                asleep: 0,
                started: 1
            }
        );
        assert_eq!(clock.now(), t0 + chrono::TimeDelta::seconds(10));
    }
}
