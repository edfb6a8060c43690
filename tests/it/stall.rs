//! A store that stops answering in the middle of the work: a TCP proxy in front of SeaweedFS
//! forwards the first bytes of the upload, then holds every byte in both directions with
//! the connections open, as a hung server or a dead network path would. A downgrade then
//! costs writers the store's patience at most (its locks go before any clean-up), SIGTERM
//! releases them at once, and a backup ends within twice its operation timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// What the proxy has done, shared by its threads and the test.
#[derive(Default)]
struct State {
    /// Bytes forwarded from backstop to the store.
    forwarded: AtomicU64,
    stall_after: AtomicU64,
    resumed: AtomicBool,
    stalled_at: Mutex<Option<Instant>>,
}

impl State {
    fn holding(&self) -> bool {
        !self.resumed.load(Ordering::SeqCst)
            && self.forwarded.load(Ordering::SeqCst) >= self.stall_after.load(Ordering::SeqCst)
    }

    fn wait_while_holding(&self) {
        while self.holding() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A proxy to the test S3 service that stalls once `stall_after` bytes went upstream.
struct StallingProxy {
    port: u16,
    state: Arc<State>,
}

impl StallingProxy {
    fn start(stall_after: u64) -> StallingProxy {
        let upstream = s3_env()
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        state.stall_after.store(stall_after, Ordering::SeqCst);
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up, down) = (shared.clone(), shared.clone());
                std::thread::spawn(move || pump(client, server, &up, true));
                std::thread::spawn(move || pump(s2, c2, &down, false));
            }
        });
        StallingProxy { port, state }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// When the proxy began to hold bytes, waiting up to `limit` for it.
    fn stalled_within(&self, limit: Duration) -> Instant {
        let started = Instant::now();
        loop {
            if let Some(at) = *self.state.stalled_at.lock().unwrap() {
                return at;
            }
            assert!(
                started.elapsed() < limit,
                "the store was never stalled: the export sent {} bytes in {limit:?}",
                self.state.forwarded.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn resume(&self) {
        self.state.resumed.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`; upstream, only up to the stall point until the test resumes.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State, upstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if upstream {
            let before = state.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            let limit = state.stall_after.load(Ordering::SeqCst);
            if !state.resumed.load(Ordering::SeqCst) && before + n as u64 > limit {
                let allowed = limit.saturating_sub(before).min(n as u64) as usize;
                if to.write_all(&chunk[..allowed]).is_err() {
                    break;
                }
                chunk = &chunk[allowed..];
                state
                    .stalled_at
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
        }
        state.wait_while_holding();
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A project whose downgrade drops a column of 100,000 rows of nearly incompressible text
/// (about 7 MB compressed, so the upload is multipart), with its store behind `proxy`.
async fn project(db: &TestDb, store: &TestStore, proxy: &StallingProxy, timeouts: &str) -> Project {
    let mut p = Project::empty(&db.url);
    p.use_store(store);
    let section = store
        .config()
        .replace(&s3_env().endpoint, &proxy.endpoint());
    p.set_section("storage", &format!("{section}\n{timeouts}"));
    p.add_migration(
        "001_events",
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text NOT NULL);",
        "DROP TABLE events;",
    );
    p.add_migration(
        "002_note",
        "ALTER TABLE events ADD COLUMN note text;",
        "ALTER TABLE events DROP COLUMN note;",
    );
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(
            "INSERT INTO events (body, note)
             SELECT 'e' || g, md5(g::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
             FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    p
}

/// Whether another session holds a SHARE lock on `events` (the downgrade's export).
async fn events_locked(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND mode = 'ShareLock' AND granted AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        > 0
}

/// Inserts a row as a writer would, returning how long it waited.
async fn write_one(db: &TestDb) -> Duration {
    let writer = db.client().await;
    writer
        .batch_execute("SET lock_timeout = '90s'")
        .await
        .unwrap();
    let started = Instant::now();
    writer
        .batch_execute("INSERT INTO events (body, note) VALUES ('writer', 'w')")
        .await
        .unwrap();
    started.elapsed()
}

fn spawn(p: &Project, args: &[&str]) -> std::process::Child {
    p.cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_store_that_stalls_mid_downgrade_holds_writers_for_its_read_timeout_at_most() {
    let proxy = StallingProxy::start(2 << 20);
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    // The defaults: read_timeout_secs = 20 must release the locks well within 30 s.
    let p = project(&db, &store, &proxy, "").await;
    let c = db.client().await;
    let child = spawn(&p, &["downgrade", "-1"]);
    let stalled = proxy.stalled_within(Duration::from_secs(60));
    assert!(
        events_locked(&c).await,
        "the downgrade should hold its SHARE lock while the store is stalled"
    );
    let waited = write_one(&db).await;
    let released = stalled.elapsed();
    eprintln!("writer waited {waited:?}; locks released {released:?} after the store stalled");
    assert!(
        waited > Duration::from_secs(2),
        "the writer should have waited for the stalled export ({waited:?})"
    );
    assert!(
        released < Duration::from_secs(30),
        "the locks were held {released:?} after the store stalled"
    );
    // The store answers again: the partial upload is removed after the rollback.
    proxy.resume();
    let r = Run::from(exit_within(child, Duration::from_secs(60), "the downgrade"));
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("did not answer in time"), "{r}");
    assert!(r.stderr.contains("failed and was removed"), "{r}");
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    let note: i64 = c
        .query_one("SELECT count(note) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, 100_001, "the column and its values are still there");
    assert_eq!(store.keys().await, Vec::<String>::new());
    assert_eq!(store.pending_uploads().await, 0, "unfinished uploads");
}

#[tokio::test]
async fn sigterm_while_the_store_is_stalled_releases_the_locks_at_once() {
    let proxy = StallingProxy::start(2 << 20);
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let p = project(
        &db,
        &store,
        &proxy,
        "read_timeout_secs = 600\noperation_timeout_secs = 600",
    )
    .await;
    let c = db.client().await;
    let child = spawn(&p, &["downgrade", "-1"]);
    proxy.stalled_within(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        events_locked(&c).await,
        "the downgrade should hold its lock"
    );
    send_signal(child.id(), "-TERM");
    let signalled = Instant::now();
    let waited = write_one(&db).await;
    eprintln!("after SIGTERM the writer waited {waited:?}");
    assert!(
        waited < Duration::from_secs(5),
        "the writer waited {waited:?} after SIGTERM"
    );
    // The clean-up gets a few seconds against the stalled store, then gives up.
    let r = Run::from(exit_within(child, Duration::from_secs(20), "the downgrade"));
    eprintln!(
        "the downgrade ended {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("interrupted"), "{r}");
    assert!(r.stderr.contains("backups prune"), "{r}");
    assert_eq!(count(&c, "events").await, 100_001);
    proxy.resume();
}

#[tokio::test]
async fn a_backup_against_a_store_that_stalls_ends_within_twice_its_operation_timeout() {
    let proxy = StallingProxy::start(2 << 20);
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let p = project(&db, &store, &proxy, "operation_timeout_secs = 5").await;
    let child = spawn(&p, &["backup"]);
    let stalled = proxy.stalled_within(Duration::from_secs(60));
    let r = Run::from(exit_within(child, Duration::from_secs(60), "the backup"));
    let ended = stalled.elapsed();
    eprintln!("the backup ended {ended:?} after the store stalled");
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("did not answer in time"), "{r}");
    assert!(
        ended < Duration::from_secs(10),
        "the backup ran {ended:?} after the store stalled (operation_timeout_secs = 5)"
    );
    proxy.resume();
}
