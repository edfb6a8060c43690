//! What happens around the daemon: a reload with a good or a bad file, webhooks told of
//! starts, successes and failures, a store that goes away, a database stopped and started
//! under it, and logs written for the journal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{get, sample};
use super::*;
use crate::cluster::Cluster;

fn hangup(child: &std::process::Child) {
    send_signal(child.id(), "-HUP");
}

/// Scheduled backups of one schedule (its backups carry the label `schedule NAME` unless
/// the schedule sets one).
fn backups_of(p: &Project, schedule: &str) -> usize {
    let label = match schedule {
        "other" => "after the reload".to_string(),
        _ => format!("schedule {schedule}"),
    };
    scheduled_backups(p)
        .iter()
        .filter(|b| b["label"] == label.as_str())
        .count()
}

/// Polls `what` every 200 ms until it holds; fails after `limit`.
pub async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_reload_replaces_the_schedules_and_a_bad_file_keeps_them() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let (child, port) = start_http(&mut p);
    until(Duration::from_secs(20), "a first backup", || {
        backups_of(&p, "fast") >= 1
    })
    .await;

    // A file with a broken cron: logged, and the old schedule goes on.
    p.set_section(
        "[schedule]",
        "name = \"fast\"\ncron = \"every two seconds\"",
    );
    hangup(&child);
    let before = backups_of(&p, "fast");
    until(
        Duration::from_secs(20),
        "a backup after the bad reload",
        || backups_of(&p, "fast") > before,
    )
    .await;

    // A table that is not there (yet): taken, with a warning, and its slots fail naming it.
    p.set_section(
        "[schedule]",
        "name = \"fast\"\ncron = \"*/2 * * * * *\"\ntables = [\"taks\"]",
    );
    hangup(&child);
    let c = db.client().await;
    let failed_fast = || async {
        c.query_one(
            "SELECT count(*) FROM backstop_schedule_slots WHERE schedule = 'fast' AND state = 'failed' AND error LIKE '%taks%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let started = std::time::Instant::now();
    while failed_fast().await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no slot failed on the missing table"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A good file: the new schedule runs and the old one stops.
    p.set_section(
        "[schedule]",
        "name = \"other\"\ncron = \"*/2 * * * * *\"\nlabel = \"after the reload\"",
    );
    hangup(&child);
    until(
        Duration::from_secs(20),
        "a backup of the new schedule",
        || backups_of(&p, "other") >= 1,
    )
    .await;
    let fast_slots = "SELECT count(*) FROM backstop_schedule_slots WHERE schedule = 'fast'";
    let fast: i64 = c.query_one(fast_slots, &[]).await.unwrap().get(0);
    // Two more slots of the new schedule pass: none of the old one.
    until(
        Duration::from_secs(20),
        "two more backups of the new schedule",
        || backups_of(&p, "other") >= 3,
    )
    .await;
    let now: i64 = c.query_one(fast_slots, &[]).await.unwrap().get(0);
    assert_eq!(now, fast, "the replaced schedule still runs");
    let (code, status) = get(port, "/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let names: Vec<&String> = status["schedules"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["other"], "{status}");

    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the new configuration is not usable, so the running one is kept"),
        "{stderr}"
    );
    assert!(stderr.contains("every two seconds"), "{stderr}");
    assert!(
        stderr.contains("[[schedule]] \"fast\" names table \"taks\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("their slots fail until the tables exist"),
        "{stderr}"
    );
    assert!(stderr.contains("now [other]"), "{stderr}");
}

/// A loopback webhook receiver: every POST's path and JSON body, in arrival order.
pub(crate) struct Receiver {
    pub port: u16,
    calls: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::failing_first("", 0)
    }

    /// A receiver that answers the first `times` calls to `path` with 503 (and records
    /// them too), as a receiver briefly down would.
    pub fn failing_first(path: &str, times: usize) -> Receiver {
        let failing = path.to_string();
        let mut left = times;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let seen = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let fail = path == failing && left > 0;
                seen.lock().unwrap().push((path, json));
                let answer: &[u8] = if fail {
                    left -= 1;
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(answer);
            }
        });
        Receiver { port, calls }
    }

    pub fn calls(&self) -> Vec<(String, serde_json::Value)> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.calls().iter().filter(|(p, _)| p == path).count()
    }
}

#[tokio::test]
async fn webhooks_hear_of_starts_successes_and_a_store_that_is_down() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let hooks = Receiver::start();
    let base = format!("http://127.0.0.1:{}", hooks.port);
    p.set_section(
        "notify",
        &format!(
            "on_start = \"{base}/start\"\non_success = \"{base}/ok\"\non_failure = \"{base}/fail\""
        ),
    );
    let (child, port) = start_http(&mut p);
    until(Duration::from_secs(20), "start and success calls", || {
        hooks.count("/start") >= 1 && hooks.count("/ok") >= 1
    })
    .await;
    let calls = hooks.calls();
    let first_start = calls.iter().position(|(p, _)| p == "/start").unwrap();
    let first_ok = calls.iter().position(|(p, _)| p == "/ok").unwrap();
    assert!(first_start < first_ok, "{calls:?}");
    let (_, start) = &calls[first_start];
    assert_eq!(start["event"], "start");
    assert_eq!(start["schedule"], "fast");
    let (_, ok) = &calls[first_ok];
    assert_eq!(ok["event"], "success", "{ok}");
    assert_eq!(ok["rows"], 100, "{ok}");
    assert!(ok["bytes"].as_u64().unwrap() > 0, "{ok}");
    assert!(ok["duration_seconds"].as_f64().is_some(), "{ok}");
    let id = ok["backup_id"].as_str().unwrap().to_string();
    assert!(
        scheduled_backups(&p).iter().any(|b| b["id"] == id.as_str()),
        "{id} is not in the store"
    );

    // The store goes away: a file where its directory was.
    let TestStore::Dir(dir) = &store else {
        unreachable!()
    };
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path(), "not a directory").unwrap();
    until(Duration::from_secs(20), "a failure call", || {
        hooks.count("/fail") >= 1
    })
    .await;
    let (_, failed) = hooks
        .calls()
        .into_iter()
        .find(|(p, _)| p == "/fail")
        .unwrap();
    assert_eq!(failed["event"], "failure", "{failed}");
    assert!(failed["backup_id"].is_null(), "{failed}");
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    let (_, metrics) = get(port, "/metrics");
    let failures = sample(
        &metrics,
        "backstop_schedule_failures_total{schedule=\"fast\",reason=\"store_unavailable\"}",
    );
    assert!(failures.unwrap_or(0.0) >= 1.0, "{metrics}");
    // Still serving after failures.
    assert_eq!(get(port, "/healthz").0, 200);
    let (code, stderr) = stop(child);
    std::fs::remove_file(dir.path()).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("failed (store_unavailable)"), "{stderr}");
    // The URLs' paths stand for secrets: the log names hosts at most.
    for (path, _) in hooks.calls() {
        assert!(!stderr.contains(&format!("{base}{path}")), "{stderr}");
    }
    for (_, body) in hooks.calls() {
        assert!(!body.to_string().contains(&db.url), "{body}");
    }
}

#[tokio::test]
async fn a_database_stopped_and_started_under_the_daemon_is_survived() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let store = TestStore::dir();
    let mut p = Project::empty(&url);
    copy_dir(&repo_root().join("migrations"), &p.migrations());
    p.use_store(&store);
    p.set_section("[schedule]", "name = \"fast\"\ncron = \"*/2 * * * * *\"");
    p.set_database_extra("connect_timeout_secs = 2");
    p.ok(&["upgrade"]);
    connect(&url)
        .await
        .batch_execute(
            "INSERT INTO tasks (title, user_id) SELECT 'task ' || g, 'u' FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let (mut child, port) = start_http(&mut p);
    until(Duration::from_secs(20), "a first backup", || {
        backups_of(&p, "fast") >= 1
    })
    .await;

    cluster.stop();
    // Until a slot has failed on the missing database (and readiness says so).
    let down = Instant::now();
    let failed =
        "backstop_schedule_failures_total{schedule=\"fast\",reason=\"database_unavailable\"}";
    let readiness = loop {
        let readiness = get(port, "/readyz");
        let (_, metrics) = get(port, "/metrics");
        if readiness.0 == 503 && sample(&metrics, failed).unwrap_or(0.0) >= 1.0 {
            break readiness;
        }
        assert!(
            down.elapsed() < Duration::from_secs(30),
            "no failed slot while the database was down: {readiness:?}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    assert_eq!(readiness.0, 503, "{readiness:?}");
    assert!(readiness.1.contains("database"), "{readiness:?}");

    cluster.start_again();
    let before = backups_of(&p, "fast");
    until(
        Duration::from_secs(30),
        "a backup after the restart",
        || backups_of(&p, "fast") > before,
    )
    .await;
    assert_eq!(get(port, "/readyz").0, 200);
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("failed (database_unavailable)"), "{stderr}");
    // The slots that failed while the database was down are on record now, with why.
    let unrecorded: i64 = connect(&url)
        .await
        .query_one(
            "SELECT count(*) FROM backstop_schedule_slots
             WHERE schedule = 'fast' AND state = 'failed' AND error LIKE 'the slot could not be put on record: %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(unrecorded >= 1, "{stderr}");
}

#[tokio::test]
async fn under_the_journal_each_line_carries_its_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    p.set_section("server", &format!("listen = \"127.0.0.1:{}\"", free_port()));
    // systemd names the stream it connected in JOURNAL_STREAM (device:inode); a file
    // stands in for the journal's socket.
    let log = tempfile::NamedTempFile::new().unwrap();
    let meta = log.as_file().metadata().unwrap();
    let child = p
        .cmd(&["serve"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .contains("backed up as")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no backup logged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>serving 1 schedule")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.contains("backed up as")), "{text}");
    for line in &lines {
        let priority = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "{line:?} in\n{text}"
        );
        assert!(!line.contains("\u{1b}["), "colour in {line:?}");
        assert!(!line.contains(" INFO ") && !line.contains("Z "), "{line:?}");
    }
}

#[tokio::test]
async fn a_webhook_that_never_answers_neither_fails_nor_delays_backups() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    // Accepts connections and never answers: the worst receiver, a stalled one.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let url = format!("http://127.0.0.1:{port}/hook");
    p.set_section(
        "notify",
        &format!("on_start = \"{url}\"\non_success = \"{url}\"\non_failure = \"{url}\""),
    );
    let (child, _) = start_http(&mut p);
    let c = db.client().await;
    let states = || async {
        // The daemon creates the table on its first slot.
        c.query(
            "SELECT state FROM backstop_schedule_slots WHERE schedule = 'fast' ORDER BY slot",
            &[],
        )
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
    };
    // Three slots in a row, while every call hangs for its 5 s timeout: a slot that waited
    // for a webhook would make the next ones be missed.
    let started = std::time::Instant::now();
    while states().await.iter().filter(|s| *s == "done").count() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            states().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    let states = states().await;
    assert!(
        states.iter().all(|s| s == "done"),
        "a slot failed or was missed while webhooks hung: {states:?}\n{stderr}"
    );
    assert!(stderr.contains("did not answer within 5s"), "{stderr}");
    assert!(!stderr.contains("/hook"), "the URL is logged:\n{stderr}");

    // Shutdown waits for those calls (at most 5 s); a second SIGTERM does not wait.
    let child = start(&p);
    let pid = child.id();
    let started = std::time::Instant::now();
    let before = scheduled_backups(&p).len();
    while scheduled_backups(&p).len() == before {
        assert!(started.elapsed() < Duration::from_secs(30), "no backup");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        send_signal(pid, "-TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = exit_within(child, Duration::from_secs(15), "serve after two SIGTERMs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted twice"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[tokio::test]
async fn at_the_most_verbose_level_no_line_carries_a_webhook_credential() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    let hooks = Receiver::start();
    p.set_section(
        "notify",
        &format!(
            "on_success = \"http://hookuser:hookpass@127.0.0.1:{}/ok\"",
            hooks.port
        ),
    );
    let child = p
        .cmd(&["-vv", "serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until(Duration::from_secs(20), "a success call", || {
        hooks.count("/ok") >= 1
    })
    .await;
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    // -vv took effect: backstop's own debug lines are there.
    assert!(stderr.contains("open files limit"), "{stderr}");
    assert!(!stderr.contains("hookpass"), "{stderr}");
    assert!(!stderr.contains("hookuser"), "{stderr}");
}

#[tokio::test]
async fn a_daemon_whose_store_refuses_its_credentials_fails_counts_and_notifies_every_slot() {
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let mut p = scheduled(&db, &store).await;
    // The key is right, the secret is not: every request is refused.
    p.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3_env().access_key),
        ("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()),
    ];
    let hooks = Receiver::start();
    let base = format!("http://127.0.0.1:{}", hooks.port);
    p.set_section(
        "notify",
        &format!("on_start = \"{base}/start\"\non_failure = \"{base}/fail\""),
    );
    let (child, port) = start_http(&mut p);
    until(Duration::from_secs(30), "two failure calls", || {
        hooks.count("/fail") >= 2
    })
    .await;
    let (_, failed) = hooks
        .calls()
        .into_iter()
        .find(|(p, _)| p == "/fail")
        .unwrap();
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("denied access"), "{failed}");
    assert!(!error.contains("not-the-secret"), "{failed}");
    let (_, metrics) = get(port, "/metrics");
    let failures = sample(
        &metrics,
        "backstop_schedule_failures_total{schedule=\"fast\",reason=\"store_unavailable\"}",
    );
    assert!(failures.unwrap_or(0.0) >= 2.0, "{metrics}");
    let (status, body) = get(port, "/v1/status");
    assert_eq!(status, 200);
    assert!(body.contains("denied access"), "{body}");
    let (ready, why) = get(port, "/readyz");
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("store"), "{why}");
    let recorded: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM backstop_schedule_slots WHERE state = 'failed' AND error LIKE '%denied access%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(recorded >= 2, "failed slots on record: {recorded}");
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
}
