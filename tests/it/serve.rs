//! `serve`, the real binary as a daemon: schedules that produce backups, several instances
//! on one database backing each slot up once, and a clean stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A project whose one schedule fires every two seconds.
async fn scheduled(db: &TestDb, store: &TestStore) -> Project {
    let mut p = Project::new(db);
    p.use_store(store);
    // The section name becomes `[[schedule]]` in the file.
    p.set_section("[schedule]", "name = \"fast\"\ncron = \"*/2 * * * * *\"");
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title, user_id) SELECT 'task ' || g, 'u' FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    p
}

/// A free loopback port for one daemon's HTTP side.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve` with an HTTP port of its own; returns the process and the port.
fn start_http(p: &mut Project) -> (Child, u16) {
    let port = free_port();
    p.set_section("server", &format!("listen = \"127.0.0.1:{port}\""));
    let child = start(p);
    // Until it listens, it may not have read its configuration: the next start rewrites it.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

fn start(p: &Project) -> Child {
    let child = p
        .cmd(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Precondition: the process is the binary itself, not a shell around it.
    let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
    assert!(exe.ends_with("backstop"), "{exe:?}");
    child
}

/// SIGTERM, then the exit code and stderr; fails if it does not end within 15 s.
fn stop(child: Child) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = exit_within(child, Duration::from_secs(15), "serve after SIGTERM");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn slots_done(db: &TestDb) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(DISTINCT slot) FILTER (WHERE state = 'done')
             FROM backstop_schedule_slots WHERE schedule = 'fast'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn scheduled_backups(p: &Project) -> Vec<serde_json::Value> {
    let (_, v) = p.json(&["backups", "list"]);
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "scheduled")
        .cloned()
        .collect()
}

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
async fn a_hangup_does_not_stop_the_daemon() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (mut child, _) = start_http(&mut p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended serve");
    let before = scheduled_backups(&p).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGHUP"), "{stderr}");
    assert!(
        scheduled_backups(&p).len() > before,
        "no backup after the hangup\n{stderr}"
    );
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

/// `GET path` over plain HTTP/1.1: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn health_readiness_metrics_and_status_over_http() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (child, port) = start_http(&mut p);
    // Wait for the HTTP side, then for a run to show in the metrics.
    let started = Instant::now();
    let mut metrics = String::new();
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            let (code, body) = get(port, "/metrics");
            assert_eq!(code, 200, "{body}");
            metrics = body;
            let runs = sample(
                &metrics,
                "backstop_schedule_runs_total{schedule=\"fast\",result=\"success\"}",
            );
            if runs.unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no successful run in the metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);
    for series in [
        "backstop_schedule_last_success_timestamp_seconds{schedule=\"fast\"}",
        "backstop_schedule_last_duration_seconds{schedule=\"fast\"}",
        "backstop_schedule_next_run_timestamp_seconds{schedule=\"fast\"}",
        "backstop_backup_rows_total{schedule=\"fast\"}",
        "backstop_backup_bytes_total{schedule=\"fast\"}",
        "backstop_schedule_missed_slots_total{schedule=\"fast\"}",
        "backstop_backups_in_store",
    ] {
        assert!(
            sample(&metrics, series).is_some(),
            "no {series} in\n{metrics}"
        );
    }
    assert!(sample(&metrics, "backstop_backup_rows_total{schedule=\"fast\"}").unwrap() >= 100.0);
    assert!(
        metrics.contains("backstop_build_info{version="),
        "{metrics}"
    );
    let (code, status) = get(port, "/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["schedules"]["fast"]["last_result"], "success",
        "{status}"
    );
    let (code, listed) = get(port, "/v1/backups");
    assert_eq!(code, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        !listed["backups"].as_array().unwrap().is_empty(),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&db.url), "{listed}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}
