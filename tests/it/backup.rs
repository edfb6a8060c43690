//! Backup, restore, verify and prune against a real PostgreSQL, through both stores: a
//! directory and SeaweedFS over S3.

use crate::common::*;

/// A table with every kind of value that tends to break CSV round trips.
const EXACT_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"');
CREATE TABLE exact (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial_no   serial,
    t           text,
    vc          varchar(20),
    ch          char(5),
    b           bytea,
    j           json,
    jb          jsonb,
    ia          int[],
    ta          text[],
    ts          timestamp,
    tstz        timestamptz,
    d           date,
    tm          time,
    tmtz        timetz,
    n           numeric,
    n2          numeric(12, 4),
    f8          double precision,
    f4          real,
    u           uuid,
    iv          interval,
    ip          inet,
    net         cidr,
    m           mood,
    flag        boolean,
    doubled     bigint GENERATED ALWAYS AS (serial_no * 2) STORED
);
"#;

const EXACT_ROWS: &str = r#"
INSERT INTO exact (t, vc, ch, b, j, jb, ia, ta, ts, tstz, d, tm, tmtz, n, n2, f8, f4, u, iv, ip, net, m, flag) VALUES
 (NULL, '', 'a', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 ('', 'NULL', '', '\x', '{}', '{}', '{}', '{}', 'infinity', '-infinity', 'infinity', '00:00', '00:00+00', 'NaN', 0, 'NaN', 'Infinity', '00000000-0000-0000-0000-000000000000', '0', '::1', '::/0', 'sad', false),
 ('NULL', '\N', 'x y', '\x00ff5c0d0a', '{"b": 1,  "a": [1, 2]}', '{"b": 1,  "a": [1, 2]}', '{1,NULL,3}', '{"a,b","c\"d",NULL,"NULL",""}', '2026-11-24 13:28:00.123456', '2026-11-24 13:28:00.123456+05:30', '0001-01-01', '23:59:59.999999', '12:00:00.5-08', '123456789012345678901234567890.123456789012345678901234567890', 12345678.1234, '-Infinity', '-0', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 year 2 mons 3 days 04:05:06.789', '192.168.0.1/24', '10.0.0.0/8', 'happy', true),
 (E'\\N', 'tab	here', 'q"uo', '\xdeadbeef', '"just a string"', '[null, true, 1.5e10]', '{-2147483648,2147483647}', '{"{}","back\\\\slash"}', '1970-01-01 00:00:00', '2000-02-29 23:59:59.999999+00', '2000-02-29', '12:34:56', '00:00:00+14', '-0.000000000000000000001', -99999999.9999, '-0', '3.4028235e38', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '-178000000 years', '2001:db8::1', '2001:db8::/32', 'it''s "complicated"', NULL),
 (E'comma, "quote" and\r\nCRLF and\nLF and \\ backslash and tab\t and ' || chr(13), 'ünïcödé', 'ß', '\x5c', '{"emoji": "🦀"}', '{"emoji": "🦀", "nul": "\\u0000x"}', NULL, '{"🦀 crab","𝄞 clef"}', '-infinity', 'infinity', '-infinity', '24:00:00', '24:00:00-15:59', '1e-1000', NULL, 1.7976931348623157e308, 1.17549435e-38, NULL, '-1 day -00:00:01', '0.0.0.0', '0.0.0.0/0', 'ok', true),
 (repeat('long value 🦀 ', 100000), repeat('x', 20), NULL, decode(repeat('00ff', 50000), 'hex'), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 5e-324, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

async fn exact_fixture(db: &TestDb) -> String {
    let c = db.client().await;
    c.batch_execute(EXACT_DDL).await.unwrap();
    c.batch_execute(EXACT_ROWS).await.unwrap();
    table_md5(&c, "exact", "id").await
}

fn backup_id(out: &Run) -> String {
    out.stdout.lines().next().unwrap().trim().to_string()
}

#[tokio::test]
async fn every_awkward_value_survives_backup_and_restore_through_both_stores() {
    for store in TestStore::both().await {
        let source = TestDb::new().await;
        let before = exact_fixture(&source).await;
        let mut p = Project::empty(&source.url);
        p.use_store(&store);
        let id = backup_id(&p.ok(&["backup"]));

        let keys = store.keys().await;
        assert_eq!(
            keys,
            [
                format!("{id}/manifest.json"),
                format!("{id}/public.exact.csv.zst")
            ],
            "{}",
            store.name()
        );
        // The object really is zstd-compressed CSV with a header, without the generated column.
        let object = store.read(&format!("{id}/public.exact.csv.zst")).await;
        let csv = zstd::decode_all(object.as_slice()).unwrap();
        let header = String::from_utf8_lossy(&csv[..csv.iter().position(|b| *b == b'\n').unwrap()])
            .to_string();
        assert!(header.starts_with("id,serial_no,t,vc,"), "{header}");
        assert!(!header.contains("doubled"), "{header}");

        // Restore into another database with the same schema: md5 over all rows equal.
        let target = TestDb::new().await;
        target
            .client()
            .await
            .batch_execute(EXACT_DDL)
            .await
            .unwrap();
        let mut q = Project::empty(&target.url);
        q.use_store(&store);
        let r = q.ok(&["restore", &id]);
        assert!(r.stdout.contains("exact: 6 rows"), "{r}");
        assert!(
            r.stdout
                .contains(&format!("taken from database {}", source.name)),
            "{r}"
        );
        let tc = target.client().await;
        assert_eq!(
            table_md5(&tc, "exact", "id").await,
            before,
            "{} store",
            store.name()
        );
        // Identity and serial sequences continue after the restored maximum.
        tc.batch_execute("INSERT INTO exact (t) VALUES ('next')")
            .await
            .unwrap();
        let row = tc
            .query_one(
                "SELECT id, serial_no, doubled FROM exact WHERE t = 'next'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i32>(1),
                row.get::<_, i64>(2)
            ),
            (7, 7, 14)
        );
        assert_eq!(store.pending_uploads().await, 0);
    }
}

fn seed_tasks(rows: usize) -> String {
    format!(
        "INSERT INTO tasks (title, description, completed, user_id, created_at)
         SELECT 'task ' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE md5(g::text) || E'\\n,\"' END, g % 2 = 0,
                'user' || (g % 50), timestamptz '2026-01-01' + g * interval '1 minute'
         FROM generate_series(1, {rows}) g"
    )
}

#[tokio::test]
async fn restore_modes_and_sequence_state() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    let store = TestStore::dir();
    p.use_store(&store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute(&seed_tasks(1000)).await.unwrap();
    // Ids consumed but rolled back still count: the sequence is ahead of the max id.
    c.batch_execute("SELECT setval('tasks_id_seq', 5000)")
        .await
        .unwrap();
    let before = table_md5(&c, "tasks", "id").await;
    let id = backup_id(&p.ok(&["backup", "--label", "before cleanup"]));

    // fail (the default) refuses a table with rows and changes nothing.
    c.batch_execute("DELETE FROM tasks WHERE id > 10")
        .await
        .unwrap();
    let r = p.run(&["restore", &id]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("table tasks already has rows") && r.stderr.contains("--mode truncate"),
        "{r}"
    );
    assert_eq!(count(&c, "tasks").await, 10);

    // truncate replaces the rows; the sequence keeps the saved state (5000), not just the max.
    let r = p.ok(&["restore", &id, "--mode", "truncate"]);
    assert!(r.stdout.contains("tasks: 1000 rows"), "{r}");
    assert!(
        r.stdout
            .contains("rebuilt idx_tasks_user_id, idx_tasks_created_at")
            || r.stdout
                .contains("rebuilt idx_tasks_created_at, idx_tasks_user_id"),
        "{r}"
    );
    assert_eq!(table_md5(&c, "tasks", "id").await, before);
    let next: i64 = c
        .query_one("SELECT nextval('tasks_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 5001);
    // The indexes dropped for the load are back, exactly as they were.
    let idx: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'tasks' ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(idx.len(), 3);
    assert!(
        idx[0].contains("idx_tasks_created_at ON public.tasks USING btree (created_at)"),
        "{idx:?}"
    );

    // append adds; conflicting primary keys roll the whole restore back.
    let r = p.run(&["restore", &id, "--mode", "append"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("duplicate key") && r.stderr.contains("rolled back"),
        "{r}"
    );
    assert_eq!(count(&c, "tasks").await, 1000);
    c.batch_execute("DELETE FROM tasks").await.unwrap();
    p.ok(&["restore", &id, "--mode", "append"]);
    assert_eq!(table_md5(&c, "tasks", "id").await, before);

    // show names the source database and the label.
    let show = p.ok(&["backups", "show", &id]).stdout;
    assert!(show.contains(&format!("database  {}", db.name)), "{show}");
    assert!(show.contains("label     before cleanup"), "{show}");
    assert!(show.contains("revision  001_initial"), "{show}");
}

#[tokio::test]
async fn columns_are_matched_by_name() {
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    let store = TestStore::dir();
    p.use_store(&store);
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text);
         INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let id = backup_id(&p.ok(&["backup", "--table", "t"]));
    // Reordered columns plus a new one with a default: loads by name, default fills in.
    c.batch_execute("DROP TABLE t; CREATE TABLE t (b text, extra text DEFAULT 'dflt', a text, id int PRIMARY KEY);")
        .await
        .unwrap();
    p.ok(&["restore", &id]);
    let row = c
        .query_one("SELECT a, b, extra FROM t WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("a7".into(), "b7".into(), "dflt".into())
    );
    // A backup column the table lacks is an error that names it; nothing is loaded.
    c.batch_execute("DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY, a text);")
        .await
        .unwrap();
    let r = p.run(&["restore", &id]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("column t.b (text) is in backup"), "{r}");
    assert_eq!(count(&c, "t").await, 0);
    // A table that does not exist is named too.
    c.batch_execute("DROP TABLE t").await.unwrap();
    let r = p.run(&["restore", &id]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("table public.t from backup") && r.stderr.contains("does not exist"),
        "{r}"
    );
}

#[tokio::test]
async fn parallel_backup_of_several_tables_lists_and_verifies() {
    for store in TestStore::both().await {
        let db = TestDb::new().await;
        let mut p = Project::new(&db);
        p.use_store(&store);
        p.set_section("backup", "parallelism = 3\nzstd_level = 1");
        p.ok(&["upgrade"]);
        let c = db.client().await;
        c.batch_execute(&seed_tasks(3000)).await.unwrap();
        c.batch_execute(
            "CREATE TABLE notes (id serial PRIMARY KEY, task_id int REFERENCES tasks(id), body text);
             INSERT INTO notes (task_id, body) SELECT g, 'note ' || g FROM generate_series(1, 3000) g;
             CREATE TABLE empty_one (x int);",
        )
        .await
        .unwrap();
        let first = backup_id(&p.ok(&["backup"]));
        let second = backup_id(&p.ok(&["backup", "--table", "notes"]));
        assert!(second[..16] >= first[..16], "ids sort by time");

        let (code, v) = p.json(&["backups", "list"]);
        assert_eq!(code, 0);
        let ids: Vec<&str> = v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
        assert_eq!(
            v["backups"][1]["tables"],
            serde_json::json!(["empty_one", "notes", "tasks"])
        );
        assert_eq!(v["backups"][1]["rows"], 6000);
        let text = p.ok(&["backups", "list"]).stdout;
        assert!(text.lines().next().unwrap().starts_with(&second), "{text}");

        let r = p.ok(&["backups", "verify", "--all"]);
        assert!(
            r.stdout.contains(&format!("{first} OK")) && r.stdout.contains("tasks: ok, 3000 rows"),
            "{r}"
        );

        // Restore everything into an empty copy of the schema: notes references tasks,
        // so the order matters.
        let target = TestDb::new().await;
        let mut q = Project::new(&target);
        q.use_store(&store);
        q.ok(&["upgrade"]);
        target
            .client()
            .await
            .batch_execute("CREATE TABLE notes (id serial PRIMARY KEY, task_id int REFERENCES tasks(id), body text); CREATE TABLE empty_one (x int);")
            .await
            .unwrap();
        q.ok(&["restore", &first]);
        let tc = target.client().await;
        assert_eq!(
            table_md5(&tc, "tasks", "id").await,
            table_md5(&c, "tasks", "id").await
        );
        assert_eq!(
            table_md5(&tc, "notes", "id").await,
            table_md5(&c, "notes", "id").await
        );
    }
}

#[tokio::test]
async fn corrupted_truncated_or_missing_objects_are_caught_and_change_nothing() {
    for store in TestStore::both().await {
        let db = TestDb::new().await;
        let mut p = Project::new(&db);
        p.use_store(&store);
        p.ok(&["upgrade"]);
        let c = db.client().await;
        c.batch_execute(&seed_tasks(2000)).await.unwrap();
        let id = backup_id(&p.ok(&["backup"]));
        c.batch_execute("TRUNCATE tasks").await.unwrap();
        let key = format!("{id}/public.tasks.csv.zst");
        let good = store.read(&key).await;

        // One flipped byte in the middle.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        store.write(&key, bad).await;
        let r = p.run(&["backups", "verify", &id]);
        assert_eq!(r.code, 3, "{} {r}", store.name());
        assert!(r.stdout.contains("FAILED"), "{r}");
        let r = p.run(&["restore", &id]);
        assert_eq!(r.code, 3, "{} {r}", store.name());
        assert!(r.stderr.contains("rolled back"), "{r}");
        assert_eq!(count(&c, "tasks").await, 0);

        // Truncated.
        store.write(&key, good[..good.len() / 3].to_vec()).await;
        let r = p.run(&["restore", &id]);
        assert_eq!(r.code, 3, "{} {r}", store.name());
        assert_eq!(count(&c, "tasks").await, 0);

        // Missing.
        store.remove(&key).await;
        let r = p.run(&["restore", &id]);
        assert_ne!(r.code, 0, "{r}");
        assert!(r.stderr.contains("public.tasks.csv.zst"), "{r}");
        assert_eq!(count(&c, "tasks").await, 0);
        let r = p.run(&["backups", "verify", &id]);
        assert_eq!(r.code, 3, "{r}");

        // Put it back: everything works again.
        store.write(&key, good).await;
        p.ok(&["backups", "verify", &id]);
        p.ok(&["restore", &id]);
        assert_eq!(count(&c, "tasks").await, 2000);
    }
}

#[tokio::test]
async fn manifests_are_validated() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    let store = TestStore::dir();
    p.use_store(&store);
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(&seed_tasks(10))
        .await
        .unwrap();
    let id = backup_id(&p.ok(&["backup"]));
    let key = format!("{id}/manifest.json");
    let original = store.read(&key).await;
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();

    m["format"] = 7.into();
    store.write(&key, serde_json::to_vec(&m).unwrap()).await;
    let r = p.run(&["restore", &id, "--mode", "truncate"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("format version 7"), "{r}");

    m["format"] = 1.into();
    m["tables"][0]["key"] = "../../../etc/passwd".into();
    store.write(&key, serde_json::to_vec(&m).unwrap()).await;
    let r = p.run(&["restore", &id, "--mode", "truncate"]);
    assert!(r.stderr.contains("outside the backup"), "{r}");

    let r = p.run(&["restore", "../../etc"]);
    assert_eq!(r.code, 2, "{r}");
    let r = p.run(&["restore", "20991231T000000Z-manual-abcdef"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("no backup 20991231T000000Z-manual-abcdef"),
        "{r}"
    );
    assert_eq!(count(&db.client().await, "tasks").await, 10);
}

#[tokio::test]
async fn an_unreachable_store_fails_the_backup_clearly() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.ok(&["upgrade"]);
    p.set_section(
        "storage",
        "url = \"s3://nowhere/backups\"\nendpoint = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"very-secret-value\"",
    );
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("cannot reach bucket nowhere"), "{r}");
    assert!(
        !r.stderr.contains("very-secret-value") && !r.stdout.contains("very-secret-value"),
        "{r}"
    );

    let file = p.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    p.set_section("storage", &format!("url = \"{}/sub\"", file.display()));
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("creating the backup directory"), "{r}");
}

#[tokio::test]
async fn large_tables_use_multipart_and_a_killed_export_leaves_nothing() {
    for store in TestStore::both().await {
        let db = TestDb::new().await;
        let mut p = Project::empty(&db.url);
        p.use_store(&store);
        let c = db.client().await;
        // Incompressible-ish text: ~20 MiB of CSV, ~10 MiB compressed, so more than one part.
        c.batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, a text, b text, c text);
             INSERT INTO big SELECT g, md5(g::text), md5((g * 7)::text), md5((g * 13)::text) FROM generate_series(1, 200000) g;",
        )
        .await
        .unwrap();
        let before = table_md5(&c, "big", "id").await;
        let id = backup_id(&p.ok(&["backup", "--table", "big"]));
        let (_, m) = p.json(&["backups", "show", &id]);
        assert!(
            m["tables"][0]["compressed_bytes"].as_u64().unwrap() > 9 * 1024 * 1024,
            "{m}"
        );
        assert_eq!(store.pending_uploads().await, 0);
        c.batch_execute("TRUNCATE big").await.unwrap();
        p.ok(&["restore", &id]);
        assert_eq!(table_md5(&c, "big", "id").await, before, "{}", store.name());

        // Kill the export's database session mid-stream: no manifest, no parts left behind.
        c.batch_execute("INSERT INTO big SELECT g, md5(g::text), md5((g * 7)::text), md5((g * 13)::text) FROM generate_series(200001, 1500000) g")
            .await
            .unwrap();
        let child = p
            .cmd(&["backup", "--table", "big"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let killed = catch_statement(&db.name, "COPY (SELECT%", true, 300, 20).await;
        assert!(killed, "the export never showed up in pg_stat_activity");
        let r = Run::from(child.wait_with_output().unwrap());
        assert_eq!(r.code, 1, "{r}");
        assert!(
            r.stderr.contains("the backup failed and was removed"),
            "{r}"
        );
        let keys = store.keys().await;
        assert_eq!(keys.len(), 2, "only the first backup remains: {keys:?}");
        assert_eq!(
            store.pending_uploads().await,
            0,
            "{}: a multipart upload was left behind",
            store.name()
        );
    }
}

#[tokio::test]
async fn a_killed_restore_connection_leaves_the_table_as_it_was() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    let store = TestStore::dir();
    p.use_store(&store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute(&seed_tasks(400_000)).await.unwrap();
    let id = backup_id(&p.ok(&["backup"]));
    c.batch_execute("DELETE FROM tasks WHERE id > 3")
        .await
        .unwrap();
    let before = table_md5(&c, "tasks", "id").await;
    let child = p
        .cmd(&["restore", &id, "--mode", "truncate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let killed = catch_statement(&db.name, "COPY %FROM STDIN%", true, 500, 10).await;
    assert!(killed, "the load never showed up in pg_stat_activity");
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(table_md5(&c, "tasks", "id").await, before);
}

#[tokio::test]
async fn prune_applies_retention_and_removes_incomplete_uploads() {
    for store in TestStore::both().await {
        let db = TestDb::new().await;
        let mut p = Project::new(&db);
        p.use_store(&store);
        p.ok(&["upgrade"]);
        db.client()
            .await
            .batch_execute(&seed_tasks(10))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(backup_id(&p.ok(&["backup"])));
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        // An upload that never got its manifest.
        store
            .write(
                "20200101T000000Z-manual-deadbe/public.tasks.csv.zst",
                b"partial".to_vec(),
            )
            .await;
        if let TestStore::Dir(d) = &store {
            let f = d
                .path()
                .join("20200101T000000Z-manual-deadbe/public.tasks.csv.zst");
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let (_, v) = p.json(&["backups", "list"]);
        assert_eq!(v["backups"].as_array().unwrap().len(), 3, "{v}");
        assert_eq!(
            v["incomplete"],
            serde_json::json!(["20200101T000000Z-manual-deadbe"])
        );

        // No [retention]: nothing but old incomplete uploads may go.
        p.set_section("retention", "keep_last = 1");
        let dry = p.ok(&["backups", "prune", "--dry-run"]);
        assert!(
            dry.stdout.contains(&format!("would remove {}", ids[0])),
            "{dry}"
        );
        assert!(
            dry.stdout.contains(&format!("would remove {}", ids[1])),
            "{dry}"
        );
        assert!(dry.stdout.contains(&format!("kept {}", ids[2])), "{dry}");
        assert_eq!(store.keys().await.len(), 7, "dry run removed something");

        p.ok(&["backups", "prune"]);
        let keys = store.keys().await;
        let expect_incomplete = matches!(store, TestStore::S3 { .. });
        let mut want = vec![
            format!("{}/manifest.json", ids[2]),
            format!("{}/public.tasks.csv.zst", ids[2]),
        ];
        if expect_incomplete {
            // On S3 the object was written just now, so it is not an hour old yet.
            want.insert(
                0,
                "20200101T000000Z-manual-deadbe/public.tasks.csv.zst".into(),
            );
        }
        assert_eq!(keys, want, "{}", store.name());
        let r = p.run(&["restore", &ids[0]]);
        assert_eq!(r.code, 1, "{r}");

        // An abandoned multipart upload, and a threshold of zero: both go now.
        if let TestStore::S3 { bucket, prefix } = &store {
            s3_client()
                .create_multipart_upload()
                .bucket(bucket)
                .key(format!(
                    "{prefix}/20200101T000000Z-manual-abcdef/public.tasks.csv.zst"
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(store.pending_uploads().await, 1);
        }
        p.set_section("retention", "keep_last = 1\nincomplete_after_secs = 0");
        let r = p.ok(&["backups", "prune"]);
        if expect_incomplete {
            assert!(
                r.stdout.contains(
                    "aborted unfinished multipart upload of 20200101T000000Z-manual-abcdef"
                ),
                "{r}"
            );
        }
        assert_eq!(store.pending_uploads().await, 0, "{}", store.name());
        assert_eq!(
            store.keys().await,
            want[want.len() - 2..].to_vec(),
            "{}",
            store.name()
        );
    }
}

#[tokio::test]
async fn parallel_workers_share_one_snapshot_under_concurrent_writes() {
    let db = TestDb::new().await;
    let mut p = Project::empty(&db.url);
    let store = TestStore::s3().await;
    // Credentials from the config file this time, not the environment.
    let e = s3_env();
    p.set_section(
        "storage",
        &format!(
            "{}\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"",
            store.config(),
            e.access_key,
            e.secret_key
        ),
    );
    p.set_section("backup", "parallelism = 2");
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE a (id bigint PRIMARY KEY, pad text);
         CREATE TABLE b (id bigint PRIMARY KEY, pad text);
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 150000) g;
         INSERT INTO b SELECT g, md5(g::text) FROM generate_series(1, 150000) g;",
    )
    .await
    .unwrap();
    // A writer that always adds the same id to both tables in one transaction.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (db.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut w = connect(&url).await;
            // Many small commits, so one lands between any two snapshots that differ.
            w.batch_execute("SET synchronous_commit = off")
                .await
                .unwrap();
            let mut id = 150_001i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let tx = w.transaction().await.unwrap();
                tx.execute("INSERT INTO a VALUES ($1, 'x')", &[&id])
                    .await
                    .unwrap();
                tx.execute("INSERT INTO b VALUES ($1, 'x')", &[&id])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                id += 1;
            }
            id
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut cmd = p.cmd(&["--json", "backup"]);
    let r = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    let r = Run::from(r);
    assert_eq!(r.code, 0, "{r}");
    let m: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (ra, rb) = (
        m["tables"][0]["rows"].as_u64().unwrap(),
        m["tables"][1]["rows"].as_u64().unwrap(),
    );
    assert!(written > 150_001, "the writer never ran");
    assert_eq!(ra, rb, "tables a and b come from different snapshots");
    assert!(ra >= 150_000);
}

#[tokio::test]
async fn manifests_are_created_once_and_never_overwritten() {
    for store in TestStore::both().await {
        let s = store.open().await;
        s.check().await.unwrap();
        let key = "20261124T000000Z-manual-aaaaaa/manifest.json";
        s.put(key, bytes::Bytes::from_static(b"first"), true)
            .await
            .unwrap();
        let err = s
            .put(key, bytes::Bytes::from_static(b"second"), true)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("already exists"),
            "{}: {err:#}",
            store.name()
        );
        assert_eq!(store.read(key).await, b"first", "{}", store.name());
        // Keys that would leave the prefix are refused before any request.
        assert!(s
            .put("../escape", bytes::Bytes::new(), false)
            .await
            .is_err());
        assert!(s.get("a/../../b").await.is_err());
    }
}

#[tokio::test]
async fn restore_from_an_unreachable_store_changes_nothing() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.ok(&["upgrade"]);
    db.client()
        .await
        .batch_execute(&seed_tasks(5))
        .await
        .unwrap();
    p.set_section(
        "storage",
        "url = \"s3://nowhere/backups\"\nendpoint = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"",
    );
    let r = p.run(&[
        "restore",
        "20261124T000000Z-manual-abcdef",
        "--mode",
        "truncate",
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("20261124T000000Z-manual-abcdef"), "{r}");
    assert_eq!(count(&db.client().await, "tasks").await, 5);
}
