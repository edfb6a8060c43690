//! Schedules: backups every two seconds, one backup per slot across instances, time zones,
//! runs longer than their interval, missed slots, migrations, systemd and signals.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

#[tokio::test]
async fn an_every_two_seconds_schedule_produces_backups_and_stops_cleanly() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (child, _) = start_http(&mut p);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let backups = scheduled_backups(&p);
    assert!(
        backups.len() >= 2,
        "{} scheduled backups\n{stderr}",
        backups.len()
    );
    assert!(backups.iter().all(|b| b["rows"] == 100), "{backups:?}");
    let (done, distinct) = slots_done(&db).await;
    assert_eq!(done as usize, backups.len(), "{stderr}");
    assert_eq!(done, distinct);
}

#[tokio::test]
async fn two_daemons_on_one_database_back_each_slot_up_once() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (a, _) = start_http(&mut p);
    let (b, _) = start_http(&mut p);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (code_a, err_a) = stop(a);
    let (code_b, err_b) = stop(b);
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{err_a}\n{err_b}");
    let backups = scheduled_backups(&p);
    let (done, distinct) = slots_done(&db).await;
    assert!(done >= 3, "{done} slots done\n{err_a}\n{err_b}");
    // One backup per slot: neither instance repeated a slot the other ran.
    assert_eq!(backups.len() as i64, done, "{err_a}\n{err_b}");
    assert_eq!(done, distinct);
}

#[tokio::test]
async fn sigterm_in_the_middle_of_a_large_backup_exits_0_and_leaves_no_partial_backup() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = scheduled(&db, &store).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title, description, user_id)
             SELECT 'task ' || g, md5(g::text) || md5((g * 3)::text), 'u' FROM generate_series(1, 1500000) g",
        )
        .await
        .unwrap();
    let child = start(&p);
    // Wait until a backup is being written: its lease is there, its manifest is not.
    let started = Instant::now();
    loop {
        let keys = store.keys().await;
        let writing = keys.iter().any(|k| k.ends_with("/lease.json"));
        if writing {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no backup started: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let (_, v) = p.json(&["backups", "list"]);
    assert_eq!(v["incomplete"], serde_json::json!([]), "{v}\n{stderr}");
    assert!(
        store
            .keys()
            .await
            .iter()
            .all(|k| !k.contains(".backstop-tmp-")),
        "{:?}",
        store.keys().await
    );
}

#[tokio::test]
async fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    p.set_section("server", &format!("listen = \"127.0.0.1:{}\"", free_port()));
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = p
        .cmd(&["serve"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = socket
            .recv(&mut buf)
            .expect("serve sent nothing to the notify socket");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
}

/// The unit passes `systemd-analyze verify`, and `security --offline=yes` rates it 2.0 or
/// lower (exposure is printed with one decimal; the threshold is in tenths).
#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("systemd-analyze is not installed here; the unit was not checked");
        return;
    }
    let unit = std::fs::read_to_string(repo_root().join("systemd/backstop.service")).unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backstop.service");
    // verify insists that ExecStart's program exists: point it at the built binary.
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/backstop", env!("CARGO_BIN_EXE_backstop")),
    )
    .unwrap();
    let verify = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "{text}");
    assert!(text.contains("Overall exposure level"), "{text}");
}

#[tokio::test]
async fn a_restart_records_missed_slots_and_runs_the_latest_once() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (first, _) = start_http(&mut p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, stderr) = stop(first);
    assert_eq!(code, Some(0), "{stderr}");
    let c = db.client().await;
    let stopped: chrono::DateTime<chrono::Utc> =
        c.query_one("SELECT now()", &[]).await.unwrap().get(0);
    // Three or four slots pass with no instance running.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let restarted: chrono::DateTime<chrono::Utc> =
        c.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let (second, _) = start_http(&mut p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, stderr) = stop(second);
    assert_eq!(code, Some(0), "{stderr}");
    let states: Vec<String> = c
        .query(
            "SELECT state FROM backstop_schedule_slots WHERE schedule = 'fast' AND slot > $1 AND slot <= $2 ORDER BY slot",
            &[&stopped, &restarted],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(states.len() >= 3, "{states:?}\n{stderr}");
    let (last, rest) = states.split_last().unwrap();
    assert_eq!(
        last, "done",
        "the latest missed slot runs at start: {states:?}\n{stderr}"
    );
    assert!(rest.iter().all(|s| s == "missed"), "{states:?}");
    assert!(stderr.contains("passed while no instance ran"), "{stderr}");
}

#[tokio::test]
async fn scheduled_backups_wait_for_migrations_and_never_interleave() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    p.set_database_extra("migration_lock_timeout_secs = 1");
    let parsed =
        backstop::pg::Database::parse(&db.url, &backstop::config::DatabaseConfig::default())
            .unwrap();
    let key = backstop::pg::lock::MigrationLock::key(&parsed, "public");
    // A migration (here, its lock) is under way.
    let migrating = db.client().await;
    migrating
        .query_one("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let child = start(&p);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        scheduled_backups(&p).is_empty(),
        "a backup ran during the migration"
    );
    migrating
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let c = db.client().await;
    let failed: i64 = c
        .query_one(
            "SELECT count(*) FROM backstop_schedule_slots WHERE state = 'failed' AND error LIKE '%migration lock%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failed >= 1, "{stderr}");
    assert!(
        !scheduled_backups(&p).is_empty(),
        "no backup after the migration ended\n{stderr}"
    );
}

/// `S M H * * *` for `at` as the wall clock of `zone` shows it.
fn daily_cron_at(at: chrono::DateTime<chrono::Utc>, zone: chrono_tz::Tz) -> String {
    use chrono::Timelike;
    let local = at.with_timezone(&zone);
    format!(
        "{} {} {} * * *",
        local.second(),
        local.minute(),
        local.hour()
    )
}

#[tokio::test]
async fn schedules_in_other_time_zones_fire_at_their_own_wall_clock() {
    use chrono::{DurationRound, TimeDelta, Utc};
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    // One instant, written as the wall clock of two zones with odd offsets (+05:45, and
    // -03:30 or -02:30): read in UTC either cron would be hours away.
    let at = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() + TimeDelta::seconds(8);
    let zones = [
        ("kathmandu", chrono_tz::Asia::Kathmandu),
        ("st_johns", chrono_tz::America::St_Johns),
    ];
    let entries: Vec<String> = zones
        .iter()
        .map(|(name, zone)| {
            format!(
                "name = \"{name}\"\ncron = \"{}\"\ntimezone = \"{}\"",
                daily_cron_at(at, *zone),
                zone.name()
            )
        })
        .collect();
    // `set_section` writes `[[schedule]]`; the second entry follows in the same section.
    p.set_section("[schedule]", &entries.join("\n\n[[schedule]]\n"));
    let (child, _) = start_http(&mut p);
    while Utc::now() < at + TimeDelta::seconds(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = db
        .client()
        .await
        .query(
            "SELECT schedule, slot, state FROM backstop_schedule_slots ORDER BY schedule",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, chrono::DateTime<Utc>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("kathmandu".to_string(), at, "done".to_string()),
            ("st_johns".to_string(), at, "done".to_string()),
        ],
        "{stderr}"
    );
}

#[tokio::test]
async fn a_run_longer_than_its_interval_neither_overlaps_nor_stops_the_schedule() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = scheduled(&db, &store).await;
    // Holding the table makes the first backup wait about 7 s on a 2 s schedule.
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let child = start(&p);
    tokio::time::sleep(Duration::from_secs(7)).await;
    tx.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let c = db.client().await;
    let runs: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = c
        .query(
            "SELECT started_at, finished_at FROM backstop_schedule_slots
             WHERE state = 'done' ORDER BY slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The first run waited for the table; runs followed it; none overlapped another.
    assert!(runs.len() >= 3, "{runs:?}\n{stderr}");
    let longest = runs.iter().map(|(s, f)| *f - *s).max().unwrap();
    assert!(longest >= chrono::TimeDelta::seconds(3), "{runs:?}");
    for pair in runs.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlap: {pair:?}");
    }
    let missed: i64 = c
        .query_one(
            "SELECT count(*) FROM backstop_schedule_slots WHERE state = 'missed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(missed >= 1, "{stderr}");
    assert!(stderr.contains("passed while slot"), "{stderr}");
    assert_eq!(scheduled_backups(&p).len(), runs.len());
}

#[tokio::test]
async fn a_bad_cron_time_zone_or_table_stops_serve_at_start_naming_the_schedule() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    for (entry, says) in [
        (
            "name = \"nightly\"\ncron = \"0 3 * * *\"",
            "[[schedule]] \"nightly\": cron \"0 3 * * *\" is not a six-field expression",
        ),
        (
            "name = \"berlin\"\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Berlim\"",
            "[[schedule]] \"berlin\": timezone \"Europe/Berlim\" is not an IANA time zone",
        ),
        (
            "name = \"hourly\"\ncron = \"0 0 * * * *\"\ntables = [\"tasks\", \"nope\"]",
            "[[schedule]] \"hourly\" names table \"nope\"",
        ),
    ] {
        p.set_section("[schedule]", entry);
        let out = exit_within(
            start(&p),
            Duration::from_secs(30),
            "serve with a bad schedule",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "missing {says:?} in\n{stderr}");
    }
    assert!(scheduled_backups(&p).is_empty());
}
