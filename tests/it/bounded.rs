//! Bounded memory and waits, and reports that say what happened: highly compressible rows,
//! a decompression bomb, a store that never answers, tampered manifests, missing schemas,
//! access denied, and row values kept out of messages.

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Peak RSS of the binary in MiB, measured by `/usr/bin/time -f %M`, and the run.
fn measured(p: &Project, args: &[&str]) -> (u64, Run) {
    assert!(
        std::path::Path::new("/usr/bin/time").exists(),
        "/usr/bin/time is missing: scripts/test installs Debian's `time` package"
    );
    let inner = p.cmd(args);
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("peak-rss-kib %M")
        .arg(inner.get_program())
        .args(inner.get_args());
    c.current_dir(p.path()).env_clear().envs(
        inner
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
    );
    c.env("PATH", std::env::var("PATH").unwrap_or_default());
    let r = Run::from(c.output().unwrap());
    let kib: u64 = r
        .stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib "))
        .unwrap_or_else(|| panic!("no measurement in {r}"))
        .trim()
        .parse()
        .unwrap();
    (kib / 1024, r)
}

#[tokio::test]
async fn rows_of_one_repeated_character_stay_under_64_mib_everywhere() {
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    p.use_store(&store);
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO blobs SELECT g, repeat('a', 1048576) FROM generate_series(1, 1200) g;",
    )
    .await
    .unwrap();
    let fingerprint =
        "SELECT count(*)::text || ':' || md5(string_agg(md5(body), '' ORDER BY id)) FROM blobs";
    let before: String = c.query_one(fingerprint, &[]).await.unwrap().get(0);
    assert!(before.starts_with("1200:"), "{before}");

    let (backup_mib, r) = measured(&p, &["backup"]);
    assert_eq!(r.code, 0, "{r}");
    let id = r.stdout.lines().next().unwrap().to_string();
    let (_, show) = p.json(&["backups", "show", &id]);
    assert!(show["tables"][0]["bytes"].as_u64().unwrap() > 1200 * 1048576);
    let (verify_mib, r) = measured(&p, &["backups", "verify", &id]);
    assert_eq!(r.code, 0, "{r}");
    let (restore_mib, r) = measured(&p, &["restore", &id, "--mode", "truncate"]);
    assert_eq!(r.code, 0, "{r}");
    let after: String = c.query_one(fingerprint, &[]).await.unwrap().get(0);
    assert_eq!(after, before);
    eprintln!(
        "peak RSS: backup {backup_mib} MiB, verify {verify_mib} MiB, restore {restore_mib} MiB"
    );
    for (what, mib) in [
        ("backup", backup_mib),
        ("verify", verify_mib),
        ("restore", restore_mib),
    ] {
        assert!(mib < 64, "{what} peaked at {mib} MiB");
    }
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_not_expanded() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    p.use_store(&store);
    let c = db.client().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g;")
        .await
        .unwrap();
    let id = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    // 512 MiB of one byte, a few dozen KiB compressed, with a manifest that matches it
    // except for the size it expands to.
    let bomb = zstd::stream::encode_all(std::io::repeat(b'x').take(512 << 20), 3).unwrap();
    let key = format!("{id}/public.t.csv.zst");
    store.write(&key, bomb.clone()).await;
    let manifest_key = format!("{id}/manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&store.read(&manifest_key).await).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bomb)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    m["tables"][0]["sha256"] = sha.into();
    m["tables"][0]["compressed_bytes"] = bomb.len().into();
    store.remove(&manifest_key).await;
    store
        .write(&manifest_key, serde_json::to_vec(&m).unwrap())
        .await;

    let (mib, r) = measured(&p, &["backups", "verify", &id]);
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stdout.contains("expands past"), "{r}");
    assert!(mib < 64, "verify peaked at {mib} MiB");
    let (mib, r) = measured(&p, &["restore", &id, "--mode", "truncate"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(mib < 64, "restore peaked at {mib} MiB");
    assert_eq!(count(&c, "t").await, 10);
}

/// A TCP port that accepts connections and never answers.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Runs the binary, killing it (and failing) if it is still running after `limit`.
fn run_bounded(p: &Project, args: &[&str], limit: Duration) -> Run {
    let child = p
        .cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    Run::from(exit_within(child, limit, &format!("backstop {args:?}")))
}

#[tokio::test]
async fn a_store_that_never_answers_fails_within_its_timeouts() {
    let port = black_hole();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.set_section(
        "storage",
        &format!(
            "url = \"s3://stalled/prefix\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nconnect_timeout_secs = 2\nread_timeout_secs = 2\noperation_timeout_secs = 4"
        ),
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, user_id) SELECT 't' || g, 'u' FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    let r = run_bounded(&p, &["backup"], Duration::from_secs(60));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("did not answer in time"), "{r}");

    let r = run_bounded(&p, &["downgrade", "-1"], Duration::from_secs(60));
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    // Nothing holds tasks any more: a writer goes straight through.
    c.batch_execute(
        "SET lock_timeout = '2s'; INSERT INTO tasks (title, user_id) VALUES ('after', 'u')",
    )
    .await
    .unwrap();
    assert_eq!(count(&c, "tasks").await, 51);

    // SIGTERM ends a run stuck on the store at once, whatever its timeouts.
    p.set_section(
        "storage",
        &format!(
            "url = \"s3://stalled/prefix\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nread_timeout_secs = 600\noperation_timeout_secs = 600"
        ),
    );
    let mut child = p
        .cmd(&["backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup should still be waiting"
    );
    send_signal(child.id(), "-TERM");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIGTERM did not end the backup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
}

#[tokio::test]
async fn tampered_manifests_fail_verification() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.use_store(&store);
    p.ok(&["upgrade"]);
    let good = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    let bad = p
        .ok(&["backup", "--label", "to tamper"])
        .stdout
        .lines()
        .next()
        .unwrap()
        .to_string();
    let key = format!("{bad}/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&store.read(&key).await).unwrap();
    m["tables"][0]["key"] = "../elsewhere.csv.zst".into();
    store.remove(&key).await;
    store.write(&key, serde_json::to_vec(&m).unwrap()).await;

    let (code, v) = p.json(&["backups", "verify", "--all"]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["ok"], false);
    let by_id = |id: &str| {
        v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .cloned()
    };
    assert_eq!(by_id(&good).unwrap()["ok"], true, "{v}");
    assert_eq!(by_id(&bad).unwrap()["ok"], false, "{v}");
    let r = p.run(&["backups", "verify", &bad]);
    assert_eq!(r.code, 3, "{r}");
    assert!(
        r.stdout.contains("FAILED") && r.stdout.contains("outside the backup"),
        "{r}"
    );
}

#[tokio::test]
async fn a_missing_schema_and_a_lock_wait_without_end_are_refused() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.set_database_extra("schema = \"app\"");
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("schema \"app\" does not exist"), "{r}");
    let c = db.client().await;
    let schemas: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the schema was created");
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 2, "{r}");

    p.set_database_extra("lock_timeout_secs = 0");
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("lock_timeout_secs is 0"), "{r}");
}

#[tokio::test]
async fn store_messages_say_what_happened() {
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.use_store(&store);
    p.ok(&["upgrade"]);
    // A key that may read but not write.
    let env = s3_env();
    p.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), format!("{}-ro", env.access_key)),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            format!("{}-ro", env.secret_key),
        ),
    ];
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("denied access"), "{r}");
    assert!(
        !r.stderr.contains("SdkError") && !r.stderr.contains(&env.secret_key),
        "{r}"
    );

    p.env = store.env();
    p.set_section(
        "storage",
        &store
            .config()
            .replace("url = \"s3://", "url = \"s3://no-such-bucket-x"),
    );
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("bucket does not exist"), "{r}");
    let r = p.run(&["restore", "20261124T132800Z-manual-3f9a1c"]);
    assert!(
        r.stderr.contains("bucket does not exist") && !r.stderr.contains("no backup"),
        "{r}"
    );
}

#[tokio::test]
async fn what_the_store_says_is_printed_safely_and_hints_use_the_configured_ages() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.use_store(&store);
    p.set_section("retention", "incomplete_after_secs = 120");
    p.ok(&["upgrade"]);
    let id = p
        .ok(&["backup", "--label", "nightly \u{1b}[2J\u{1b}[Hwiped"])
        .stdout
        .lines()
        .next()
        .unwrap()
        .to_string();
    let r = p.ok(&["backups", "show", &id]);
    assert!(!r.stdout.contains('\u{1b}'), "{r}");
    assert!(r.stdout.contains("nightly \\u{1b}[2J"), "{r}");
    store
        .write(
            "20200101T000000Z-manual-deadbe/public.tasks.csv.zst",
            b"partial".to_vec(),
        )
        .await;
    let r = p.ok(&["backups", "list"]);
    assert!(r.stderr.contains("once it is 2 minutes old"), "{r}");
}

#[tokio::test]
async fn row_values_stay_out_of_messages_unless_asked_for() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.use_store(&store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (id, title, user_id) VALUES (4242, 'secret title', 'carol@example.com')",
    )
    .await
    .unwrap();
    let id = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    // Appending the same rows again hits the primary key: PostgreSQL names the key value.
    let (code, v) = p.json(&["restore", &id, "--mode", "append"]);
    assert_eq!(code, 1, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("duplicate key"), "{error}");
    assert!(
        !error.contains("4242") && !error.contains("carol"),
        "{error}"
    );
    let r = p.run(&["-v", "restore", &id, "--mode", "append"]);
    assert!(r.stderr.contains("(id)=(4242)"), "{r}");
    assert_eq!(count(&c, "tasks").await, 1);
}

#[tokio::test]
async fn sigterm_ends_a_downgrade_waiting_for_its_locks_and_frees_the_tables() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.use_store(&store);
    // A wait that would outlast the grace period many times over.
    p.set_database_extra("lock_timeout_secs = 600");
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute("INSERT INTO tasks (title, user_id) VALUES ('kept', 'u')")
        .await
        .unwrap();
    // An open writer: the downgrade's SHARE lock on tasks has to wait for it.
    let mut writer = db.client().await;
    let open = writer.transaction().await.unwrap();
    open.batch_execute("INSERT INTO tasks (title, user_id) VALUES ('open', 'u')")
        .await
        .unwrap();
    let child = p
        .cmd(&["downgrade", "-1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";
    let mut seen = false;
    for _ in 0..600 {
        let n: i64 = c.query_one(waiting, &[&db.name]).await.unwrap().get(0);
        if n > 0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the downgrade never waited for a lock");
    send_signal(child.id(), "-TERM");
    let out = exit_within(child, Duration::from_secs(60), "downgrade after SIGTERM");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // It stopped by itself at a safe point, not by being dropped after the grace period.
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("abandoned"), "{stderr}");
    // Nothing waits or holds tasks for the downgrade any more.
    let n: i64 = c.query_one(waiting, &[&db.name]).await.unwrap().get(0);
    assert_eq!(n, 0, "a lock wait outlived the downgrade");
    open.commit().await.unwrap();
    assert_eq!(count(&c, "tasks").await, 2);
    assert_eq!(
        recorded(&c).await.len(),
        1,
        "the downgrade changed the ledger"
    );
    assert!(store.keys().await.is_empty(), "a backup was left behind");
}

#[tokio::test]
async fn reading_a_multipart_object_back_prints_no_raw_sdk_checksum_warning() {
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    p.use_store(&store);
    let c = db.client().await;
    // About 8 MB of zstd output: two parts of 5 MiB, so the object's checksum is the
    // part-level kind the SDK cannot check and warns about.
    c.batch_execute(
        "CREATE TABLE noise (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO noise SELECT g, md5(g::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
         FROM generate_series(1, 110000) g;",
    )
    .await
    .unwrap();
    let id = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    let TestStore::S3 { bucket, prefix } = &store else {
        unreachable!()
    };
    // The precondition: the service hands out a part-level checksum for the table.
    let head = s3_client()
        .head_object()
        .bucket(bucket)
        .key(format!("{prefix}/{id}/public.noise.csv.zst"))
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let crc = head.checksum_crc32().unwrap_or_default().to_string();
    assert!(
        crc.contains('-'),
        "not a multipart object's checksum: {crc:?} ({} bytes)",
        head.content_length().unwrap_or(0)
    );
    for args in [
        vec!["-vv", "backups", "verify", id.as_str()],
        vec!["-vv", "restore", id.as_str(), "--mode", "truncate"],
    ] {
        let r = p.ok(&args);
        for raw in ["part-level checksum", "Rust SDK", "more_info"] {
            assert!(!r.stderr.contains(raw), "{args:?} printed {raw:?}: {r}");
        }
    }
    assert_eq!(count(&c, "noise").await, 110_000);
}
