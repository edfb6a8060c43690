//! The promise on schemas shaped like real projects': transaction wrappers, several
//! schemas, row-level security, partitions and inheritance, triggers, extension types,
//! sequences no column owns, large objects, dropped keys, writers racing the downgrade,
//! no-transaction steps, and which backup `upgrade --restore` takes.

use crate::common::*;

fn project(db: &TestDb, store: &TestStore) -> Project {
    let mut p = Project::empty(&db.url);
    p.use_store(store);
    p
}

/// The id of the newest backup.
fn newest(p: &Project) -> serde_json::Value {
    let (_, l) = p.json(&["backups", "list"]);
    l["backups"][0].clone()
}

async fn exec(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn scalar_i64(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_begin_commit_wrapper_is_dropped_and_other_transaction_control_refused() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_notes",
        "BEGIN;\nCREATE TABLE notes (id serial PRIMARY KEY, body text);\nCOMMIT;\n",
        "BEGIN;\nDROP TABLE notes;\nCOMMIT;\n",
    );
    let r = p.ok(&["upgrade"]);
    assert!(
        r.stderr
            .contains("ignoring its outer BEGIN (line 1) and COMMIT (line 3)"),
        "{r}"
    );
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 100) g",
    )
    .await;
    let before = table_md5(&c, "notes", "id").await;

    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stdout
            .contains("notes: whole table (table dropped), 100 row(s)"),
        "{r}"
    );
    assert_eq!(newest(&p)["rows"], 100);
    assert!(!tables(&c).await.contains(&"notes".to_string()));
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(table_md5(&c, "notes", "id").await, before);

    // A COMMIT in the middle would commit the DROP before any backup: refused at load,
    // naming the file and line, and nothing runs.
    p.add_migration(
        "001_notes",
        "BEGIN;\nCREATE TABLE notes (id serial PRIMARY KEY, body text);\nCOMMIT;\n",
        "DROP TABLE notes;\nCOMMIT;\nSELECT 1;\n",
    );
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("001_notes/down.sql:2") && r.stderr.contains("`COMMIT`"),
        "{r}"
    );
    assert_eq!(count(&c, "notes").await, 100);
    assert_eq!(recorded(&c).await, ["001_notes"]);
}

#[tokio::test]
async fn losses_in_other_schemas_are_planned_saved_and_restored() {
    let store = TestStore::s3().await;
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_plans",
        "CREATE TABLE plans (id int PRIMARY KEY, name text UNIQUE NOT NULL);
         INSERT INTO plans VALUES (1, 'free');
         CREATE SCHEMA billing;
         CREATE TABLE billing.subscriptions (id serial PRIMARY KEY,
             plan_id int NOT NULL REFERENCES public.plans ON DELETE CASCADE, customer text);",
        "DROP SCHEMA billing CASCADE;\nDROP TABLE plans;\n",
    );
    // Removing a plan cascades into another schema.
    p.add_migration(
        "002_pro",
        "INSERT INTO plans VALUES (2, 'pro');",
        "DELETE FROM plans WHERE id = 2;",
    );
    p.add_migration(
        "003_audit",
        "CREATE SCHEMA audit;\nCREATE TABLE audit.log (id bigserial PRIMARY KEY, msg text);",
        "DROP SCHEMA audit CASCADE;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO billing.subscriptions (plan_id, customer)
           SELECT 1 + (g % 6 = 0)::int, 'customer ' || g FROM generate_series(1, 60) g;
         INSERT INTO audit.log (msg) SELECT 'event ' || g FROM generate_series(1, 30) g;",
    )
    .await;
    let subs = table_md5(&c, "billing.subscriptions", "id").await;
    let log = table_md5(&c, "audit.log", "id").await;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM billing.subscriptions WHERE plan_id = 2"
        )
        .await,
        10
    );

    let r = p.ok(&["downgrade", "-1"]);
    assert!(
        r.stdout
            .contains("audit.log: whole table (table dropped), 30 row(s)"),
        "{r}"
    );
    let r = p.ok(&["downgrade", "-1", "--dry-run"]);
    assert!(!r.stdout.contains("destroys no data"), "{r}");
    assert!(
        r.stdout.contains(
            "billing.subscriptions: whole table (10 row(s) deleted or updated), 60 row(s)"
        ),
        "{r}"
    );
    p.ok(&["downgrade", "-1"]);
    assert_eq!(count(&c, "billing.subscriptions").await, 50);
    let (_, show) = p.json(&["backups", "show", newest(&p)["id"].as_str().unwrap()]);
    // The manifest records the load order: the referenced table first.
    assert_eq!(
        show["load_order"],
        serde_json::json!(["public.plans", "billing.subscriptions"]),
        "{show}"
    );
    let schemas: Vec<&str> = show["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["schema"].as_str().unwrap())
        .collect();
    assert!(schemas.contains(&"billing"), "{show}");

    let r = p.ok(&["upgrade", "--restore"]);
    assert!(r.stdout.contains("current: 003_audit (head)"), "{r}");
    assert_eq!(table_md5(&c, "billing.subscriptions", "id").await, subs);
    assert_eq!(table_md5(&c, "audit.log", "id").await, log);
    assert_eq!(count(&c, "plans").await, 2);
}

#[tokio::test]
async fn forced_row_level_security_refuses_instead_of_saving_a_subset() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let role = unique("bst_owner");
    let admin = connect(&admin_url()).await;
    exec(&admin, &format!("CREATE ROLE \"{role}\" LOGIN")).await;
    exec(
        &admin,
        &format!("ALTER DATABASE \"{}\" OWNER TO \"{role}\"", db.name),
    )
    .await;
    let as_owner = {
        let base = url_for(&db.name);
        base.replacen("postgres@", &format!("{role}@"), 1)
    };
    assert!(as_owner.contains(&role), "{as_owner}");
    let mut p = Project::empty(&as_owner);
    p.use_store(&store);
    p.add_migration(
        "001_secrets",
        "CREATE TABLE secrets (id int PRIMARY KEY, owner text NOT NULL);
         ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
         ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
         CREATE POLICY mine ON secrets USING (owner = current_user);",
        "DROP TABLE secrets;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await; // a superuser: sees every row
    exec(
        &c,
        &format!("INSERT INTO secrets SELECT g, CASE WHEN g <= 5 THEN '{role}' ELSE 'alice' END FROM generate_series(1, 15) g"),
    )
    .await;
    // Precondition: the owner really sees only a subset.
    let owner = connect(&as_owner).await;
    assert_eq!(scalar_i64(&owner, "SELECT count(*) FROM secrets").await, 5);

    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("row-level security")
            && r.stderr.contains("stays at revision 001_secrets"),
        "{r}"
    );
    assert_eq!(count(&c, "secrets").await, 15);
    let r = p.run(&["backup"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("BYPASSRLS"), "{r}");
    assert!(store.keys().await.is_empty(), "{:?}", store.keys().await);
    drop(owner);
    drop(p);
    drop(db);
    exec(&admin, &format!("DROP ROLE \"{role}\"")).await;
}

#[tokio::test]
async fn partitions_and_inherited_tables_are_saved_once_per_row() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_shapes",
        "CREATE TABLE events (id bigserial, at date NOT NULL, payload text, PRIMARY KEY (id, at))
             PARTITION BY RANGE (at);
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE INDEX events_payload ON events (payload);
         CREATE TABLE animals (id serial PRIMARY KEY, name text);
         CREATE TABLE dogs (bark text) INHERITS (animals);
         CREATE TABLE marker ();",
        "DROP TABLE events; DROP TABLE dogs; DROP TABLE animals; DROP TABLE marker;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO events (at, payload) SELECT date '2025-06-01' + (g % 2) * 365, 'e' || g FROM generate_series(1, 100) g;
         INSERT INTO animals (name) SELECT 'cat ' || g FROM generate_series(1, 10) g;
         INSERT INTO dogs (name, bark) SELECT 'dog ' || g, 'woof' FROM generate_series(1, 5) g;
         INSERT INTO marker DEFAULT VALUES; INSERT INTO marker DEFAULT VALUES; INSERT INTO marker DEFAULT VALUES;",
    )
    .await;
    let events = table_md5(&c, "events", "id").await;
    assert_eq!(count(&c, "animals").await, 15); // the parent's query sees the dogs too

    let id = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    let (_, m) = p.json(&["backups", "show", &id]);
    let entries: Vec<(String, i64, Option<String>)> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["rows"].as_i64().unwrap(),
                t["parent"].as_str().map(str::to_string),
            )
        })
        .collect();
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(
        !names.contains(&"events"),
        "a partitioned parent holds no rows: {names:?}"
    );
    let rows = |n: &str| entries.iter().find(|e| e.0 == n).map(|e| e.1);
    assert_eq!(
        (rows("events_2025"), rows("events_2026")),
        (Some(50), Some(50))
    );
    assert_eq!(
        (rows("animals"), rows("dogs"), rows("marker")),
        (Some(10), Some(5), Some(3))
    );
    let parent = |n: &str| entries.iter().find(|e| e.0 == n).and_then(|e| e.2.clone());
    assert_eq!(parent("events_2025").as_deref(), Some("public.events"));
    assert_eq!(parent("dogs").as_deref(), Some("public.animals"));
    assert_eq!(
        m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["rows"].as_i64().unwrap())
            .sum::<i64>(),
        118
    );

    p.ok(&["restore", &id, "--mode", "truncate"]);
    assert_eq!(count(&c, "events").await, 100);
    assert_eq!(table_md5(&c, "events", "id").await, events);
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM ONLY animals").await,
        10
    );
    assert_eq!((count(&c, "dogs").await, count(&c, "marker").await), (5, 3));
    // The partitions' indexes still belong to the partitioned index.
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events_payload'").await,
        2
    );

    p.ok(&["downgrade", "-1"]);
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(table_md5(&c, "events", "id").await, events);
    assert_eq!(
        (
            count(&c, "animals").await,
            count(&c, "dogs").await,
            count(&c, "marker").await
        ),
        (15, 5, 3)
    );
}

const USERS: &str = "CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS ltree;
CREATE DOMAIN email AS citext CHECK (VALUE ~ '@');
CREATE TYPE mood AS ENUM ('ok', 'meh');
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email email NOT NULL UNIQUE,
    path ltree,
    mood mood,
    shout text GENERATED ALWAYS AS (upper(email::text)) STORED,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE profiles (user_id bigint PRIMARY KEY REFERENCES users ON DELETE CASCADE, bio text);
-- Unqualified names, as real trigger functions have them.
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE FUNCTION make_profile() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO profiles (user_id) VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER users_touch BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER users_profile AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION make_profile();
";

#[tokio::test]
async fn restores_do_not_fire_triggers_and_keep_extension_types() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_users",
        USERS,
        "DROP TABLE profiles; DROP TABLE users; DROP FUNCTION touch(); DROP FUNCTION make_profile();
         DROP TYPE mood; DROP DOMAIN email; DROP EXTENSION ltree; DROP EXTENSION citext;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO users (email, path, mood) SELECT 'U' || g || '@example.com', ('top.a' || g)::ltree, 'meh' FROM generate_series(1, 20) g;
         UPDATE profiles SET bio = 'bio ' || user_id;
         ALTER TABLE users DISABLE TRIGGER users_touch;
         UPDATE users SET updated_at = timestamptz '2020-01-01 00:00:00+00' + id * interval '1 day';
         ALTER TABLE users ENABLE TRIGGER users_touch;",
    )
    .await;
    // Precondition: the 1:1 table was filled by the trigger.
    assert_eq!(count(&c, "profiles").await, 20);
    let users = table_md5(&c, "users", "id").await;
    let profiles = table_md5(&c, "profiles", "user_id").await;

    let id = p.ok(&["backup"]).stdout.lines().next().unwrap().to_string();
    let r = p.ok(&["restore", &id, "--mode", "truncate"]);
    assert!(r.stdout.contains("users: 20 rows"), "{r}");
    assert_eq!(
        table_md5(&c, "users", "id").await,
        users,
        "a trigger rewrote restored rows"
    );
    assert_eq!(table_md5(&c, "profiles", "user_id").await, profiles);

    p.ok(&["downgrade", "-1"]);
    assert!(!tables(&c).await.contains(&"users".to_string()));
    p.ok(&["upgrade", "--restore"]);
    assert_eq!(table_md5(&c, "users", "id").await, users);
    assert_eq!(table_md5(&c, "profiles", "user_id").await, profiles);
    // The triggers are on again, and the identity goes on past the restored ids.
    let enabled: Vec<String> = c
        .query("SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(enabled, ["O", "O"]);
    exec(&c, "INSERT INTO users (email) VALUES ('new@example.com')").await;
    assert_eq!(scalar_i64(&c, "SELECT max(id) FROM users").await, 21);
    assert_eq!(count(&c, "profiles").await, 21);
}

#[tokio::test]
async fn free_sequences_come_back_and_large_objects_are_refused() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_invoices",
        "CREATE SEQUENCE invoice_no START 1000;
         CREATE TABLE invoices (no bigint PRIMARY KEY DEFAULT nextval('invoice_no'), total numeric);",
        "DROP TABLE invoices;\nDROP SEQUENCE invoice_no;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO invoices (total) SELECT g FROM generate_series(1, 5) g",
    )
    .await;
    assert_eq!(scalar_i64(&c, "SELECT max(no) FROM invoices").await, 1004);
    let r = p.ok(&["downgrade", "-1"]);
    assert!(r.stdout.contains("sequence public.invoice_no"), "{r}");
    p.ok(&["upgrade", "--restore"]);
    // The re-created sequence would hand out 1000 again; restored, it goes on after 1004.
    exec(&c, "INSERT INTO invoices (total) VALUES (6)").await;
    assert_eq!(scalar_i64(&c, "SELECT max(no) FROM invoices").await, 1005);

    p.add_migration(
        "002_docs",
        "CREATE TABLE docs (id int PRIMARY KEY, body oid);",
        "DROP TABLE docs;",
    );
    p.ok(&["upgrade"]);
    exec(&c, "INSERT INTO docs VALUES (1, lo_from_bytea(0, 'hello'))").await;
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("large-object columns (body)"), "{r}");
    assert_eq!(count(&c, "docs").await, 1);
    let r = p.run(&["backup", "--table", "docs"]);
    assert_eq!(r.code, 4, "{r}");
}

#[tokio::test]
async fn a_dropped_primary_key_column_backs_up_and_restores_the_whole_table() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_legacy",
        "CREATE TABLE legacy (code text, label text);",
        "DROP TABLE legacy;",
    );
    p.add_migration(
        "002_ids",
        "ALTER TABLE legacy ADD COLUMN id serial PRIMARY KEY;",
        "ALTER TABLE legacy DROP COLUMN id;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO legacy (code, label) SELECT 'c' || g, 'label ' || g FROM generate_series(1, 15) g;
         DELETE FROM legacy WHERE id IN (3, 7);",
    )
    .await;
    let before = table_md5(&c, "legacy", "id").await;
    let r = p.ok(&["downgrade", "-1", "--dry-run"]);
    assert!(
        r.stdout
            .contains("legacy: whole table (column(s) id dropped; the primary key goes with them)"),
        "{r}"
    );
    p.ok(&["downgrade", "-1"]);
    assert_eq!(newest(&p)["rows"], 13);
    p.ok(&["upgrade", "--restore"]);
    // The re-added serial numbered the rows 1..13; the restore puts the original ids back.
    assert_eq!(table_md5(&c, "legacy", "id").await, before);
}

#[tokio::test]
async fn rows_written_during_the_downgrade_are_never_destroyed_unsaved() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let mut p = project(&db, &store);
    p.add_migration(
        "001_queue",
        "CREATE TABLE queue (id serial PRIMARY KEY, done bool NOT NULL DEFAULT false);",
        "DROP TABLE queue;",
    );
    // When planned, the DELETE matches nothing; the sleep keeps the real run open.
    p.add_migration(
        "002_purge",
        "SELECT 1;",
        "DELETE FROM queue WHERE done;\nSELECT pg_sleep(1);",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO queue (done) SELECT false FROM generate_series(1, 100)",
    )
    .await;
    let r = p.ok(&["downgrade", "-1", "--dry-run"]);
    assert!(r.stdout.contains("writes to public.queue will wait"), "{r}");

    let mut cmd = p.cmd(&["downgrade", "-1"]);
    let running = tokio::task::spawn_blocking(move || cmd.output());
    // Wait until the downgrade holds its write lock on queue, then write a row its
    // DELETE would match.
    let writer = db.client().await;
    let mut locked = false;
    for _ in 0..1000 {
        locked = scalar_i64(
            &writer,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.relation = 'queue'::regclass AND l.mode = 'ShareLock' AND l.granted
               AND a.application_name = 'backstop'",
        )
        .await
            > 0;
        if locked {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(locked, "the downgrade never locked queue");
    exec(
        &writer,
        "SET statement_timeout = '30s'; INSERT INTO queue (done) VALUES (true)",
    )
    .await;
    let r = Run::from(running.await.unwrap().unwrap());
    assert_eq!(r.code, 0, "{r}");
    // The insert waited for the downgrade and landed after it: nothing was destroyed.
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM queue WHERE done").await,
        1
    );
    p.ok(&["upgrade"]);

    // A table another session is writing to: a clear "table busy", and nothing changes.
    p.set_database_extra("lock_timeout_secs = 1");
    let holder = db.client().await;
    exec(&holder, "BEGIN; INSERT INTO queue (done) VALUES (false);").await;
    let r = p.run(&["downgrade", "-1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("table busy: public.queue"), "{r}");
    exec(&holder, "ROLLBACK").await;
    assert_eq!(recorded(&c).await, ["001_queue", "002_purge"]);
}

#[tokio::test]
async fn no_transaction_steps_run_statement_by_statement_and_come_back_with_their_data() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_items",
        "CREATE TABLE items (id serial PRIMARY KEY, name text);",
        "DROP TABLE items;\nSELECT 1 / 0;",
    );
    p.add_migration(
        "002_index",
        "-- backstop:no-transaction\nCREATE INDEX CONCURRENTLY items_name ON items (name);\nCREATE INDEX CONCURRENTLY items_lower ON items (lower(name));\n",
        "-- backstop:no-transaction\nDROP INDEX CONCURRENTLY items_name;\nDROP INDEX CONCURRENTLY items_lower;\n",
    );
    p.add_migration(
        "003_extras",
        "CREATE TABLE extras (id int PRIMARY KEY, note text);",
        "DROP TABLE extras;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 30) g;
         INSERT INTO extras SELECT g, 'extra ' || g FROM generate_series(1, 12) g;",
    )
    .await;
    let extras = table_md5(&c, "extras", "id").await;
    // 001's down.sql fails after 003 and 002 committed.
    let r = p.run(&["downgrade", "base"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("the downgrade stopped at revision 001_items"),
        "{r}"
    );
    assert!(
        r.stderr.contains("recorded for the steps that committed"),
        "{r}"
    );
    assert_eq!(recorded(&c).await, ["001_items"]);
    assert!(!tables(&c).await.contains(&"extras".to_string()));

    let r = p.ok(&["upgrade", "--restore"]);
    assert!(r.stdout.contains("current: 003_extras (head)"), "{r}");
    assert_eq!(table_md5(&c, "extras", "id").await, extras);
    // items outlived the downgrade with its rows, so it was left as it was.
    assert_eq!(count(&c, "items").await, 30);
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'items'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn upgrade_restore_takes_only_open_backups_that_fit() {
    let store = TestStore::dir();
    let db = TestDb::new().await;
    let p = project(&db, &store);
    p.add_migration(
        "001_items",
        "CREATE TABLE items (id int PRIMARY KEY);",
        "DROP TABLE items;",
    );
    p.add_migration(
        "002_tags",
        "CREATE TABLE tags (id serial PRIMARY KEY, name text);\nINSERT INTO tags (name) VALUES ('default');",
        "DROP TABLE tags;",
    );
    p.add_migration(
        "003_notes",
        "CREATE TABLE notes (id int PRIMARY KEY);",
        "DROP TABLE notes;",
    );
    p.ok(&["upgrade"]);
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO tags (name) SELECT 'tag ' || g FROM generate_series(1, 10) g",
    )
    .await;

    // The downgrade saved nothing (notes is empty): the upgrade runs and says so.
    let r = p.ok(&["downgrade", "-1"]);
    assert!(!r.stdout.contains("did back up"), "{r}");
    assert!(
        r.stdout.contains("destroys no data, so it needs no backup"),
        "{r}"
    );
    let r = p.ok(&["upgrade", "--restore"]);
    assert!(r.stdout.contains("nothing to restore"), "{r}");
    assert!(r.stdout.contains("current: 003_notes (head)"), "{r}");

    // A backup of revision 003 cannot be restored by an upgrade that stops at 002.
    p.ok(&["downgrade", "001_items"]);
    let backup = newest(&p)["id"].as_str().unwrap().to_string();
    let r = p.run(&["upgrade", "002_tags", "--restore"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("but this upgrade stops at 002_tags"),
        "{r}"
    );
    assert_eq!(recorded(&c).await, ["001_items"]);

    // The up.sql seeds tags again: the seed's row is the backup's own, so the user's ten
    // go back beside it (a seed that differs is a conflict: see tests/it/alembic.rs).
    let (code, v) = p.json(&["upgrade", "--restore"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["restored"][0]["skipped"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["restored"][0]["tables"],
        serde_json::json!(["tags"]),
        "{v}"
    );
    assert_eq!(v["restored"][0]["rows"], 10, "{v}");
    assert_eq!(count(&c, "tags").await, 11);
    // The sequence behind tags.id moved past the restored rows: the next insert works.
    exec(&c, "INSERT INTO tags (name) VALUES ('after')").await;

    // A plain upgrade past a downgrade closes its record: --restore never takes it.
    p.ok(&["downgrade", "001_items"]);
    let closed = newest(&p)["id"].as_str().unwrap().to_string();
    assert_ne!(closed, backup);
    let r = p.ok(&["upgrade"]);
    assert!(r.stdout.contains("closed"), "{r}");
    let (_, l) = p.json(&["backups", "list"]);
    assert_eq!(
        l["backups"][0]["downgrade"], "downgrade committed, superseded by a plain upgrade",
        "{l}"
    );
    p.ok(&["downgrade", "002_tags"]);
    let r = p.ok(&["upgrade", "--restore"]);
    assert!(r.stdout.contains("nothing to restore"), "{r}");
    p.ok(&["downgrade", "001_items"]);
    let r = p.run(&["upgrade", "--restore", &closed]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("superseded") && r.stderr.contains(&format!("backstop restore {closed}")),
        "{r}"
    );
}
