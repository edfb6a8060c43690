//! The daemon attacked through its HTTP port as the internet would: more idle sockets than
//! its file descriptors allow. The schedules go on, health answers, idle sockets are closed.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use crate::common::TestDb;

/// Polls (at most 30 s) until `done` says it is so.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server has closed `s` (whatever it sent before).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Slots done so far (none before the daemon has made its table).
async fn done_so_far(db: &TestDb) -> i64 {
    let c = db.client().await;
    let made: bool = c
        .query_one(
            "SELECT to_regclass('backstop_schedule_slots') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if made {
        slots_done(db).await.0
    } else {
        0
    }
}

/// The figures a flood is judged by: sessions on the test database now, and the latest any
/// slot started after it was due, in seconds.
async fn figures(db: &TestDb) -> (i64, f64) {
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()),
                    (SELECT coalesce(max(extract(epoch FROM started_at - slot)), 0)::float8 FROM backstop_schedule_slots)",
            &[&db.name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn eleven_hundred_idle_sockets_neither_stop_the_schedules_nor_health() {
    // This test holds 1,100 sockets of its own.
    rlimit::increase_nofile_limit(4096).unwrap();
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let port = free_port();
    p.set_section(
        "server",
        &format!("listen = \"127.0.0.1:{port}\"\nmax_connections = 32\nidle_timeout_secs = 2"),
    );
    let child = start(&p);
    wait_listening(port);
    // As a shell would leave it, and as the unit did before it set LimitNOFILE: 1024 at most,
    // so the sockets below are more than the process may open.
    rlimit::prlimit(
        child.id() as i32,
        rlimit::Resource::NOFILE,
        Some((1024, 1024)),
        None,
    )
    .unwrap();
    until("a first slot done", || async {
        done_so_far(&db).await >= 1
    })
    .await;
    let done = done_so_far(&db).await;

    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let pid = child.id();
    assert!(
        open_descriptors(pid) < 200,
        "the daemon holds {} descriptors with the flood open",
        open_descriptors(pid)
    );
    // Scheduled backups go on while the sockets are held: two more slots done, none failed.
    until("two more slots done", || async {
        done_so_far(&db).await >= done + 2
    })
    .await;
    let failed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM backstop_schedule_slots WHERE state <> 'done'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
    let (sessions, late) = figures(&db).await;
    eprintln!(
        "1,100 idle sockets: {} descriptors, {sessions} database sessions, slots at most {late:.2} s late",
        open_descriptors(pid)
    );
    // The sockets that were let in and said nothing are closed once idle too long.
    let mut open: Vec<TcpStream> = idle;
    until("the idle sockets closed", || {
        open.retain_mut(|s| !closed(s));
        let all = open.is_empty();
        async move { all }
    })
    .await;
    // And health answers while the flood's sockets are still open on this side.
    let (status, body) = http::get(port, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("closed on arrival"), "{stderr}");
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}

/// The most the process has been resident, from the kernel's own count.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn four_hundred_backup_lists_at_once_keep_the_daemon_small_and_on_schedule() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    p.set_section("[schedule]", "name = \"fast\"\ncron = \"*/2 * * * * *\"");
    // Twenty backups, one of them with a 2 MB label (as someone who can write the store, or
    // a careless script, could leave it).
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            p.ok(&["backup"])
                .stdout
                .lines()
                .next()
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    let key = format!("{}/manifest.json", ids[0]);
    let mut manifest: serde_json::Value = serde_json::from_slice(&store.read(&key).await).unwrap();
    manifest["label"] = serde_json::Value::String("x".repeat(2 << 20));
    store
        .write(&key, serde_json::to_vec(&manifest).unwrap())
        .await;

    let port = free_port();
    p.set_section(
        "server",
        &format!("listen = \"127.0.0.1:{port}\"\nmax_connections = 500"),
    );
    let child = start(&p);
    wait_listening(port);
    let pid = child.id();
    until("a first slot done", || async {
        done_so_far(&db).await >= 1
    })
    .await;
    let done = done_so_far(&db).await;
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..400)
            .map(|_| {
                s.spawn(move || {
                    // A socket the kernel resets under this load is asked again once, as a
                    // scraper would at its next interval; the answer must then come.
                    let get = || {
                        std::panic::catch_unwind(|| http::get(port, "/v1/backups"))
                            .unwrap_or((0, String::new()))
                    };
                    match get() {
                        (0, _) => get(),
                        answer => answer,
                    }
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // Every request was served, each answer names every backup, and none carries the label.
    let bad = answers.iter().filter(|(status, _)| *status != 200).count();
    if bad > 0 {
        let (_, stderr) = stop(child);
        panic!("{bad} of 400 requests got no answer; the daemon said: {stderr}");
    }
    let (_, body) = &answers[0];
    let listed: serde_json::Value = serde_json::from_str(body).unwrap();
    let manual = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "manual")
        .count();
    assert_eq!(manual, 20, "{body:.400}");
    assert!(body.len() < 64 * 1024, "an answer of {} bytes", body.len());
    let peak = peak_rss_kib(pid);
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    until("two more slots done", || async {
        done_so_far(&db).await >= done + 2
    })
    .await;
    let (sessions, late) = figures(&db).await;
    eprintln!(
        "400 lists at once: peak RSS {} MiB, {sessions} database sessions, slots at most {late:.2} s late",
        peak / 1024
    );
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}
