//! `serve`, the real binary as a daemon: schedules, several instances on one database,
//! systemd, signals, HTTP, webhooks, reload and dependencies that go away. The helpers here
//! start and stop it the way systemd would and read what it left behind.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub(crate) mod clock;
mod flood;
mod http;
mod lost;
pub(crate) mod resilience;
mod schedules;

/// A project whose one schedule fires every two seconds.
pub async fn scheduled(db: &TestDb, store: &TestStore) -> Project {
    let mut p = Project::new(db);
    p.use_store(store);
    // The section name becomes `[[schedule]]` in the file.
    p.set_section("[schedule]", "name = \"fast\"\ncron = \"*/2 * * * * *\"");
    // Tests run side by side: each daemon gets an HTTP port of its own.
    p.set_section("server", &format!("listen = \"127.0.0.1:{}\"", free_port()));
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

/// Takes the migration lock of `db`'s public schema, as a running migration holds it:
/// the session holding it, and its key for `pg_advisory_unlock`.
pub async fn hold_migration_lock(db: &TestDb) -> (tokio_postgres::Client, i64) {
    let parsed =
        backstop::pg::Database::parse(&db.url, &backstop::config::DatabaseConfig::default())
            .unwrap();
    let key = backstop::pg::lock::MigrationLock::key(&parsed, "public");
    let migrating = db.client().await;
    migrating
        .query_one("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    (migrating, key)
}

/// A free loopback port for one daemon's HTTP side.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve` with an HTTP port of its own; returns the process and the port.
pub fn start_http(p: &mut Project) -> (Child, u16) {
    let port = free_port();
    p.set_section("server", &format!("listen = \"127.0.0.1:{port}\""));
    let child = start(p);
    // Until it listens, it may not have read its configuration: the next start rewrites it.
    wait_listening(port);
    (child, port)
}

/// Waits (at most 30 s) until something listens on the loopback `port`.
pub fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start(p: &Project) -> Child {
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
pub fn stop(child: Child) -> (Option<i32>, String) {
    send_signal(child.id(), "-TERM");
    let out = exit_within(child, Duration::from_secs(15), "serve after SIGTERM");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Slots of `fast` done, and the distinct backups they name: equal when no two slots share
/// one backup.
pub async fn slots_done(db: &TestDb) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(DISTINCT backup_id) FILTER (WHERE state = 'done')
             FROM backstop_schedule_slots WHERE schedule = 'fast'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The backups the done slots of `fast` name.
pub async fn slot_backup_ids(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT backup_id FROM backstop_schedule_slots WHERE schedule = 'fast' AND state = 'done'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn scheduled_backups(p: &Project) -> Vec<serde_json::Value> {
    let (_, v) = p.json(&["backups", "list"]);
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "scheduled")
        .cloned()
        .collect()
}
