//! Safe downgrades and `upgrade --restore`, with a second migration beside the seed: a table
//! with a foreign key into `tasks`, and new columns on `tasks`.

use crate::common::*;

const UP: &str = "ALTER TABLE tasks ADD COLUMN priority smallint NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN due_on date;
CREATE TABLE tags (
    id serial PRIMARY KEY,
    task_id integer NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name text NOT NULL
);
CREATE INDEX idx_tags_task_id ON tags (task_id);
";
const DOWN: &str = "DROP TABLE tags;
ALTER TABLE tasks DROP COLUMN due_on;
ALTER TABLE tasks DROP COLUMN priority;
";

fn project(db: &TestDb, store: &TestStore) -> Project {
    let mut p = Project::new(db);
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    p.add_migration("002_tags", UP, DOWN);
    p.use_store(store);
    p
}

async fn fill(c: &tokio_postgres::Client, rows: i32) {
    c.batch_execute(&format!(
        "INSERT INTO tasks (title, description, user_id, priority, due_on)
           SELECT 'task ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE E'line one\\nline \"two\", 🦀' END,
                  'u' || (g % 9), g % 5, CASE WHEN g % 4 = 0 THEN NULL ELSE date '2026-01-01' + g END
           FROM generate_series(1, {rows}) g;
         INSERT INTO tags (task_id, name) SELECT g, 'tag, ' || g FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
}

async fn md5s(c: &tokio_postgres::Client) -> (String, String) {
    (
        table_md5(c, "tasks", "id").await,
        table_md5(c, "tags", "id").await,
    )
}

async fn columns_of_tasks(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'tasks' ORDER BY ordinal_position",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn downgrade_backs_up_and_upgrade_restore_brings_everything_back() {
    for store in TestStore::both().await {
        let db = TestDb::new().await;
        let p = project(&db, &store);
        p.ok(&["upgrade"]);
        let c = db.client().await;
        fill(&c, 500).await;
        let before = md5s(&c).await;

        let (code, v) = p.json(&["downgrade", "-1"]);
        assert_eq!(code, 0, "{v}");
        let id = v["protection"]["backup_id"].as_str().unwrap().to_string();
        assert!(id.contains("-pre-downgrade-"), "{id}");
        let losses = v["protection"]["losses"].as_array().unwrap();
        let tags = losses.iter().find(|l| l["table"] == "tags").unwrap();
        assert_eq!(
            (tags["scope"].as_str(), tags["rows"].as_i64()),
            (Some("table"), Some(500))
        );
        let tasks = losses.iter().find(|l| l["table"] == "tasks").unwrap();
        assert_eq!(tasks["scope"], "columns");
        assert_eq!(tasks["columns"], serde_json::json!(["priority", "due_on"]));
        assert_eq!(v["current"], "001_initial");
        assert!(!tables(&c).await.contains(&"tags".to_string()));

        // The downgrade recorded its backup in the same transaction.
        let recorded: String = c
            .query_one(
                "SELECT backup_id FROM backstop_downgrades WHERE to_revision = '001_initial'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, id);
        // The column backup holds the primary key plus the dropped columns, nothing else.
        let (_, m) = p.json(&["backups", "show", &id]);
        let entry = m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "tasks")
            .unwrap()
            .clone();
        let cols: Vec<&str> = entry["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["id", "priority", "due_on"]);
        assert_eq!(m["kind"], "pre-downgrade");
        assert_eq!(m["revision"], "002_tags");
        assert_eq!(m["target_revision"], "001_initial");

        let (_, l) = p.json(&["backups", "list"]);
        assert_eq!(l["backups"][0]["downgrade"], "downgrade committed", "{l}");
        // A dry run says which backup would load where, and changes nothing.
        let (code, dry) = p.json(&["upgrade", "--dry-run", "--restore"]);
        assert_eq!(code, 0, "{dry}");
        assert_eq!(dry["would_restore"][0]["backup_id"], id.as_str(), "{dry}");
        assert_eq!(dry["would_restore"][0]["after"], "002_tags", "{dry}");
        let mut would: Vec<&str> = dry["would_restore"][0]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        would.sort();
        assert_eq!(would, ["tags", "tasks"], "{dry}");
        let r = p.ok(&["upgrade", "--dry-run", "--restore"]);
        assert!(
            r.stdout
                .contains(&format!("would restore backup {id} after 002_tags")),
            "{r}"
        );
        assert_eq!(
            c.query_one("SELECT count(*) FROM backstop_migrations", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            1,
            "the dry run applied nothing"
        );
        let r = p.ok(&["upgrade", "--restore"]);
        assert!(r.stdout.contains(&format!("from backup {id}")), "{r}");
        let (_, l) = p.json(&["backups", "list"]);
        assert_eq!(
            l["backups"][0]["downgrade"], "downgrade committed, data restored",
            "{l}"
        );
        assert_eq!(
            md5s(&c).await,
            before,
            "{}: data differs after upgrade --restore",
            store.name()
        );
        // Sequences continue after the restored rows.
        c.batch_execute("INSERT INTO tags (task_id, name) VALUES (1, 'new')")
            .await
            .unwrap();
        let next: i32 = c
            .query_one("SELECT max(id) FROM tags", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(next, 501);
        // The backup is used once: a second cycle restores from its own backup.
        let restored: bool = c
            .query_one(
                "SELECT restored_at IS NOT NULL FROM backstop_downgrades WHERE backup_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert!(restored);
    }
}

#[tokio::test]
async fn dry_run_lists_what_would_be_backed_up_and_changes_nothing() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 42).await;
    let before = md5s(&c).await;
    let r = p.ok(&["downgrade", "-1", "--dry-run"]);
    assert!(r.stdout.contains("DROP TABLE tags;"), "{r}");
    assert!(
        r.stdout
            .contains("tags: whole table (table dropped), 42 row(s)"),
        "{r}"
    );
    assert!(
        r.stdout.contains("tasks: primary key + priority, due_on"),
        "{r}"
    );
    assert_eq!(md5s(&c).await, before);
    assert_eq!(columns_of_tasks(&c).await.len(), 9);
    assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");
    assert!(
        store.keys().await.is_empty(),
        "a dry run wrote {:?}",
        store.keys().await
    );
}

#[tokio::test]
async fn a_downgrade_that_destroys_nothing_takes_no_backup() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    p.add_migration(
        "002_index",
        "CREATE INDEX idx_title ON tasks (title);\n",
        "DROP INDEX idx_title;\n",
    );
    p.use_store(&store);
    p.ok(&["upgrade"]);
    fill_tasks_only(&db).await;
    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stdout.contains("destroys no data, so it needs no backup"),
        "{r}"
    );
    assert!(store.keys().await.is_empty());
    assert_eq!(count(&db.client().await, "tasks").await, 10);
}

async fn fill_tasks_only(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title, user_id) SELECT 't' || g, 'u' FROM generate_series(1, 10) g",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unusable_store_refuses_the_downgrade_and_changes_nothing() {
    let db = TestDb::new().await;
    let store = TestStore::dir();
    let mut p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 100).await;
    let before = md5s(&c).await;

    // Unreachable.
    p.set_section(
        "storage",
        "url = \"s3://nowhere/b\"\nendpoint = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"k\"\nsecret_access_key = \"s\"",
    );
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("usable backup store") && r.stderr.contains("nothing was changed"),
        "{r}"
    );
    assert_eq!(md5s(&c).await, before);
    assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");

    // Reachable, but every upload fails (an identity that may read and not write).
    let s3 = TestStore::s3().await;
    let e = s3_env();
    p.set_section(
        "storage",
        &format!(
            "{}\naccess_key_id = \"{}-ro\"\nsecret_access_key = \"{}-ro\"",
            s3.config(),
            e.access_key,
            e.secret_key
        ),
    );
    p.env.clear();
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("its backup failed") && r.stderr.contains("nothing was changed"),
        "{r}"
    );
    assert_eq!(md5s(&c).await, before);
    assert_eq!(columns_of_tasks(&c).await.len(), 9);
    assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");
    assert!(s3.keys().await.is_empty());
    assert_eq!(s3.pending_uploads().await, 0);
}

#[tokio::test]
async fn a_backup_whose_downgrade_failed_is_listed_as_never_happened() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 20).await;
    // The down SQL passes the plan but fails when it runs for real (a sequence counts the
    // runs; sequences ignore rollbacks; the plan runs it twice, the second time under
    // locks): the backup is written, the downgrade rolls back.
    c.batch_execute("CREATE SEQUENCE boom_counter")
        .await
        .unwrap();
    p.add_migration(
        "002_tags",
        UP,
        &format!("{DOWN}DO $$ BEGIN IF nextval('boom_counter') > 2 THEN RAISE EXCEPTION 'boom'; END IF; END $$;\n"),
    );
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("boom") && r.stderr.contains("stays at revision 002_tags"),
        "{r}"
    );
    assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");
    assert_eq!(columns_of_tasks(&c).await.len(), 9);
    let (_, l) = p.json(&["backups", "list"]);
    assert_eq!(l["backups"][0]["kind"], "pre-downgrade", "{l}");
    assert_eq!(
        l["backups"][0]["downgrade"], "downgrade never happened",
        "{l}"
    );
}

#[tokio::test]
async fn writes_during_the_downgrade_are_all_in_the_backup() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 20000).await;
    // A writer that keeps adding tags and remembers every insert that reported success.
    let writer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let w = connect(&url).await;
            let mut ok = Vec::new();
            for i in 0..100_000i32 {
                match w
                    .query_one(
                        "INSERT INTO tags (task_id, name) VALUES (1, $1) RETURNING id",
                        &[&format!("w{i}")],
                    )
                    .await
                {
                    Ok(row) => ok.push(row.get::<_, i32>(0)),
                    Err(_) => break, // the table is gone
                }
            }
            ok
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cmd = p.cmd(&["downgrade", "-1"]);
    let r = Run::from(
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{r}");
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 10,
        "the writer hardly ran: {}",
        acknowledged.len()
    );
    p.ok(&["upgrade", "--restore"]);
    let present: Vec<i32> = c
        .query("SELECT id FROM tags WHERE id = ANY($1)", &[&acknowledged])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        present.len(),
        acknowledged.len(),
        "acknowledged inserts were lost by the downgrade"
    );
}

#[tokio::test]
async fn killing_the_process_mid_export_leaves_revision_and_data() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO tasks (title, user_id, priority) SELECT 't' || g, md5(g::text), g % 5 FROM generate_series(1, 300000) g;
         INSERT INTO tags (task_id, name) SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 300000) g;",
    )
    .await
    .unwrap();
    let before = md5s(&c).await;
    let mut child = p
        .cmd(&["downgrade", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exporting = catch_statement(&db.name, "COPY (SELECT%", false, 1000, 5).await;
    assert!(exporting, "the export never started");
    let admin = connect(&admin_url()).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The server notices the dead client and rolls the transaction back.
    for _ in 0..200 {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'backstop'", &[&db.name])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");
    assert_eq!(md5s(&c).await, before);
    let (_, v) = p.json(&["backups", "list"]);
    assert!(v["backups"].as_array().unwrap().is_empty(), "{v}");
}

#[tokio::test]
async fn upgrade_restore_fails_cleanly_when_the_schema_no_longer_fits() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 50).await;
    p.ok(&["downgrade", "-1"]);
    // The migration changed since: due_on is now an integer, and tags lost its name column.
    p.add_migration(
        "002_tags",
        &UP.replace("due_on date", "due_on integer")
            .replace("name text NOT NULL", "label text"),
        DOWN,
    );
    let r = p.run(&["upgrade", "--restore"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("column tags.name (text)"), "{r}");
    assert!(
        r.stderr.contains("rolled back") && r.stderr.contains("001_initial"),
        "{r}"
    );
    assert_eq!(p.ok(&["current"]).stdout, "001_initial\n");
    assert!(!tables(&c).await.contains(&"tags".to_string()));

    // Skipping tags, the type mismatch in tasks.due_on is named with the offending row.
    let r = p.run(&["upgrade", "--restore", "--restore-skip", "tags"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("line 2, column due_on"), "{r}");
    assert!(
        r.stderr.contains("invalid input syntax for type integer"),
        "{r}"
    );
    assert_eq!(p.ok(&["current"]).stdout, "001_initial\n");
}

#[tokio::test]
async fn a_step_outside_a_transaction_backs_up_the_whole_schema_first() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = Project::new(&db);
    std::fs::remove_file(p.migrations().join("schema.json")).unwrap();
    p.add_migration(
        "002_concurrent",
        "-- backstop:no-transaction\nCREATE INDEX CONCURRENTLY idx_title ON tasks (title);\n",
        "-- backstop:no-transaction\nDROP INDEX CONCURRENTLY idx_title;\n",
    );
    p.use_store(&store);
    p.ok(&["upgrade"]);
    fill_tasks_only(&db).await;
    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stderr.contains("cannot run in a transaction") && r.stderr.contains("every table"),
        "{r}"
    );
    let (_, v) = p.json(&["backups", "list"]);
    assert_eq!(v["backups"][0]["kind"], "pre-downgrade");
    assert_eq!(v["backups"][0]["tables"], serde_json::json!(["tasks"]));
    assert_eq!(v["backups"][0]["rows"], 10);
    assert_eq!(
        p.ok(&["current"]).stdout,
        "001_initial (head)\n".replace(" (head)", "")
    );
}

#[tokio::test]
async fn restore_puts_a_pre_downgrade_backup_back_after_a_plain_upgrade() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.ok(&["upgrade"]);
    let c = db.client().await;
    fill(&c, 200).await;
    let before = md5s(&c).await;
    let (_, v) = p.json(&["downgrade", "-1"]);
    let id = v["protection"]["backup_id"].as_str().unwrap().to_string();
    p.ok(&["upgrade"]);
    assert_ne!(md5s(&c).await, before);
    let r = p.ok(&["restore", &id]);
    assert!(
        r.stdout.contains("tags: 200 rows") && r.stdout.contains("tasks: 200 rows"),
        "{r}"
    );
    assert_eq!(md5s(&c).await, before);
}

#[tokio::test]
async fn ctrl_c_or_sigterm_mid_export_aborts_the_upload_and_says_nothing_changed() {
    for (signal, args) in [("-INT", vec!["downgrade", "-1"]), ("-TERM", vec!["backup"])] {
        let store = TestStore::s3().await;
        let db = TestDb::new().await;
        let p = project(&db, &store);
        p.ok(&["upgrade"]);
        let c = db.client().await;
        c.batch_execute(
            "INSERT INTO tasks (title, user_id) SELECT 't' || g, md5(g::text) FROM generate_series(1, 1000) g;
             INSERT INTO tags (task_id, name) SELECT 1 + g % 1000, md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text)
               FROM generate_series(1, 700000) g;",
        )
        .await
        .unwrap();
        let before = md5s(&c).await;
        let child = p
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            catch_statement(&db.name, "COPY (SELECT%", false, 2000, 5).await,
            "the export never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        send_signal(child.id(), signal);
        let r = Run::from(child.wait_with_output().unwrap());
        assert_ne!(r.code, 0, "{r}");
        assert!(r.stderr.contains("interrupted"), "{signal} {r}");
        if args[0] == "downgrade" {
            assert!(r.stderr.contains("nothing was changed"), "{r}");
            assert_eq!(p.ok(&["current"]).stdout, "002_tags (head)\n");
        } else {
            assert!(
                r.stderr.contains("the backup failed and was removed"),
                "{r}"
            );
        }
        assert_eq!(md5s(&c).await, before);
        assert!(
            store.keys().await.is_empty(),
            "{signal}: {:?}",
            store.keys().await
        );
        assert_eq!(
            store.pending_uploads().await,
            0,
            "{signal}: a multipart upload was left behind"
        );
    }
}
