//! Slots whose instance died (kill -9, OOM, power loss) with the slot claimed: the next
//! instance that looks marks them failed (`instance_lost`), counts and notifies them, and
//! with `catch_up = "latest"` runs the latest of them again, once. In-process, on a clock
//! the test moves.

use std::sync::Arc;
use std::time::Duration;

use backstop::serve::ManualClock;

use super::clock::{at_states, project, settled, start, states_by_time, utc};
use super::resilience::{until, Receiver};
use crate::common::*;

#[tokio::test]
async fn slots_of_a_dead_instance_are_failed_counted_notified_and_the_latest_runs_again() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = project(
        &db,
        &store,
        "name = \"hourly\"\ncron = \"0 0 * * * *\"\ncatch_up = \"latest\"",
    )
    .await;
    let hooks = Receiver::start();
    p.set_section(
        "notify",
        &format!("on_failure = \"http://127.0.0.1:{}/fail\"", hooks.port),
    );
    // An instance ran 09:00, claimed 10:00 and 09:30's extra slot, and died: its rows say
    // running, and it stopped beating five minutes ago. Another instance's slot that beats
    // is left alone.
    let c = db.client().await;
    backstop::ledger::Ledger::new("public")
        .ensure_slots(&c)
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO backstop_schedule_slots (schedule, slot, state, instance, started_at, heartbeat_at) VALUES
           ('hourly', '2026-06-01T09:00:00Z', 'done', 'dead:1', now() - interval '2 hours', NULL),
           ('hourly', '2026-06-01T10:00:00Z', 'running', 'dead:1', now() - interval '30 minutes', now() - interval '5 minutes'),
           ('other', '2026-06-01T10:00:00Z', 'running', 'alive:2', now() - interval '30 minutes', now())",
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T10:30:00Z")));
    let loops = start(&p, &clock, "b");
    settled(&clock, 1, 0).await;
    // 10:00 was failed as lost, then run again by this instance.
    assert_eq!(
        states_by_time(&db, "hourly").await,
        at_states(&[("09:00", "done"), ("10:00", "done")])
    );
    let instance: String = c
        .query_one(
            "SELECT instance FROM backstop_schedule_slots WHERE schedule = 'hourly' AND slot = '2026-06-01T10:00:00Z'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(instance, "b");
    let other: String = c
        .query_one(
            "SELECT state FROM backstop_schedule_slots WHERE schedule = 'other'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, "running", "a slot whose instance beats is not lost");
    let text = loops.metrics.encode();
    assert!(
        text.contains(
            "backstop_schedule_failures_total{schedule=\"hourly\",reason=\"instance_lost\"} 1"
        ),
        "{text}"
    );
    // on_failure heard of it, naming the instance.
    until(Duration::from_secs(30), "an on_failure call", || {
        hooks.count("/fail") >= 1
    })
    .await;
    let (_, call) = &hooks.calls()[0];
    assert_eq!(call["event"], "failure", "{call}");
    let error = call["error"].as_str().unwrap();
    assert!(
        error.starts_with("instance_lost: instance dead:1"),
        "{error}"
    );
    loops.stop().await;
}

#[tokio::test]
async fn a_lost_slot_that_is_not_the_latest_stays_failed_with_its_reason() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store, "name = \"hourly\"\ncron = \"0 0 * * * *\"").await;
    let c = db.client().await;
    backstop::ledger::Ledger::new("public")
        .ensure_slots(&c)
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO backstop_schedule_slots (schedule, slot, state, instance, started_at, heartbeat_at) VALUES
           ('hourly', '2026-06-01T10:00:00Z', 'running', 'dead:1', now() - interval '2 hours', now() - interval '2 hours')",
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T11:30:00Z")));
    let loops = start(&p, &clock, "b");
    settled(&clock, 1, 0).await;
    let row = c
        .query_one(
            "SELECT state, error FROM backstop_schedule_slots WHERE schedule = 'hourly' AND slot = '2026-06-01T10:00:00Z'",
            &[],
        )
        .await
        .unwrap();
    let (state, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(state, "failed");
    assert!(
        error.starts_with("instance_lost: instance dead:1"),
        "{error}"
    );
    // 11:00 passed with nobody running: the newer slot is the one caught up (catch_up =
    // "latest" by default), and 10:00 is not run again after it.
    assert_eq!(
        states_by_time(&db, "hourly").await,
        at_states(&[("10:00", "failed"), ("11:00", "done")])
    );
    loops.stop().await;
}

#[tokio::test]
async fn a_slots_table_from_before_heartbeats_gets_its_column_and_keeps_its_rows() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        "name = \"hourly\"\ncron = \"0 0 * * * *\"\ncatch_up = \"none\"",
    )
    .await;
    // The table as earlier versions made it: no heartbeat column.
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE backstop_schedule_slots (
             schedule text NOT NULL, slot timestamptz NOT NULL, state text NOT NULL,
             backup_id text, instance text, error text,
             started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz,
             PRIMARY KEY (schedule, slot));
         INSERT INTO backstop_schedule_slots (schedule, slot, state, instance)
         VALUES ('hourly', '2026-06-01T09:00:00Z', 'done', 'old:1');",
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(utc("2026-06-01T09:30:00Z")));
    let loops = start(&p, &clock, "new");
    settled(&clock, 1, 0).await;
    super::clock::move_to(&clock, utc("2026-06-01T10:00:00Z"), 1).await;
    assert_eq!(
        states_by_time(&db, "hourly").await,
        at_states(&[("09:00", "done"), ("10:00", "done")])
    );
    let beats: i64 = c
        .query_one(
            "SELECT count(heartbeat_at) FROM backstop_schedule_slots WHERE instance = 'new'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(beats, 1, "the new slot carries a heartbeat");
    loops.stop().await;
}
