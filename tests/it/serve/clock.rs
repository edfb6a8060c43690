//! The schedule loops in-process, on a clock the test moves: slots across both
//! daylight-saving changes, a clock that jumps forward (the slots jumped over are recorded as
//! missed) and back (nothing runs twice), slots missed while no instance ran, two instances
//! on one database. Real PostgreSQL and a real store; no test sleeps for the schedule, each
//! moves the clock and waits until every loop is asleep again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::context::OpContext;
use backstop::ops::Workspace;
use backstop::serve::clock::Activity;
use backstop::serve::metrics::Metrics;
use backstop::serve::scheduler::{Scheduler, Shared};
use backstop::serve::webhook::Webhooks;
use backstop::serve::{Clock, ManualClock};
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::task::TaskTracker;

use crate::common::*;

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// One daemon's schedule loops, as `serve` runs them, on `clock`.
pub struct Loops {
    scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
    op: OpContext,
}

/// A project with data and `entries` as its `[[schedule]]` section(s).
pub async fn project(db: &TestDb, store: &TestStore, entries: &str) -> Project {
    let mut p = Project::new(db);
    p.use_store(store);
    p.set_section("[schedule]", entries);
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title, user_id) SELECT 'task ' || g, 'u' FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    p
}

pub fn start(p: &Project, clock: &Arc<ManualClock>, instance: &str) -> Loops {
    let path = p.path().join("backstop.toml");
    let ws = Arc::new(Workspace::load(Some(&path)).unwrap());
    let schedules = backstop::serve::load(Some(&path)).unwrap().schedules;
    let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let op = OpContext::default();
    let shared = Shared {
        instance: instance.to_string(),
        metrics: metrics.clone(),
        clock: clock.clone(),
    };
    let scheduler = Arc::new(Scheduler::new(shared, op.clone()));
    let hooks = Webhooks::new(&ws.config().notify, TaskTracker::new());
    scheduler.replace(ws, schedules, hooks);
    Loops {
        scheduler,
        metrics,
        op,
    }
}

impl Loops {
    pub async fn stop(self) {
        self.op.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.scheduler.join())
            .await
            .expect("the loops end when cancelled");
    }
}

/// Waits (at most 30 s of real time) until `sleeping` loops sleep on `clock`, each having
/// started a sleep since `since` sleeps had started: every loop has reacted to the last
/// move of the clock, and nothing is running.
pub async fn settled(clock: &ManualClock, sleeping: usize, since: usize) {
    let done = |a: &Activity| a.asleep == sleeping && a.started >= since + sleeping;
    if tokio::time::timeout(Duration::from_secs(30), clock.until(done))
        .await
        .is_err()
    {
        panic!(
            "the loops did not settle: {:?}, {since} sleeps before the move",
            clock.activity()
        );
    }
}

/// Moves the clock to `at` and waits until every loop has reacted.
pub async fn move_to(clock: &ManualClock, at: DateTime<Utc>, sleeping: usize) {
    let since = clock.activity().started;
    clock.set(at);
    settled(clock, sleeping, since).await;
}

/// The slots of `schedule` as `("10:00", "done")`, to compare with [`at_states`].
pub async fn states_by_time(db: &TestDb, schedule: &str) -> Vec<(String, String)> {
    slots(db, schedule)
        .await
        .into_iter()
        .map(|(t, s)| (t.format("%H:%M").to_string(), s))
        .collect()
}

pub fn at_states(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn slots(db: &TestDb, schedule: &str) -> Vec<(DateTime<Utc>, String)> {
    db.client()
        .await
        .query(
            "SELECT slot, state FROM backstop_schedule_slots WHERE schedule = $1 ORDER BY slot",
            &[&schedule],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn slots_follow_the_wall_clock_of_their_zone_across_both_daylight_saving_changes() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"nightly\"\ncron = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\ncatch_up = \"none\"",
    )
    .await;
    for (from, expected) in [
        // Spring forward on 2026-03-29: 02:30 does not exist; the slot fires once, at the
        // first instant after the gap.
        (
            "2026-03-27T12:00:00Z",
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        // Fall back on 2026-10-25: 02:30 happens twice; the slot fires once.
        (
            "2026-10-23T12:00:00Z",
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
        ),
    ] {
        db.client()
            .await
            .batch_execute("DELETE FROM backstop_schedule_slots")
            .await
            .ok();
        let clock = Arc::new(ManualClock::new(utc(from)));
        let loops = start(&p, &clock, "a");
        settled(&clock, 1, 0).await;
        let mut ran = Vec::new();
        for _ in 0..3 {
            let next = loops.metrics.status()["nightly"].next_run.unwrap();
            // A second before the slot nothing runs; at the slot it does.
            move_to(&clock, next - TimeDelta::seconds(1), 1).await;
            assert_eq!(slots(&db, "nightly").await.len(), ran.len());
            move_to(&clock, next, 1).await;
            ran.push(next);
        }
        let want: Vec<DateTime<Utc>> = expected.iter().map(|s| utc(s)).collect();
        assert_eq!(ran, want, "from {from}");
        let got = slots(&db, "nightly").await;
        assert_eq!(
            got,
            want.iter()
                .map(|t| (*t, "done".to_string()))
                .collect::<Vec<_>>()
        );
        loops.stop().await;
    }
}

#[tokio::test]
async fn a_clock_that_jumps_forward_records_the_slots_it_jumped_and_one_that_jumps_back_runs_nothing_twice(
) {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"hourly\"\ncron = \"0 0 * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:30:00Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    move_to(&clock, utc("2026-06-01T10:00:00Z"), 1).await;
    // NTP steps the clock four hours ahead: the 11:00 slot runs late, 12:00 to 13:00 were
    // jumped over and are recorded as missed, 14:00 is the next.
    move_to(&clock, utc("2026-06-01T14:10:00Z"), 1).await;
    assert_eq!(
        states_by_time(&db, "hourly").await,
        at_states(&[
            ("10:00", "done"),
            ("11:00", "done"),
            ("12:00", "missed"),
            ("13:00", "missed"),
            ("14:00", "missed"),
        ])
    );
    // The jump (or a pause of the process: they look the same from inside) is named, not
    // blamed on a schedule denser than its backups.
    let why: Vec<Option<String>> = db
        .client()
        .await
        .query(
            "SELECT error FROM backstop_schedule_slots WHERE state = 'missed' ORDER BY slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(why.len(), 3);
    for w in &why {
        let w = w.as_deref().unwrap_or_default();
        assert!(
            w.contains("did not run for") && w.contains("clock was set forward"),
            "{w}"
        );
        assert!(!w.contains("denser"), "{w}");
    }
    assert_eq!(
        loops.metrics.status()["hourly"].next_run,
        Some(utc("2026-06-01T15:00:00Z"))
    );
    // Stepped back two hours: the slots already on record are not run again, and the
    // loop waits for the next one it has not run.
    move_to(&clock, utc("2026-06-01T12:05:00Z"), 1).await;
    move_to(&clock, utc("2026-06-01T13:00:00Z"), 1).await;
    assert_eq!(slots(&db, "hourly").await.len(), 5);
    move_to(&clock, utc("2026-06-01T15:00:00Z"), 1).await;
    let got = states_by_time(&db, "hourly").await;
    assert_eq!(got.last(), Some(&("15:00".to_string(), "done".to_string())));
    assert_eq!(got.len(), 6);
    // One backup per slot done (10:00, 11:00, 15:00), none for a slot run twice.
    assert_eq!(crate::serve::scheduled_backups(&p).len(), 3);
    loops.stop().await;
}

#[tokio::test]
async fn slots_that_passed_with_no_instance_are_missed_and_the_latest_runs_once_at_start() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store, "name = \"hourly\"\ncron = \"0 0 * * * *\"").await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:30:00Z")));
    let first = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    move_to(&clock, utc("2026-06-01T10:00:00Z"), 1).await;
    first.stop().await;
    // Down from 10:00 to 13:30; then a new instance starts.
    clock.set(utc("2026-06-01T13:30:00Z"));
    let since = clock.activity().started;
    let second = start(&p, &clock, "b");
    settled(&clock, 1, since).await;
    assert_eq!(
        states_by_time(&db, "hourly").await,
        at_states(&[
            ("10:00", "done"),
            ("11:00", "missed"),
            ("12:00", "missed"),
            ("13:00", "done"),
        ])
    );
    second.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_database_run_each_slot_once() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"often\"\ncron = \"0 */5 * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:59:00Z")));
    let a = start(&p, &clock, "a");
    let b = start(&p, &clock, "b");
    settled(&clock, 2, 0).await;
    let mut at = utc("2026-06-01T10:00:00Z");
    for _ in 0..6 {
        move_to(&clock, at, 2).await;
        at += TimeDelta::minutes(5);
    }
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT slot, state, instance FROM backstop_schedule_slots WHERE schedule = 'often' ORDER BY slot",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "done"));
    let backups: i64 = c
        .query_one(
            "SELECT count(DISTINCT backup_id) FROM backstop_schedule_slots WHERE schedule = 'often'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        backups, 6,
        "one backup per slot, whichever instance took it"
    );
    let scheduled = crate::serve::scheduled_backups(&p);
    assert_eq!(scheduled.len(), 6);
    a.stop().await;
    b.stop().await;
}

/// The clock the test gives is the one the loops read.
#[test]
fn the_manual_clock_is_a_clock() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(utc("2026-01-01T00:00:00Z")));
    assert_eq!(clock.now(), utc("2026-01-01T00:00:00Z"));
}

#[tokio::test]
async fn schedules_in_odd_offset_zones_fire_at_their_own_wall_clock() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    // 09:00 in Kathmandu (+05:45) and in St. John's (-02:30 in June): read as UTC, either
    // would be hours away.
    let p = project(
        &db,
        &store,
        "name = \"kathmandu\"\ncron = \"0 0 9 * * *\"\ntimezone = \"Asia/Kathmandu\"\ncatch_up = \"none\"\n\n[[schedule]]\nname = \"st_johns\"\ncron = \"0 0 9 * * *\"\ntimezone = \"America/St_Johns\"\ncatch_up = \"none\"",
    )
    .await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T00:00:00Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 2, 0).await;
    for at in [
        "2026-06-01T03:14:59Z",
        "2026-06-01T03:15:00Z",
        "2026-06-01T11:29:59Z",
        "2026-06-01T11:30:00Z",
    ] {
        move_to(&clock, utc(at), 2).await;
    }
    assert_eq!(
        slots(&db, "kathmandu").await,
        [(utc("2026-06-01T03:15:00Z"), "done".to_string())]
    );
    assert_eq!(
        slots(&db, "st_johns").await,
        [(utc("2026-06-01T11:30:00Z"), "done".to_string())]
    );
    loops.stop().await;
}

#[tokio::test]
async fn a_run_longer_than_its_interval_does_not_overlap_and_the_slots_it_outlasted_are_missed() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"often\"\ncron = \"0 * * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:59:30Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    // The table is held, so the 10:00 backup waits; meanwhile three more minutes pass.
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    clock.set(utc("2026-06-01T10:00:00Z"));
    let started = Instant::now();
    while slots(&db, "often").await != [(utc("2026-06-01T10:00:00Z"), "running".to_string())] {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slot never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Precondition: the backup really waits for the table, and no second run starts.
    clock.set(utc("2026-06-01T10:03:30Z"));
    tokio::task::yield_now().await;
    assert_eq!(
        clock.activity().asleep,
        0,
        "the loop is in its run, not asleep"
    );
    let since = clock.activity().started;
    tx.rollback().await.unwrap();
    settled(&clock, 1, since).await;
    assert_eq!(
        states_by_time(&db, "often").await,
        at_states(&[
            ("10:00", "done"),
            ("10:01", "missed"),
            ("10:02", "missed"),
            ("10:03", "missed"),
        ])
    );
    // The schedule goes on with the next slot.
    move_to(&clock, utc("2026-06-01T10:04:00Z"), 1).await;
    assert_eq!(
        slots(&db, "often").await.last(),
        Some(&(utc("2026-06-01T10:04:00Z"), "done".to_string()))
    );
    assert_eq!(crate::serve::scheduled_backups(&p).len(), 2);
    loops.stop().await;
}

#[tokio::test]
async fn a_slot_due_during_a_migration_waits_fails_on_the_lock_and_the_next_runs() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = project(
        &db,
        &store,
        "name = \"often\"\ncron = \"0 * * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    p.set_database_extra("migration_lock_timeout_secs = 1");
    // A migration (here, its lock) is under way.
    let (migrating, key) = crate::serve::hold_migration_lock(&db).await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:59:30Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    move_to(&clock, utc("2026-06-01T10:00:00Z"), 1).await;
    let c = db.client().await;
    let failed: Vec<(String, String)> = c
        .query(
            "SELECT state, error FROM backstop_schedule_slots ORDER BY slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "failed");
    assert!(failed[0].1.contains("migration lock"), "{failed:?}");
    assert!(
        crate::serve::scheduled_backups(&p).is_empty(),
        "a backup ran during the migration"
    );
    migrating
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    move_to(&clock, utc("2026-06-01T10:01:00Z"), 1).await;
    assert_eq!(
        slots(&db, "often").await.last(),
        Some(&(utc("2026-06-01T10:01:00Z"), "done".to_string()))
    );
    assert_eq!(crate::serve::scheduled_backups(&p).len(), 1);
    loops.stop().await;
}

#[tokio::test]
async fn a_record_that_cannot_be_written_after_a_good_backup_is_not_a_failed_slot() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"often\"\ncron = \"0 * * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:59:30Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    // The slot's row can be claimed but not marked done (a fault, injected by a trigger).
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_done() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.state = 'done' THEN RAISE 'no room to record'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER refuse_done BEFORE UPDATE ON backstop_schedule_slots
               FOR EACH ROW EXECUTE FUNCTION refuse_done();",
        )
        .await
        .unwrap();
    move_to(&clock, utc("2026-06-01T10:00:00Z"), 1).await;
    assert_eq!(
        crate::serve::scheduled_backups(&p).len(),
        1,
        "the backup exists"
    );
    let status = &loops.metrics.status()["often"];
    assert_eq!(status.last_result.as_deref(), Some("success"), "{status:?}");
    let metrics = loops.metrics.encode();
    let sample = |series: &str| crate::serve::http::sample(&metrics, series);
    assert_eq!(
        sample("backstop_schedule_runs_total{schedule=\"often\",result=\"success\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample("backstop_schedule_unrecorded_runs_total{schedule=\"often\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"failure\"} 1"), "{metrics}");
    loops.stop().await;
}

#[tokio::test]
async fn webhook_calls_of_successive_slots_arrive_in_order_when_the_receiver_stumbles() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    // The first success call is answered 503, so it goes out again a second later; the next
    // slot's start, due meanwhile, must wait for it.
    let hooks = super::resilience::Receiver::failing_first("/ok", 1);
    let base = format!("http://127.0.0.1:{}", hooks.port);
    let mut p = project(
        &db,
        &store,
        "name = \"minutely\"\ncron = \"0 * * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    p.set_section(
        "notify",
        &format!("on_start = \"{base}/start\"\non_success = \"{base}/ok\""),
    );
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T10:00:30Z")));
    let loops = start(&p, &clock, "a");
    settled(&clock, 1, 0).await;
    move_to(&clock, utc("2026-06-01T10:01:00Z"), 1).await;
    move_to(&clock, utc("2026-06-01T10:02:00Z"), 1).await;
    super::resilience::until(Duration::from_secs(20), "every call", || {
        hooks.count("/start") >= 2 && hooks.count("/ok") >= 3
    })
    .await;
    let calls = hooks.calls();
    let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/start", "/ok", "/ok", "/start", "/ok"],
        "{calls:?}"
    );
    assert_ne!(calls[1].1["backup_id"], calls[4].1["backup_id"]);
    loops.stop().await;
}
