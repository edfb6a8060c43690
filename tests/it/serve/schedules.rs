//! The real binary on the real clock: a schedule producing backups, migrations it waits
//! for, systemd and signals. How slots follow the clock (time zones, daylight saving, jumps,
//! overruns, missed slots, several instances) is tested in-process in `clock.rs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

#[tokio::test]
async fn an_every_two_seconds_schedule_produces_backups_and_stops_cleanly() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (child, _) = start_http(&mut p);
    let started = std::time::Instant::now();
    while scheduled_backups(&p).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no two scheduled backups"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let backups = scheduled_backups(&p);
    assert!(
        backups.len() >= 2,
        "{} scheduled backups\n{stderr}",
        backups.len()
    );
    assert!(backups.iter().all(|b| b["rows"] == 100), "{backups:?}");
    // Each slot done names its own backup, and that backup is in the store.
    let (done, distinct) = slots_done(&db).await;
    assert_eq!(done as usize, backups.len(), "{stderr}");
    assert_eq!(done, distinct);
    let ids = slot_backup_ids(&db).await;
    assert!(
        ids.iter().all(|id| backups.iter().any(|b| b["id"] == *id)),
        "{ids:?} {backups:?}"
    );
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
    // scripts/test installs it (Debian's systemd package); a test that skipped would pass
    // having checked nothing.
    assert!(
        analyze.exists(),
        "systemd-analyze is missing; scripts/test installs Debian's systemd package, or install it by hand"
    );
    let unit = std::fs::read_to_string(repo_root().join("systemd/backstop.service")).unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    // Idle sockets must not take the descriptors a backup needs (1024 is a shell's limit).
    assert!(unit.contains("\nLimitNOFILE=65536\n"), "{unit}");
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
async fn what_no_retry_can_cure_stops_serve_at_start_and_a_missing_table_does_not() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let good = "name = \"nightly\"\ncron = \"0 0 3 * * *\"";
    for (schedule, section, body, says) in [
        (
            "name = \"nightly\"\ncron = \"0 3 * * *\"",
            "",
            "",
            "[[schedule]] \"nightly\": cron \"0 3 * * *\" is not a six-field expression",
        ),
        (
            "name = \"berlin\"\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Berlim\"",
            "",
            "",
            "[[schedule]] \"berlin\": timezone \"Europe/Berlim\" is not an IANA time zone",
        ),
        (good, "storage", "url = \"gs://bucket/backups\"", "gs://"),
        (
            good,
            "server",
            "listen = \"localhost\"",
            "[server] listen \"localhost\"",
        ),
    ] {
        p.set_section("[schedule]", schedule);
        if !section.is_empty() {
            p.set_section(section, body);
        }
        let out = exit_within(
            start(&p),
            Duration::from_secs(30),
            "serve with a bad config",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{says}: {stderr}");
        assert!(stderr.contains(says), "missing {says:?} in\n{stderr}");
        p.use_store(&store);
        p.set_section("server", &format!("listen = \"127.0.0.1:{}\"", free_port()));
    }
    // No database at all: nothing to retry.
    let mut none = Project::empty("");
    none.use_store(&store);
    none.set_section("[schedule]", good);
    let out = exit_within(
        start(&none),
        Duration::from_secs(30),
        "serve without a database",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[database] url is not set"), "{stderr}");
    assert!(scheduled_backups(&p).is_empty());

    // A table the first migration has not made yet: serve comes up, says so, and each
    // slot fails naming it until it exists.
    p.set_section(
        "[schedule]",
        "name = \"fast\"\ncron = \"*/2 * * * * *\"\ntables = [\"tasks\", \"later\"]",
    );
    let child = start(&p);
    let c = db.client().await;
    let started = std::time::Instant::now();
    let failed = loop {
        let row = c
            .query_opt(
                "SELECT error FROM backstop_schedule_slots WHERE schedule = 'fast' AND state = 'failed' LIMIT 1",
                &[],
            )
            .await
            .ok()
            .flatten();
        if let Some(row) = row {
            break row.get::<_, String>(0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no slot failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(failed.contains("later"), "{failed}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("names table \"later\""), "{stderr}");
}

#[tokio::test]
async fn manual_backups_wait_for_migrations_too_and_sigterm_ends_a_wait_for_the_lock() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    p.set_database_extra("migration_lock_timeout_secs = 1");
    // A migration (here, its lock) is under way.
    let (migrating, key) = crate::serve::hold_migration_lock(&db).await;
    // `backstop backup` during a migration: refused after the wait, nothing stored.
    let r = p.run(&["backup"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("migration lock"), "{r}");
    let (_, v) = p.json(&["backups", "list"]);
    assert!(v["backups"].as_array().unwrap().is_empty(), "{v}");

    // A slot waiting for the lock (a long wait now) ends at SIGTERM, cleanly.
    p.set_database_extra("migration_lock_timeout_secs = 600");
    let child = start(&p);
    let c = db.client().await;
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = c
            .query_one(
                "SELECT count(*) FROM backstop_schedule_slots WHERE state = 'running'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no slot started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, stderr) = stop(child);
    assert_eq!(
        code,
        Some(0),
        "the wait ended with the signal, not the grace: {stderr}"
    );
    assert!(!stderr.contains("was abandoned"), "{stderr}");
    migrating
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    p.ok(&["backup"]);
}
