//! Migration commands against a real server: seed schema, targets, failures, drift, locks.

use crate::common::*;

#[tokio::test]
async fn seed_migration_creates_the_tasks_table_as_specified() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");
    let up = p.ok(&["upgrade"]);
    assert!(up.stdout.contains("applied 001_initial"), "{up}");
    assert_eq!(p.ok(&["current"]).stdout, "001_initial (head)\n");

    // Checked through information_schema and pg_indexes, as the manual procedure did.
    let c = db.client().await;
    type ColumnRow = (String, String, Option<i32>, String, Option<String>);
    let cols: Vec<ColumnRow> = c
        .query(
            "SELECT column_name::text, data_type::text, character_maximum_length::int, is_nullable::text, column_default::text
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'tasks'
             ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let expect = [
        (
            "id",
            "integer",
            None,
            "NO",
            Some("nextval('tasks_id_seq'::regclass)"),
        ),
        ("title", "character varying", Some(200), "NO", None),
        ("description", "text", None, "YES", None),
        ("completed", "boolean", None, "NO", Some("false")),
        ("user_id", "character varying", Some(255), "NO", None),
        (
            "created_at",
            "timestamp with time zone",
            None,
            "NO",
            Some("now()"),
        ),
        (
            "updated_at",
            "timestamp with time zone",
            None,
            "NO",
            Some("now()"),
        ),
    ];
    assert_eq!(cols.len(), expect.len(), "{cols:?}");
    for (got, want) in cols.iter().zip(expect) {
        assert_eq!(got.0, want.0);
        assert_eq!(got.1, want.1, "type of {}", want.0);
        assert_eq!(got.2, want.2, "length of {}", want.0);
        assert_eq!(got.3, want.3, "nullability of {}", want.0);
        assert_eq!(got.4.as_deref(), want.4, "default of {}", want.0);
    }
    let pk: String = c
        .query_one(
            "SELECT string_agg(kcu.column_name::text, ',') FROM information_schema.table_constraints tc
             JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)
             WHERE tc.table_name = 'tasks' AND tc.constraint_type = 'PRIMARY KEY'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "id");
    let indexes: Vec<(String, String)> = c
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'tasks' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = indexes.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(
        names,
        ["idx_tasks_created_at", "idx_tasks_user_id", "tasks_pkey"]
    );
    assert!(indexes[0].1.ends_with("(created_at)"), "{indexes:?}");
    assert!(indexes[1].1.ends_with("(user_id)"), "{indexes:?}");
    assert!(
        indexes[2].1.contains("UNIQUE") && indexes[2].1.ends_with("(id)"),
        "{indexes:?}"
    );

    // The bookkeeping row carries the checksum of up.sql.
    let row = c
        .query_one(
            "SELECT revision, checksum, duration_ms FROM backstop_migrations",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "001_initial");
    let file = std::fs::read_to_string(p.migrations().join("001_initial/up.sql")).unwrap();
    assert_eq!(row.get::<_, String>(1), sha256_hex(&file));

    // The forced downgrade removes the table, its indexes and its sequence.
    p.ok(&["downgrade", "-1", "--no-backup", "--allow-data-loss"]);
    assert!(tables(&c).await.iter().all(|t| t != "tasks"));
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relname IN ('tasks_pkey', 'idx_tasks_user_id', 'idx_tasks_created_at', 'tasks_id_seq')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn three_step_project(db: &TestDb) -> Project {
    let p = Project::new(db);
    p.add_migration(
        "002_tags",
        "CREATE TABLE tags (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, task_id integer NOT NULL REFERENCES tasks(id), name text NOT NULL);\n",
        "DROP TABLE tags;\n",
    );
    p.add_migration(
        "003_priority",
        "ALTER TABLE tasks ADD COLUMN priority smallint NOT NULL DEFAULT 0;\n",
        "ALTER TABLE tasks DROP COLUMN priority;\n",
    );
    p
}

#[tokio::test]
async fn a_schema_that_does_not_exist_is_an_error_for_every_command() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.set_section("database", "schema = \"pubilc\"");
    for args in [
        &["current"][..],
        &["history"],
        &["backup"],
        &["upgrade"],
        &["upgrade", "--dry-run"],
        &["downgrade", "-1"],
    ] {
        let r = p.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(
            r.stderr.contains("schema \"pubilc\" does not exist"),
            "{args:?}: {r}"
        );
    }
    // Nothing was created on the way.
    let c = db.client().await;
    assert!(tables(&c).await.is_empty());
}

#[tokio::test]
async fn relative_and_named_targets() {
    let db = TestDb::new().await;
    let p = three_step_project(&db);
    let c = db.client().await;
    p.ok(&["upgrade", "+1"]);
    assert_eq!(recorded(&c).await, ["001_initial"]);
    p.ok(&["upgrade", "003_priority"]);
    assert_eq!(
        recorded(&c).await,
        ["001_initial", "002_tags", "003_priority"]
    );
    assert_eq!(p.ok(&["current"]).stdout, "003_priority (head)\n");
    let again = p.ok(&["upgrade"]);
    assert!(again.stdout.contains("nothing to do"), "{again}");

    p.ok(&[
        "downgrade",
        "001_initial",
        "--no-backup",
        "--allow-data-loss",
    ]);
    assert_eq!(recorded(&c).await, ["001_initial"]);
    assert_eq!(
        tables(&c).await,
        ["backstop_downgrades", "backstop_migrations", "tasks"]
    );
    p.ok(&["upgrade"]);
    p.ok(&["downgrade", "-2", "--no-backup", "--allow-data-loss"]);
    assert_eq!(recorded(&c).await, ["001_initial"]);
    p.ok(&["upgrade"]);
    p.ok(&["downgrade", "base", "--no-backup", "--allow-data-loss"]);
    assert!(recorded(&c).await.is_empty());
    assert_eq!(
        tables(&c).await,
        ["backstop_downgrades", "backstop_migrations"]
    );

    let history = p.ok(&["history"]).stdout;
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(history.lines().all(|l| l.contains("pending")), "{history}");
}

#[tokio::test]
async fn bad_targets_are_usage_errors() {
    let db = TestDb::new().await;
    let p = three_step_project(&db);
    let r = p.run(&["upgrade", "004_nope"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("unknown revision \"004_nope\""), "{r}");
    assert!(
        r.stderr.contains("001_initial, 002_tags, 003_priority"),
        "{r}"
    );
    let r = p.run(&["upgrade", "+5"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("only 3 migration(s) are pending"), "{r}");
    p.ok(&["upgrade", "+1"]);
    let r = p.run(&["downgrade", "-2", "--no-backup", "--allow-data-loss"]);
    assert_eq!(r.code, 2, "{r}");
    let r = p.run(&[
        "downgrade",
        "003_priority",
        "--no-backup",
        "--allow-data-loss",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("is not applied"), "{r}");
    let r = p.run(&["downgrade", "--no-backup", "-1"]);
    assert_eq!(r.code, 2, "{r}");
    assert_eq!(recorded(&db.client().await).await, ["001_initial"]);
}

#[tokio::test]
async fn downgrade_backs_up_into_the_default_store_unless_told_otherwise() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute("INSERT INTO tasks (title, user_id) VALUES ('keep me', 'u1')")
        .await
        .unwrap();
    // Half of the escape hatch is a usage error.
    let r = p.run(&["downgrade", "-1", "--no-backup"]);
    assert_eq!(r.code, 2, "{r}");
    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stdout.contains("written before the downgrade committed"),
        "{r}"
    );
    // No [storage]: ./backstop-backups beside the config file.
    let store = p.path().join("backstop-backups");
    let folders: Vec<_> = std::fs::read_dir(&store).unwrap().collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    p.ok(&["upgrade", "--restore"]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM tasks WHERE title = 'keep me'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn dry_run_prints_sql_and_changes_nothing() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let c = db.client().await;
    let r = p.ok(&["upgrade", "--dry-run"]);
    assert!(r.stdout.contains("CREATE TABLE tasks"), "{r}");
    assert!(r.stdout.contains("nothing was changed"), "{r}");
    assert!(
        tables(&c).await.is_empty(),
        "dry run created {:?}",
        tables(&c).await
    );
    p.ok(&["upgrade"]);
    let r = p.ok(&["downgrade", "base", "--dry-run"]);
    assert!(r.stdout.contains("DROP TABLE tasks"), "{r}");
    assert!(tables(&c).await.contains(&"tasks".to_string()));
    let (code, v) = p.json(&["downgrade", "-1", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["plan"]["steps"][0]["revision"], "001_initial");
    assert!(v["plan"]["steps"][0]["sql"]
        .as_str()
        .unwrap()
        .contains("DROP TABLE tasks"));
}

#[tokio::test]
async fn a_failing_step_is_rolled_back_and_earlier_steps_stay() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration(
        "002_broken",
        "CREATE TABLE half (id int);\nINSERT INTO tasks (title, user_id) VALUES ('x', 'y');\nINSERT INTO nope VALUES (1);\n",
        "DROP TABLE half;\n",
    );
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("up.sql of 002_broken failed at line 3"),
        "{r}"
    );
    assert!(r.stderr.contains("relation \"nope\" does not exist"), "{r}");
    assert!(r.stderr.contains("stays at revision 001_initial"), "{r}");
    let c = db.client().await;
    assert_eq!(recorded(&c).await, ["001_initial"]);
    assert_eq!(
        tables(&c).await,
        ["backstop_downgrades", "backstop_migrations", "tasks"]
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the INSERT of the failed step was not rolled back");
    assert_eq!(p.ok(&["current"]).stdout, "001_initial\n");
}

#[tokio::test]
async fn drift_is_reported_and_blocks_until_allowed() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration("002_a", "CREATE TABLE a (id int);\n", "DROP TABLE a;\n");
    p.ok(&["upgrade", "+1"]);

    // The same file with CRLF line endings is not drift.
    let up = p.migrations().join("001_initial/up.sql");
    let text = std::fs::read_to_string(&up).unwrap();
    std::fs::write(&up, text.replace('\n', "\r\n")).unwrap();
    assert!(!p.ok(&["history"]).stdout.contains("DRIFT"));

    std::fs::write(&up, text.replace("VARCHAR(200)", "VARCHAR(300)")).unwrap();
    let h = p.ok(&["history"]);
    assert!(
        h.stdout.contains("001_initial  applied") && h.stdout.contains("DRIFT"),
        "{h}"
    );
    let (_, v) = p.json(&["history"]);
    assert_eq!(v["entries"][0]["state"], "drifted");
    assert_eq!(v["entries"][1]["state"], "pending");

    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(
        r.stderr
            .contains("001_initial changed since it was applied"),
        "{r}"
    );
    assert!(r.stderr.contains("--allow-drift"), "{r}");
    assert_eq!(recorded(&db.client().await).await, ["001_initial"]);
    p.ok(&["upgrade", "--allow-drift"]);
    assert_eq!(recorded(&db.client().await).await, ["001_initial", "002_a"]);
}

#[tokio::test]
async fn existing_schema_without_record_points_to_stamp() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let c = db.client().await;
    // A database set up by Alembic: the seed schema plus alembic_version.
    let up = std::fs::read_to_string(p.migrations().join("001_initial/up.sql")).unwrap();
    c.batch_execute(&up).await.unwrap();
    c.batch_execute(
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
         INSERT INTO alembic_version VALUES ('8f3b1c2d4e5a');
         INSERT INTO tasks (title, user_id) VALUES ('existing', 'u');",
    )
    .await
    .unwrap();
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("backstop stamp"), "{r}");
    assert!(
        r.stderr.contains("Alembic (alembic_version 8f3b1c2d4e5a)"),
        "{r}"
    );
    assert!(r.stderr.contains("tasks"), "{r}");

    let s = p.ok(&["stamp", "001_initial"]);
    assert!(s.stdout.contains("(none) -> 001_initial"), "{s}");
    assert_eq!(p.ok(&["current"]).stdout, "001_initial (head)\n");
    let n: i64 = c
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "stamp must not run SQL");
    // stamp base forgets the record again, still without touching tables.
    p.ok(&["stamp", "base"]);
    assert_eq!(p.ok(&["current"]).stdout, "(none)\n");
    assert!(tables(&c).await.contains(&"tasks".to_string()));
    let r = p.run(&["stamp", "999_x"]);
    assert_eq!(r.code, 2, "{r}");
}

#[tokio::test]
async fn concurrent_upgrades_wait_for_each_other() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    p.add_migration(
        "002_slow",
        "SELECT pg_sleep(1.5);\nCREATE TABLE slow (id int);\n",
        "DROP TABLE slow;\n",
    );
    let spawn = || {
        p.cmd(&["upgrade"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (ra, rb) = (
        Run::from(a.wait_with_output().unwrap()),
        Run::from(b.wait_with_output().unwrap()),
    );
    assert_eq!(ra.code, 0, "{ra}");
    assert_eq!(rb.code, 0, "{rb}");
    let applied = [&ra, &rb]
        .iter()
        .filter(|r| r.stdout.contains("applied 002_slow"))
        .count();
    assert_eq!(
        applied, 1,
        "exactly one run applies the migrations:\n{ra}\n{rb}"
    );
    let idle = [&ra, &rb]
        .iter()
        .filter(|r| r.stdout.contains("nothing to do"))
        .count();
    assert_eq!(idle, 1, "{ra}\n{rb}");
    let waited = [&ra, &rb]
        .iter()
        .filter(|r| r.stderr.contains("holds the migration lock"))
        .count();
    assert_eq!(
        waited, 1,
        "the second run should have waited for the lock:\n{ra}\n{rb}"
    );
    assert_eq!(
        recorded(&db.client().await).await,
        ["001_initial", "002_slow"]
    );
}

#[tokio::test]
async fn a_held_migration_lock_times_out_with_a_clear_message() {
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    p.set_database_extra("migration_lock_timeout_secs = 1");
    let settings = backstop::config::DatabaseConfig::default();
    let parsed = backstop::pg::Database::parse(&db.url, &settings).unwrap();
    let key = backstop::pg::lock::MigrationLock::key(&parsed, "public");
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("held the migration lock"), "{r}");
    assert!(r.stderr.contains("nothing was changed"), "{r}");
    assert!(tables(&db.client().await).await.is_empty());
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    p.ok(&["upgrade"]);
}

#[tokio::test]
async fn unreachable_database_names_host_and_port() {
    let p = Project::empty("postgres://postgres:s3cr3t-pw@127.0.0.1:1/nodb");
    let r = p.run(&["current"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("127.0.0.1:1"), "{r}");
    assert!(r.stderr.contains("check that the server is running"), "{r}");
    assert!(
        !r.stderr.contains("s3cr3t-pw") && !r.stdout.contains("s3cr3t-pw"),
        "{r}"
    );
}

#[tokio::test]
async fn missing_or_invalid_migration_files_are_usage_errors() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    std::fs::create_dir_all(p.migrations().join("002_nodown")).unwrap();
    std::fs::write(p.migrations().join("002_nodown/up.sql"), "select 1;").unwrap();
    let r = p.run(&["upgrade"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("002_nodown/down.sql is missing"), "{r}");
    assert!(tables(&db.client().await).await.is_empty());
}

#[tokio::test]
async fn every_command_speaks_json() {
    let db = TestDb::new().await;
    let p = Project::new(&db);
    let (code, v) = p.json(&["current"]);
    assert_eq!((code, v["label"].as_str()), (0, Some("(none)")));
    let (code, v) = p.json(&["upgrade"]);
    assert_eq!(code, 0);
    assert_eq!(v["applied"][0]["revision"], "001_initial");
    assert_eq!(v["current"], "001_initial (head)");
    let (_, v) = p.json(&["current"]);
    assert_eq!(v["current"], "001_initial");
    assert_eq!(v["at_head"], true);
    let (_, v) = p.json(&["history"]);
    assert_eq!(v["entries"][0]["state"], "applied");
    let (_, v) = p.json(&["stamp", "001_initial"]);
    assert_eq!(v["current"], "001_initial");
    let (_, v) = p.json(&["schema"]);
    assert!(v["tables"]["tasks"]["indexes"]["tasks_pkey"].is_string());
    // Errors are JSON documents too, with the exit code.
    let (code, v) = p.json(&["downgrade", "-5"]);
    assert_eq!(code, 2);
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("only 1 migration(s) are applied"));
}
